"""pytest configuration shared by the unit tests and the notebooks.

nbval compares stdout and stderr alike. A chapter's stderr holds progress bars and library
warnings, which differ from one run to the next and are not what the chapter teaches, so it
is left out of the comparison: on both sides, the committed outputs and the fresh run's.
Errors are separate outputs (``output_type: error``) and are still compared.
"""

import nbval.plugin
import pytest

_coalesce_streams = nbval.plugin.coalesce_streams


def _coalesce_streams_without_stderr(outputs):
    outputs = _coalesce_streams(outputs)
    if not outputs:
        return outputs
    return [o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]


nbval.plugin.coalesce_streams = _coalesce_streams_without_stderr


# --- The test report behind the book's page "How this book is tested" ----------------------------------
# `make test` passes --book-report=_build/test-report.json; the book's build renders it as a table
# (_ext/report_table.py). Runs without the option (a single test, a chapter, test-portable) write nothing,
# so the table always shows a whole `make test` run.

import importlib.metadata  # noqa: E402 (the stderr patch above stays first and untouched)
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

_report: dict = {"notebooks": defaultdict(lambda: defaultdict(float)), "units": defaultdict(int)}
_cells: dict[str, tuple[str, bool]] = {}  # nodeid -> (notebook, output compared)


# --- Inductor's cache: one per kernel set ---------------------------------------------------------------
# torch.compile (chapter 7) keeps the C++ it generates in TORCHINDUCTOR_CACHE_DIR and reuses it in later runs.
# Its key does not include ATEN_CPU_CAPABILITY: on an AVX512 machine, a run under `avx2` reused the kernels of
# the native run and trained to nan. So every run of the book gets the cache of its own kernel set, named by
# what the generated code depends on: torch's version, the kernels in use, the threads, and the CPU's flags.


_INDUCTOR_ROOT = pytest.StashKey[Path]()


def inductor_cache_dir(root: Path) -> Path:
    """The Inductor cache for this process's torch, CPU kernels, thread count and processor, under ``root``."""
    import hashlib

    import torch  # here, not at the top: pytest's own start-up stays light

    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text(errors="replace").splitlines()
        flags = next((line for line in lines if line.startswith(("flags", "Features"))), "")
    flags_hash = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:10]
    kernels = torch.backends.cpu.get_cpu_capability().lower()
    key = f"torch-{torch.__version__}-{kernels}-{torch.get_num_threads()}threads-cpu-{flags_hash}"
    return root / re.sub(r"[^\w.-]+", "_", key)  # torch 2.6 calls the default kernels "NO AVX"


def inductor_cache_root(rootpath: Path) -> Path:
    """Where the per-kernel-set caches go: under a TORCHINDUCTOR_CACHE_DIR the caller set, else _build/."""
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(given) if given else rootpath / "_build" / "inductor"


def pytest_configure(config):
    # set before any kernel starts: nbval's kernels inherit this process's environment
    root = inductor_cache_root(config.rootpath)
    config.stash[_INDUCTOR_ROOT] = root
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir(root))


def pytest_addoption(parser):
    parser.addoption(
        "--book-report",
        metavar="PATH",
        help="write what each notebook's strict nbval run found (cells, ignored outputs, time) as JSON",
    )


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if isinstance(item, nbval.plugin.IPyNbCell):
            notebook = Path(str(item.parent.fspath)).relative_to(config.rootpath).as_posix()
            _cells[item.nodeid] = (notebook, bool(item.options["check"]) and not item.options["skip"])


def pytest_runtest_logreport(report):
    if report.nodeid not in _cells:
        if report.when == "call" or report.outcome != "passed":
            _report["units"][report.outcome] += 1
        return
    notebook, compared = _cells[report.nodeid]
    entry = _report["notebooks"][notebook]
    entry["seconds"] += report.duration  # setup starts the kernel, teardown stops it: all of it counts
    if report.when == "call":
        entry["cells"] += 1
        entry["ignored"] += not compared
    if report.outcome != "passed":
        entry[report.outcome] += 1


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("book_report")
    if not path:
        return
    notebooks = {
        name: {k: round(v, 1) if k == "seconds" else int(v) for k, v in counts.items()}
        for name, counts in sorted(_report["notebooks"].items())
    }
    report = {
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "exit_status": int(exitstatus),
        "python": platform.python_version(),
        "torch": importlib.metadata.version("torch"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "notebooks": notebooks,
        "unit_tests": dict(_report["units"]),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1) + "\n")


# --- Fixtures shared by the unit tests ----------------------------------------------------------------------
# Here, not in tests/conftest.py: a second conftest module would take the name `conftest` in sys.modules, and
# tests/test_inductor_cache.py imports this one by that name.


@pytest.fixture
def group():
    """A gloo process group of one rank, in this process: every check and collective of a DDP or FSDP path
    runs, with nothing to wait for; destroyed after the test, whatever it raised."""
    import torch.distributed as dist  # here, not at the top: pytest's own start-up stays light

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
