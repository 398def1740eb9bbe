"""`make test-spawn` really runs the chapters with DataLoader workers started by `spawn`.

macOS and Windows start worker processes with `spawn` (Python 3.14 on Linux with `forkserver`): a worker is a
fresh interpreter that imports what it needs, so a dataset defined in a notebook cannot be sent to it. The
target points IPYTHONDIR at tests/ipython_spawn, whose start-up file sets the start method in every kernel.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SPAWN_IPYTHONDIR = ROOT / "tests" / "ipython_spawn"

CHECK = """\
import multiprocessing
import torch
from torch.utils.data import DataLoader, TensorDataset

loader = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=4, num_workers=1)
print(multiprocessing.get_start_method(), [batch[0].tolist() for batch in loader])
"""


def run_in_kernel(source: str, ipythondir: Path | None) -> str:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    saved = os.environ.get("IPYTHONDIR")
    try:
        if ipythondir is not None:
            os.environ["IPYTHONDIR"] = str(ipythondir)
        NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    finally:
        if saved is None:
            os.environ.pop("IPYTHONDIR", None)
        else:
            os.environ["IPYTHONDIR"] = saved
    return "".join(o.get("text", "") for o in notebook.cells[0].outputs if o.get("name") == "stdout")


def test_a_kernel_started_for_test_spawn_starts_its_workers_with_spawn():
    printed = run_in_kernel(CHECK, SPAWN_IPYTHONDIR)
    assert printed.strip() == "spawn [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]"


def test_the_makefile_runs_the_chapters_that_start_workers_under_spawn():
    makefile = (ROOT / "Makefile").read_text()
    assert "IPYTHONDIR=$(CURDIR)/tests/ipython_spawn" in makefile
    workers = sorted(p.name for p in (ROOT / "book").glob("*.ipynb") if "num_workers=" in p.read_text())
    assert workers, "no chapter starts workers"
    for name in workers:
        assert f"book/{name}" in makefile, f"{name} starts DataLoader workers but test-spawn does not run it"
