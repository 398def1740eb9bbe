"""The nbval set-up of `make test`: what it masks, and what it still compares."""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbval.plugin
from nbformat.v4 import new_output

SANITIZE = Path(__file__).with_name("sanitize.cfg")


def sanitize(text: str) -> str:
    config = configparser.ConfigParser(interpolation=None)
    config.read(SANITIZE)
    for section in config.sections():
        text = re.sub(config[section]["regex"], config[section]["replace"], text)
    return text


def test_memory_addresses_are_masked_but_image_sizes_are_not():
    assert sanitize("<Foo object at 0x7f3a2b1c9d00>") == "<Foo object at 0xADDRESS>"
    assert sanitize("a 640x480 image") == "a 640x480 image"


def test_numbers_with_a_unit_of_time_are_compared_not_masked():
    """Timings live in output-ignored cells; elsewhere a time is a computed figure, and a change must show."""
    assert sanitize("ResNet-50   143.1 ms   0.3976 ms") == "ResNet-50   143.1 ms   0.3976 ms"
    assert sanitize("at most 9.8 s of processor time") == "at most 9.8 s of processor time"
    assert sanitize("3 samples, loss 0.25") == "3 samples, loss 0.25"


def test_progress_bars_are_masked():
    assert sanitize("epoch 1: 45%|####5     | 9/20 [00:01<00:02, 7.1it/s]") == "epoch 1: PROGRESS"


def test_stderr_is_left_out_of_the_comparison_and_stdout_kept():
    outputs = [
        new_output("stream", name="stdout", text="loss 0.1\n"),
        new_output("stream", name="stderr", text="100%|##########| 5/5\n"),
        new_output("error", ename="ValueError", evalue="bad", traceback=[]),
    ]
    kept = nbval.plugin.coalesce_streams(outputs)
    assert [(o.output_type, o.get("name")) for o in kept] == [("stream", "stdout"), ("error", None)]


# --- the patch in conftest.py, proven where it matters: in a real nbval run --------------------

ROOT = Path(__file__).resolve().parent.parent
CELL = "import sys\nprint('loss 0.25')\nprint('progress', file=sys.stderr)"


def run_nbval(
    tmp_path: Path, stdout: str, stderr: str, with_conftest: bool = True
) -> subprocess.CompletedProcess:
    """Run strict nbval on a one-cell notebook whose committed outputs are ``stdout`` and ``stderr``."""
    import nbformat

    cell = nbformat.v4.new_code_cell(CELL, execution_count=1)
    cell.outputs = [
        new_output("stream", name="stdout", text=stdout),
        new_output("stream", name="stderr", text=stderr),
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "one.ipynb")
    if with_conftest:
        shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval",
            "--nbval-current-env",
            "-p",
            "no:cacheprovider",
            "one.ipynb",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_nbval_run_passes_when_only_stderr_differs(tmp_path):
    result = run_nbval(tmp_path, stdout="loss 0.25\n", stderr="a bar from another run\n")
    assert result.returncode == 0, result.stdout[-2000:]


def test_nbval_run_still_fails_when_stdout_differs(tmp_path):
    result = run_nbval(tmp_path, stdout="loss 0.26\n", stderr="progress\n")
    assert result.returncode == 1, result.stdout[-2000:]


def test_without_the_conftest_patch_nbval_would_compare_stderr(tmp_path):
    """The control: if nbval ever stops comparing stderr by itself, the patch is dead code."""
    result = run_nbval(tmp_path, stdout="loss 0.25\n", stderr="a bar from another run\n", with_conftest=False)
    assert result.returncode == 1, result.stdout[-2000:]
