"""Every chapter reads as a lesson of a self-study course, the same way on the site, in JupyterLab and in Colab.

The format (issue 11):

- an opening cell with ``**After this chapter you can:**`` and a bullet list of outcomes,
  ``**Prerequisites:**`` and ``**Time:** about N min reading, M min running ...``;
- a closing ``## Exercises`` section of at least three exercises, from a quick check to a project,
  each one markdown cell (``**Exercise N** (quick check|practice|project).`` with a ``*Hint:*`` line)
  followed by exactly one solution code cell, hidden in all three places: ``# @title Solution N``
  and ``cellView: form`` (Colab), ``jupyter.source_hidden``/``outputs_hidden`` (JupyterLab), the
  ``hide-cell`` tag (the site); no answer prose is left visible between the exercises;
- figures drawn for the site's 768-px column: alt text, caption and name in the cell's ``mystnb``
  metadata, PNGs at most 1000 px wide; printed lines at most 88 characters.

Each check is a function from a notebook to a list of problems, so that a failure names every
cell at fault, and so that the tests at the end can prove each check finds a bad notebook.
"""

from __future__ import annotations

import base64
import re
import struct
from collections import Counter
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
IDS = [p.name for p in CHAPTERS]

MAX_PNG_WIDTH = 1000  # px: a 7.5-in figure at the inline backend's 100 dpi, with room to spare
MAX_LINE = 88  # characters of monospaced output that fit the site's 768-px column
MIN_EXERCISES = 3
KINDS = ("quick check", "practice", "project")

OUTCOMES = "**After this chapter you can:**"
PREREQUISITES = "**Prerequisites:**"
TIME = re.compile(r"^\*\*Time:\*\* about \d+ min reading, \d+ min running on a 2-core CPU\.", re.M)
BULLET = re.compile(r"^\s*[-*] \S")
SECTION = re.compile(r"^## ", re.M)
EXERCISES_HEADING = re.compile(r"^## Exercises\s*$", re.M)
EXERCISE = re.compile(r"\A\*\*Exercise (\d+)\*\* \((" + "|".join(KINDS) + r")\)\.")
HINT = re.compile(r"^\*Hint:\*\s*\S", re.M)
SOLUTION_TITLE = re.compile(r"# @title Solution (\d+)")


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def opening_problems(nb: nbformat.NotebookNode) -> list[str]:
    """The chapter's opening: one markdown cell, before the first section and the second code
    cell, with the outcomes as a bullet list, the prerequisites and the time it takes."""
    openings = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and OUTCOMES in c.source]
    if len(openings) != 1:
        return [f"{len(openings)} cells hold {OUTCOMES!r}; the chapter opens with exactly one"]
    index = openings[0]
    cell = nb.cells[index]
    problems = []
    before = nb.cells[:index]
    if (
        any(c.cell_type == "markdown" and SECTION.search(c.source) for c in before)
        or sum(c.cell_type == "code" for c in before) > 1
    ):
        problems.append(
            f"cell {index}: the opening comes after the chapter has begun; put it after the title"
        )
    # the paragraph after the lead-in: bullets, and indented lines that continue them
    lines = cell.source.split(OUTCOMES, 1)[1].strip("\n").split("\n\n")[0].splitlines()
    bullets = sum(bool(BULLET.match(line)) for line in lines)
    if bullets < 2 or not all(BULLET.match(line) or line[:1].isspace() for line in lines):
        problems.append(f"cell {index}: {OUTCOMES} is not followed by a bullet list of at least two outcomes")
    if not re.search(re.escape(PREREQUISITES) + r"[ \t]*\S", cell.source):
        problems.append(f"cell {index}: no {PREREQUISITES!r} line naming what the chapter builds on")
    if not TIME.search(cell.source):
        problems.append(
            f"cell {index}: no '**Time:** about N min reading, M min running on a 2-core CPU.' line"
        )
    return problems


