"""pytest configuration shared by the unit tests and the notebooks.

nbval compares stdout and stderr alike. A chapter's stderr holds progress bars and library
warnings, which differ from one run to the next and are not what the chapter teaches, so it
is left out of the comparison: on both sides, the committed outputs and the fresh run's.
Errors are separate outputs (``output_type: error``) and are still compared.
"""

import nbval.plugin

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
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

_report: dict = {"notebooks": defaultdict(lambda: defaultdict(float)), "units": defaultdict(int)}
_cells: dict[str, tuple[str, bool]] = {}  # nodeid -> (notebook, output compared)


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
