"""Every chapter reads the same in JupyterLab and Colab as on the site.

The site renders a notebook's markdown with MyST; JupyterLab and Colab render it as CommonMark (plus GitHub's
tables and ``$``/``$$`` math). MyST's own syntax means nothing there and shows as text: a role
(``{glue:text}`name```) as the role's name followed by a code span, a directive (```` ```{note} ````) as a code
block, a ``:::{note}`` fence or a ``(label)=`` target as a line of punctuation. These tests parse every markdown
cell the way those readers' renderers do (markdown-it-py's CommonMark parser with the dollar-math plugin) and fail
on each piece of MyST-only syntax a reader would see as text. The checker is shown to catch each kind on a bad
notebook first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.dollarmath import dollarmath_plugin

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))

ROLE_NAME = re.compile(r"\{[A-Za-z][\w.:+-]*\}$")  # text that ends in {name}, just before a code span
TARGET = re.compile(r"^\([\w.:-]+\)=\s*$")  # (label)=
COLON_FENCE = re.compile(r"^:{3,}\s*\{[\w.:+-]+\}")  # :::{note}
SUBSTITUTION = re.compile(r"\{\{[^{}]*\}\}")  # {{ name }}


@dataclass(frozen=True)
class MystLeftover:
    """One piece of MyST-only syntax, as a notebook reader would see it."""

    cell: int
    kind: str
    text: str

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.kind} {self.text!r}"


def _commonmark() -> MarkdownIt:
    """The parser JupyterLab and Colab amount to: CommonMark, GitHub tables, ``$``/``$$`` math."""
    return MarkdownIt("commonmark").enable("table").use(dollarmath_plugin, double_inline=True)


def _inline_leftovers(children: list[Token]) -> list[tuple[str, str]]:
    found = []
    for before, after in zip(children, children[1:]):
        if before.type == "text" and after.type == "code_inline" and ROLE_NAME.search(before.content):
            found.append(("role", ROLE_NAME.search(before.content).group(0) + f"`{after.content}`"))
    for child in children:
        if child.type == "text" and SUBSTITUTION.search(child.content):
            found.append(("substitution", SUBSTITUTION.search(child.content).group(0)))
    return found


def myst_leftovers(source: str, cell: int = 0) -> list[MystLeftover]:
    """The MyST-only syntax in one markdown cell that CommonMark would show as text."""
    found: list[MystLeftover] = []
    for token in _commonmark().parse(source):
        if token.type in ("fence", "code_block") and token.info.strip().startswith("{"):
            found.append(MystLeftover(cell, "directive", f"```{token.info.strip()}"))
        elif token.type == "inline":
            lines = token.content.splitlines()
            found += [MystLeftover(cell, "target", line) for line in lines if TARGET.match(line)]
            found += [MystLeftover(cell, "colon fence", line) for line in lines if COLON_FENCE.match(line)]
            found += [
                MystLeftover(cell, kind, text) for kind, text in _inline_leftovers(token.children or [])
            ]
    return found


def notebook_leftovers(notebook: nbformat.NotebookNode) -> list[MystLeftover]:
    return [
        leftover
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "markdown"
        for leftover in myst_leftovers(cell.source, index)
    ]


# --- the checker catches each kind, and lets through what renders the same everywhere ---------------------

BAD = {
    "role": "On this machine a step took {glue:text}`step_ms:.1f` ms.",
    "role at the start of a line": "{ref}`the loop <training-loop>` explains it.",
    "directive": "Before.\n\n```{note}\nA note.\n```\n",
    "directive with options": "```{figure} images/plot.png\n:alt: a plot\n```\n",
    "colon fence": ":::{tip}\nA tip.\n:::\n",
    "target": "(training-loop)=\n## The loop\n",
    "substitution": "The machine is {{ machine }}.",
}
GOOD = {
    "inline math with braces": "The mean $\\frac{1}{B}\\sum_{i} \\ell_i$ and $\\{x\\}$ are math.",
    "display math": "$$\n\\nabla \\frac{1}{B} \\sum_{i=1}^{B} \\ell_i\n$$\n",
    "a code span holding a role": "Write `{glue:text}` roles only in `.md` pages.",
    "a python code block": "```python\nd = {'a': 1}\nprint(f'{d}')\n```\n",
    "a set in prose": "The flags {avx2, avx512f} are read from `/proc/cpuinfo`.",
    "a markdown link to a chapter": "See [chapter 6](06_training_loop.ipynb#the-loop).",
    "a table": "| a | b |\n| --- | --- |\n| `x` | 1 |\n",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_the_checker_finds_each_kind_of_myst_syntax(kind):
    found = myst_leftovers(BAD[kind])
    assert len(found) == 1, f"{kind}: {found}"


@pytest.mark.parametrize("kind", list(GOOD))
def test_the_checker_lets_plain_markdown_through(kind):
    assert myst_leftovers(GOOD[kind]) == []


def test_the_checker_names_the_cell_of_a_bad_notebook():
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# A chapter"),
            nbformat.v4.new_code_cell("x = 1  # {glue:text}`x` in code is code"),
            nbformat.v4.new_markdown_cell(BAD["role"]),
            nbformat.v4.new_markdown_cell(BAD["target"] + "\n" + BAD["directive"]),
        ]
    )
    found = notebook_leftovers(notebook)
    assert [(f.cell, f.kind) for f in found] == [(2, "role"), (3, "target"), (3, "directive")]
    assert str(found[0]) == "cell 2: role '{glue:text}`step_ms:.1f`'"


# --- the chapters -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_a_chapter_has_no_myst_only_syntax_in_its_markdown(path):
    found = notebook_leftovers(nbformat.read(path, as_version=4))
    assert not found, (
        f"{path.name} shows MyST syntax as text in JupyterLab and Colab: "
        + "; ".join(map(str, found))
        + ". Print the figure in its code cell and point the prose at the printed output"
        " (glue() may stay in the code for the appendices)."
    )