def exercises_section(nb: nbformat.NotebookNode) -> tuple[int, list[nbformat.NotebookNode]] | None:
    """The index of the ``## Exercises`` heading's cell and the cells after it, or None."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and EXERCISES_HEADING.search(cell.source):
            return i, nb.cells[i + 1 :]
    return None


def solution_hiding_problems(cell: nbformat.NotebookNode, where: str) -> list[str]:
    """A solution is hidden on the site (hide-cell), in JupyterLab (source and outputs collapsed)
    and in Colab (a form cell, which shows only its @title)."""
    problems = []
    if "hide-cell" not in cell.metadata.get("tags", []):
        problems.append(f"{where}: no 'hide-cell' tag, so the site shows the solution")
    jupyter = cell.metadata.get("jupyter", {})
    if jupyter.get("source_hidden") is not True or jupyter.get("outputs_hidden") is not True:
        problems.append(f"{where}: jupyter.source_hidden and outputs_hidden must be true (JupyterLab)")
    if cell.metadata.get("cellView") != "form":
        problems.append(f"{where}: cellView must be 'form', so that Colab shows only the title")
    return problems


def exercise_problems(nb: nbformat.NotebookNode) -> list[str]:
    """The chapter ends with ``## Exercises``: at least three, a quick check and a project among
    them, each with a hint and followed by exactly one hidden solution cell, and nothing else."""
    section = exercises_section(nb)
    if section is None:
        return ["no '## Exercises' heading: the chapter ends with its exercises"]
    heading, cells = section
    problems, kinds, number = [], [], 0
    k = 0
    while k < len(cells):
        index, cell = heading + 1 + k, cells[k]
        if cell.cell_type != "markdown":
            problems.append(
                f"cell {index}: a code cell that no exercise asks for (a solution follows its exercise)"
            )
            k += 1
            continue
        match = EXERCISE.match(cell.source)
        if not match:
            first = cell.source.splitlines()[0] if cell.source else ""
            problems.append(
                f"cell {index}: markdown that is not an exercise ({first[:60]!r}): put answer prose "
                "into the solution cell as comments, and start each exercise with "
                "'**Exercise N** (quick check|practice|project).'"
            )
            k += 1
            continue
        number += 1
        kinds.append(match.group(2))
        if int(match.group(1)) != number:
            problems.append(f"cell {index}: Exercise {match.group(1)} should be Exercise {number}")
        if not HINT.search(cell.source):
            problems.append(f"cell {index}: Exercise {match.group(1)} has no line starting with '*Hint:*'")
        solution = cells[k + 1] if k + 1 < len(cells) else None
        if solution is None or solution.cell_type != "code":
            problems.append(
                f"cell {index}: Exercise {match.group(1)} is not followed by its solution code cell"
            )
            k += 1
            continue
        where = f"cell {index + 1} (solution {match.group(1)})"
        first_line = solution.source.splitlines()[0] if solution.source else ""
        title = SOLUTION_TITLE.fullmatch(first_line.strip())
        if not title or title.group(1) != match.group(1):
            problems.append(f"{where}: the first line must be '# @title Solution {match.group(1)}'")
        problems += solution_hiding_problems(solution, where)
        k += 2
    if number < MIN_EXERCISES:
        problems.append(f"{number} exercises: a chapter has at least {MIN_EXERCISES}")
    for kind in ("quick check", "project"):
        if kind not in kinds:
            problems.append(
                f"no exercise is a {kind}: the exercises go from a quick check to a small project"
            )
    return problems


def png_width(data: str) -> int:
    """The width of a base64 PNG, from its header: 8 signature bytes, then the IHDR chunk's
    length and type (8 bytes), then width and height as big-endian 32-bit integers."""
    raw = base64.b64decode(data)
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR":
        raise ValueError("not a PNG: the image/png output does not start with a PNG signature and IHDR")
    return struct.unpack(">I", raw[16:20])[0]


def figure_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Every cell that draws a figure carries alt text, a caption and a name for MyST-NB, and
    every PNG fits the column (at most 1000 px wide)."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        pngs = [o.data["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
        if not pngs:
            continue
        mystnb = cell.metadata.get("mystnb", {})
        if not str(mystnb.get("image", {}).get("alt", "")).strip():
            problems.append(f"cell {i}: a figure without mystnb.image.alt (what it shows, in a sentence)")
        figure = mystnb.get("figure", {})
        if not str(figure.get("caption", "")).strip():
            problems.append(f"cell {i}: a figure without mystnb.figure.caption")
        if not str(figure.get("name", "")).startswith("fig-"):
            problems.append(f"cell {i}: a figure without mystnb.figure.name 'fig-<chapter>-<short>'")
        for png in pngs:
            width = png_width(png)
            if width > MAX_PNG_WIDTH:
                problems.append(
                    f"cell {i}: a PNG {width} px wide (at most {MAX_PNG_WIDTH}): draw it at most 7.5 in wide"
                )
    return problems


def output_lines(cell: nbformat.NotebookNode):
    """The printed lines of a code cell: stdout streams and the text/plain of its results."""
    for out in cell.get("outputs", []):
        if out.output_type == "stream" and out.name == "stdout":
            yield from out.text.splitlines()
        elif out.output_type in ("execute_result", "display_data"):
            yield from out.get("data", {}).get("text/plain", "").splitlines()


def text_width_problems(nb: nbformat.NotebookNode) -> list[str]:
    """No printed line is wider than the column: 88 characters."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            for line in output_lines(cell):
                if len(line) > MAX_LINE:
                    problems.append(f"cell {i}: a {len(line)}-character output line: {line[:50]!r}...")
    return problems


