"""The tools behind the site: the testing page's table (_ext/report_table.py), the report hook that feeds
it (conftest.py), and the offline workflow check (site_tests/check_workflows.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_table = _load(ROOT / "_ext" / "report_table.py")
check_workflows = _load(ROOT / "site_tests" / "check_workflows.py")


def test_without_a_report_the_testing_page_names_make_test_instead_of_a_table():
    text = report_table.markdown(None, ["book/01_concepts.ipynb"])
    assert "make test" in text and "| Notebook |" not in text


def test_the_table_has_a_row_per_notebook_with_its_ignored_share_and_result():
    report = {
        "notebooks": {
            "book/01_concepts.ipynb": {"cells": 20, "ignored": 2, "seconds": 12.4},
            "book/02_optimizers.ipynb": {"cells": 10, "ignored": 0, "seconds": 3.0, "failed": 1},
        },
        "unit_tests": {"passed": 7},
    }
    notebooks = ["book/01_concepts.ipynb", "book/02_optimizers.ipynb", "book/03_losses.ipynb"]
    rows = report_table.notebook_rows(report, notebooks)
    assert rows[0] == "| `book/01_concepts.ipynb` | 20 | 2 (10%) | 12 | passed |"
    assert rows[1].endswith("| 1 failed |")
    assert rows[2] == "| `book/03_losses.ipynb` | | | | not in the last run |"
    assert "Unit tests: 7 passed." in report_table.markdown(report, notebooks)


def test_the_report_hook_counts_a_notebooks_cells_and_ignored_outputs(tmp_path):
    """A real pytest run of a two-cell notebook with the --book-report option, as `make test` runs it."""
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": 1,
                "id": "a",
                "metadata": {},
                "outputs": [{"name": "stdout", "output_type": "stream", "text": ["1\n"]}],
                "source": ["print(1)"],
            },
            {
                "cell_type": "code",
                "execution_count": 2,
                "id": "b",
                "metadata": {"tags": ["nbval-ignore-output"]},
                "outputs": [{"name": "stdout", "output_type": "stream", "text": ["x\n"]}],
                "source": ["print(2)"],
            },
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    book = tmp_path / "book"
    book.mkdir()
    (book / "tiny.ipynb").write_text(json.dumps(notebook))
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    report = tmp_path / "report.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval",
            "--nbval-current-env",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--book-report={report}",
            "book/tiny.ipynb",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    entry = json.loads(report.read_text())["notebooks"]["book/tiny.ipynb"]
    assert (entry["cells"], entry["ignored"]) == (2, 1)
    assert entry["seconds"] > 0


GOOD = """\
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - id: hello
        run: echo hi
      - run: echo ${{ steps.hello.outcome }}
"""


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("actions/checkout@v4", "actions/checkout"), "not pinned"),
        (("steps.hello.outcome", "steps.nope.outcome"), "names no step"),
        (("    runs-on: ubuntu-latest\n", ""), "missing 'runs-on'"),
        (("${{ steps.hello.outcome }}", "${{ steps.hello.outcome"), "not closed"),
    ],
)
def test_the_offline_workflow_check_finds_each_planted_mistake(tmp_path, change, problem):
    good, bad = tmp_path / "good.yml", tmp_path / "bad.yml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace(*change))
    assert check_workflows.problems(good) == []
    assert any(problem in p for p in check_workflows.problems(bad))


def test_the_books_own_workflow_passes_the_offline_check():
    for path in sorted((ROOT / ".github" / "workflows").glob("*.yml")):
        assert check_workflows.problems(path) == [], path
