"""Every chapter is a valid notebook, committed executed top to bottom, and installs the
companion in Colab from the one repository URL in ``_config.yml``."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]
MACHINE_PATH = re.compile(r"(/root/|/home/[^/\s]+/|/tmp/|/work/|[A-Z]:\\Users\\)")

_spec = importlib.util.spec_from_file_location("sync_colab", ROOT / "scripts" / "sync_colab.py")
sync_colab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_colab)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def output_texts(cell):
    for out in cell.get("outputs", []):
        if "text" in out:
            yield out["text"]
        for mime, value in out.get("data", {}).items():
            if mime.startswith("text/"):
                yield value if isinstance(value, str) else "".join(value)
        if out.output_type == "error":
            yield out.get("evalue", "")
            yield "\n".join(out.get("traceback", []))


def test_there_are_chapters():
    assert NOTEBOOKS, "book/ holds no notebooks"


@pytest.fixture(params=NOTEBOOKS, ids=IDS)
def nb(request):
    notebook = nbformat.read(request.param, as_version=4)
    nbformat.validate(notebook)
    return notebook


def test_notebook_has_python_kernelspec_and_title(nb):
    assert nb.metadata.get("kernelspec", {}).get("language", "python") == "python"
    assert nb.metadata["kernelspec"]["name"]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def test_notebook_was_executed_top_to_bottom_in_a_fresh_kernel(nb):
    counts = [c.execution_count for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), (
        f"execution counts {counts}: run `jupyter execute --inplace` on it"
    )


def test_notebook_has_no_error_output_unless_tagged_raises_exception(nb):
    for i, cell in enumerate(code_cells(nb), 1):
        tags = set(cell.metadata.get("tags", []))
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if errors:
            assert tags & {"raises-exception", "nbval-raises-exception"}, f"code cell {i}: {errors[0].ename}"


def test_notebook_imports_companion(nb):
    assert any(
        re.search(r"^\s*(import companion|from companion[\s.])", c.source, re.M) for c in code_cells(nb)
    )


def test_no_output_names_a_path_of_the_machine_it_ran_on(nb):
    for i, cell in enumerate(code_cells(nb), 1):
        for text in output_texts(cell):
            assert not MACHINE_PATH.search(text), f"code cell {i} prints a local path: {text[:200]!r}"


def test_first_code_cell_installs_companion_in_colab_from_the_configured_url(nb):
    expected = sync_colab.install_cell_source(sync_colab.repository_url())
    assert code_cells(nb)[0].source == expected, "run `python scripts/sync_colab.py`"


def test_install_cell_names_the_config_url_only():
    url = sync_colab.repository_url()
    assert url.startswith("https://")
    source = sync_colab.install_cell_source(url)
    assert f"git+{url}" in source and 'if "google.colab" in sys.modules' in source


def test_notebook_ends_with_exercises(nb):
    headings = [
        c.source
        for c in nb.cells
        if c.cell_type == "markdown" and re.search(r"^#+ Exercises", c.source, re.M)
    ]
    assert headings, "each chapter ends with an '## Exercises' section"


PROGRESS_BAR = re.compile(r"\d+%\|")
DISPLAY_MATH = re.compile(r"\$\$")


def test_no_committed_output_keeps_stderr_progress_bars(nb):
    """GitHub and Colab show committed stderr, though the book and the tests leave it out."""
    for i, cell in enumerate(code_cells(nb), 1):
        for out in cell.outputs:
            if out.output_type == "stream" and out.name == "stderr":
                assert not PROGRESS_BAR.search(out.text), f"code cell {i} stores a progress bar in stderr"


def display_math_blocks_not_standing_alone(markdown: str) -> list[str]:
    """The lines where a ``$$`` display block opens straight after a text line.

    MyST's dollarmath reads ``$$...$$`` as display math only when it starts a paragraph; glued to
    the line above, it renders as inline math with a literal ``$`` on each side.
    """
    bad, lines, inside = [], markdown.splitlines(), False
    for k, line in enumerate(lines):
        if inside:
            inside = line.strip().endswith("$$") is False
            continue
        if line.lstrip().startswith("$$"):
            if k > 0 and lines[k - 1].strip():
                bad.append(line)
            stripped = line.strip()
            inside = stripped == "$$" or not (len(stripped) > 2 and stripped.endswith("$$"))
    return bad


def test_the_display_math_check_finds_a_glued_block():
    assert display_math_blocks_not_standing_alone("text\n$$x^2$$\n") == ["$$x^2$$"]
    assert display_math_blocks_not_standing_alone("text\n\n$$x^2$$\n\nmore") == []
    assert display_math_blocks_not_standing_alone("text\n\n$$\nx\n$$\nmore") == []


def test_display_math_stands_as_its_own_paragraph(nb):
    for i, cell in enumerate(nb.cells, 1):
        if cell.cell_type == "markdown":
            assert not display_math_blocks_not_standing_alone(cell.source), (
                f"cell {i}: put a blank line before the $$ block so that it renders as display math"
            )