@pytest.fixture(params=CHAPTERS, ids=IDS)
def chapter(request):
    return read(request.param)


def test_there_are_chapters():
    assert CHAPTERS, "book/ holds no chapter notebooks named NN_name.ipynb"


def test_chapter_opens_with_outcomes_prerequisites_and_time(chapter):
    assert opening_problems(chapter) == []


def test_chapter_ends_with_hinted_exercises_each_with_one_solution_hidden_three_ways(chapter):
    assert exercise_problems(chapter) == []


def test_every_figure_has_alt_text_caption_and_name_and_fits_the_column(chapter):
    assert figure_problems(chapter) == []


def test_every_printed_line_fits_the_column(chapter):
    assert text_width_problems(chapter) == []


def test_figure_names_are_unique_across_the_book():
    names = Counter(
        cell.metadata["mystnb"]["figure"]["name"]
        for path in CHAPTERS
        for cell in read(path).cells
        if cell.metadata.get("mystnb", {}).get("figure", {}).get("name")
    )
    assert [name for name, n in names.items() if n > 1] == []


# The checks themselves: a notebook in the format passes, and each way of breaking it is found.

HIDDEN = {
    "tags": ["hide-cell"],
    "jupyter": {"source_hidden": True, "outputs_hidden": True},
    "cellView": "form",
}
PNG_HEADER = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"


def png(width: int, height: int = 100) -> str:
    return base64.b64encode(PNG_HEADER + struct.pack(">II", width, height) + b"\x08\x06\x00\x00\x00").decode()


def figure_cell(width: int = 750, **mystnb) -> nbformat.NotebookNode:
    cell = new_code_cell("plt.plot([1, 2])\nplt.show()", metadata={"mystnb": mystnb} if mystnb else {})
    cell.outputs = [new_output("display_data", data={"image/png": png(width), "text/plain": "<Figure>"})]
    return cell


GOOD_FIGURE = {"image": {"alt": "A rising line."}, "figure": {"caption": "A line.", "name": "fig-0-line"}}


def exercise(n: int, kind: str) -> list[nbformat.NotebookNode]:
    return [
        new_markdown_cell(f"**Exercise {n}** ({kind}). Do something.\n\n*Hint:* look above."),
        new_code_cell(f"# @title Solution {n}\n# Because ...\nprint('found: True')", metadata=HIDDEN),
    ]


def good_notebook() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell("# A chapter\n\nWhat it is about."),
            new_code_cell("# Colab only: install ..."),
            new_markdown_cell(
                f"{OUTCOMES}\n\n- compare two things, on a line\n  that wraps;\n- diagnose a third.\n\n"
                f"{PREREQUISITES} chapter 1 (tensors).\n\n"
                "**Time:** about 20 min reading, 1 min running on a 2-core CPU."
            ),
            new_markdown_cell("## A section"),
            figure_cell(**GOOD_FIGURE),
            new_markdown_cell("## Exercises"),
            *exercise(1, "quick check"),
            *exercise(2, "practice"),
            *exercise(3, "project"),
        ]
    )


def all_problems(nb: nbformat.NotebookNode) -> list[str]:
    return opening_problems(nb) + exercise_problems(nb) + figure_problems(nb) + text_width_problems(nb)


def test_a_notebook_in_the_course_format_passes_every_check():
    assert all_problems(good_notebook()) == []


def test_the_checker_finds_answer_prose_left_visible_after_a_solution():
    nb = good_notebook()
    nb.cells.insert(8, new_markdown_cell("The answer is 42, because ..."))
    problems = exercise_problems(nb)
    assert len(problems) == 1 and "not an exercise" in problems[0] and "cell 8" in problems[0]


def test_the_checker_finds_a_solution_split_over_two_cells():
    nb = good_notebook()
    nb.cells.insert(8, new_code_cell("print('the rest of solution 1')", metadata=HIDDEN))
    assert any("code cell that no exercise asks for" in p for p in exercise_problems(nb))


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (lambda m: m["tags"].remove("hide-cell"), "hide-cell"),
        (lambda m: m["jupyter"].update(source_hidden=False), "source_hidden"),
        (lambda m: m["jupyter"].pop("outputs_hidden"), "outputs_hidden"),
        (lambda m: m.pop("cellView"), "cellView"),
    ],
    ids=["site", "jupyterlab-source", "jupyterlab-outputs", "colab"],
)
def test_the_checker_finds_a_solution_shown_on_the_site_in_jupyterlab_or_in_colab(broken, expected):
    nb = good_notebook()
    broken(nb.cells[9].metadata)
    problems = exercise_problems(nb)
    assert len(problems) == 1 and expected in problems[0] and "solution 2" in problems[0]


def test_the_checker_finds_a_solution_without_its_colab_title():
    nb = good_notebook()
    nb.cells[11].source = "print('solution 3')"
    assert exercise_problems(nb) == ["cell 11 (solution 3): the first line must be '# @title Solution 3'"]


def test_the_checker_finds_an_exercise_without_hint_kind_or_project():
    nb = good_notebook()
    nb.cells[6].source = "**Exercise 1** (quick check). No hint here."
    nb.cells[10].source = "**Exercise 3** (practice). Bigger.\n\n*Hint:* yes."
    problems = exercise_problems(nb)
    assert any("Exercise 1 has no line starting with '*Hint:*'" in p for p in problems)
    assert any("no exercise is a project" in p for p in problems)
    nb.cells[8].source = "**Exercise 2** (homework). Unknown kind.\n\n*Hint:* yes."
    assert any("not an exercise" in p and "cell 8" in p for p in exercise_problems(nb))


def test_the_checker_counts_at_least_three_exercises_and_needs_the_heading():
    nb = good_notebook()
    del nb.cells[8:10]
    nb.cells[8].source = nb.cells[8].source.replace("Exercise 3", "Exercise 2")
    nb.cells[9].source = nb.cells[9].source.replace("Solution 3", "Solution 2")
    assert exercise_problems(nb) == ["2 exercises: a chapter has at least 3"]
    nb.cells[5].source = "## Things to try"
    assert exercise_problems(nb) == ["no '## Exercises' heading: the chapter ends with its exercises"]


def test_the_checker_finds_an_opening_without_outcomes_prerequisites_or_time():
    nb = good_notebook()
    assert opening_problems(nb) == []
    nb.cells[2].source = f"{OUTCOMES} tensors, autograd.\n\n{PREREQUISITES}\n\n**Time:** a while."
    problems = opening_problems(nb)
    assert len(problems) == 3
    assert "bullet list" in problems[0] and "Prerequisites" in problems[1] and "Time" in problems[2]
    del nb.cells[2]
    assert opening_problems(nb) == [f"0 cells hold {OUTCOMES!r}; the chapter opens with exactly one"]


def test_the_checker_finds_an_opening_placed_after_the_chapter_began():
    nb = good_notebook()
    nb.cells.insert(4, nb.cells.pop(2))
    assert opening_problems(nb) == [
        "cell 4: the opening comes after the chapter has begun; put it after the title"
    ]


@pytest.mark.parametrize("missing", ["alt", "caption", "name"])
def test_the_checker_finds_a_figure_without_alt_caption_or_name(missing):
    mystnb = {"image": dict(GOOD_FIGURE["image"]), "figure": dict(GOOD_FIGURE["figure"])}
    (mystnb["image"] if missing == "alt" else mystnb["figure"]).pop(missing)
    nb = new_notebook(cells=[figure_cell(**mystnb)])
    problems = figure_problems(nb)
    assert (
        len(problems) == 1 and f"mystnb.{'image' if missing == 'alt' else 'figure'}.{missing}" in problems[0]
    )


def test_the_checker_finds_a_png_wider_than_the_column():
    assert figure_problems(new_notebook(cells=[figure_cell(1000, **GOOD_FIGURE)])) == []
    assert figure_problems(new_notebook(cells=[figure_cell(1511, **GOOD_FIGURE)])) == [
        "cell 0: a PNG 1511 px wide (at most 1000): draw it at most 7.5 in wide"
    ]


def test_png_width_reads_the_header_and_refuses_what_is_not_a_png():
    assert png_width(png(768, 300)) == 768
    with pytest.raises(ValueError, match="not a PNG"):
        png_width(base64.b64encode(b"GIF89a" + bytes(20)).decode())


def test_the_checker_finds_printed_lines_wider_than_the_column():
    cell = new_code_cell("print(table)")
    cell.outputs = [
        new_output("stream", name="stdout", text="x" * 88 + "\n" + "y" * 89 + "\n"),
        new_output("stream", name="stderr", text="z" * 200),  # not shown on the site
        new_output("execute_result", data={"text/plain": "w" * 120}, execution_count=1),
    ]
    problems = text_width_problems(new_notebook(cells=[cell]))
    assert len(problems) == 2
    assert problems[0].startswith("cell 0: a 89-character") and problems[1].startswith(
        "cell 0: a 120-character"
    )
