"""The PDF edition (`make pdf`): four changes to the LaTeX build only, loaded by `_config.yml`.

Every transform here runs for the LaTeX builder alone (``builders = ("latex",)``); the site is untouched.

- **Exercise solutions at the back.** sphinx-jupyterbook-latex drops every cell tagged ``hide-cell`` from
  the PDF, and the solutions are such cells (on the site each one is a toggle under its exercise). They are
  kept instead, and moved to a chapter "Solutions to the exercises" at the end of the appendices, one
  section per chapter, where a reader of paper looks for them; each chapter's exercises say so.
- **Tables that fit the page.** Sphinx typesets a table of more than 30 rows as a ``longtable`` whose
  columns are ``l``: one line a cell, however long (the glossary ran 1,100 pt off the page). Each table
  gets column widths in proportion to its text, so every cell wraps inside the text block.
- **Appendices lettered** (A, B, ...), as in a printed book, instead of numbered on from chapter 10.
- **Links into the intro.** sphinx-jupyterbook-latex flattens the root page's sections into headings
  without their ids, so a link to ``intro.md#how-to-read-it`` pointed nowhere; each section's ids are kept
  as a target before its heading.
"""

from __future__ import annotations

import re

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform

SOLUTION_TAG = "tag_hide-cell"
SOLUTION_CLASS = "book-solution"
SOLUTIONS_TITLE = "Solutions to the exercises"
WHERE_SOLUTIONS_ARE = (
    f"In this PDF the solutions are at the back of the book, in the appendix {SOLUTIONS_TITLE}."
)
APPENDICES = "Appendices"  # the caption of _toc.yml's part
LINE = 88  # characters of body text in a line of the text block, between the columns' padding
MATH_SHARE = 0.4  # inline math: characters of body text per character of its LaTeX source, roughly


def is_solution(node: nodes.Node) -> bool:
    """A notebook cell tagged ``hide-cell`` whose code starts with ``# @title Solution``."""
    if not isinstance(node, nodes.container) or SOLUTION_TAG not in node["classes"]:
        return False
    return node.astext().lstrip().startswith("# @title Solution")


class KeepSolutions(SphinxPostTransform):
    """Untag the solution cells before sphinx-jupyterbook-latex (priority 400) drops hidden cells."""

    default_priority = 399
    builders = ("latex",)

    def run(self, **kwargs) -> None:
        for cell in list(self.document.findall(is_solution)):
            cell["classes"] = [c for c in cell["classes"] if c != SOLUTION_TAG] + [SOLUTION_CLASS]


class SolutionsToBack(SphinxPostTransform):
    """Move the solution cells into a last appendix chapter, a section per chapter, in book order.

    Runs after sphinx-jupyterbook-latex has made the parts (priority 700): the chapter goes at the end of the
    part named ``APPENDICES``, or at the end of the book when there is no such part.
    """

    default_priority = 710
    builders = ("latex",)

    def run(self, **kwargs) -> None:
        cells = [c for c in self.document.findall(nodes.container) if SOLUTION_CLASS in c["classes"]]
        if not cells:
            return
        chapter = nodes.section("", nodes.title("", SOLUTIONS_TITLE), ids=["book-solutions"])
        chapter += nodes.paragraph(
            "",
            "On the site each solution is hidden under its exercise; on paper they are collected here, "
            "chapter by chapter, in the order of the exercises.",
        )
        by_chapter: dict[str, nodes.section] = {}
        for cell in cells:
            title = self.chapter_title(cell)
            if title not in by_chapter:
                by_chapter[title] = nodes.section(
                    "", nodes.title("", title), ids=[f"book-solutions-{len(by_chapter)}"]
                )
                chapter += by_chapter[title]
                if isinstance(cell.parent, nodes.section):  # the chapter's exercises: say where they went
                    cell.parent.insert(1, nodes.paragraph("", WHERE_SOLUTIONS_ARE))
            cell.parent.remove(cell)
            by_chapter[title] += cell
        self.where_to_append().append(chapter)

    def chapter_title(self, cell: nodes.Node) -> str:
        """The title of the chapter (the file) the cell comes from, with its number as in the book."""
        node = cell.parent  # sphinx-jupyterbook-latex marks each section with the file it comes from
        while node is not None and not (isinstance(node, nodes.section) and node.get("docname")):
            node = node.parent
        docname = node["docname"] if node is not None else ""
        if docname not in self.env.titles:
            return "Exercises"
        number = self.env.toc_secnumbers.get(docname, {}).get("", ())
        title = self.env.titles[docname].astext()
        return f"Chapter {'.'.join(map(str, number))}: {title}" if number else title

    def where_to_append(self) -> nodes.Element:
        return appendices(self.document) or self.document


def appendices(document: nodes.document) -> nodes.Element | None:
    """The toctree wrapper inside the part section named ``APPENDICES`` (made by sphinx-jupyterbook-latex)."""
    for section in document.findall(nodes.section):
        if section.get("docname") == APPENDICES:
            wrappers = [c for c in section.children if isinstance(c, nodes.compound)]
            return wrappers[-1] if wrappers else section
    return None


class LetterTheAppendices(SphinxPostTransform):
    """Chapters from the appendices' part on are lettered, "Appendix A", as in a printed book."""

    default_priority = 711
    builders = ("latex",)

    def run(self, **kwargs) -> None:
        where = appendices(self.document)
        if where is not None:
            where.insert(0, nodes.raw("", "\\appendix\n", format="latex"))


# Where a line may break inside a word. CJK: between ideographs, but not inside an opening or closing bracket
# or punctuation (xeCJK's rules), so "（torch.compile）" holds as one piece. Inline code: after the characters
# of \sphinxbreaksafteractivelist (_config.yml's preamble adds : ( = to Sphinx's . , ; ? ! /).
CJK_OPEN, CJK_PUNCT = "（「『《〈【〔", "\u3000-\u303f\uff00-\uff65"
UNBREAKABLE = re.compile(
    f"[{CJK_OPEN}]*(?:[^\u2e80-\uffff]+|[\u2e80-\uffff])(?:(?![{CJK_OPEN}])[{CJK_PUNCT}])*"
)
CODE_BREAKS_AFTER = re.compile(r"[^.,;?!/:(=]+[.,;?!/:(=]*|[.,;?!/:(=]+")


def text_width(text: str, code: bool) -> float:
    """The width of ``text`` in average characters of the body font: CJK counts 2, monospace 1.25."""
    return sum(2.0 if ord(ch) >= 0x2E80 else 1.25 if code else 1.0 for ch in text)


def cell_widths(entry: nodes.entry) -> tuple[float, float]:
    """(The whole cell's width, its widest unbreakable word), in characters; CJK breaks between characters."""
    total, widest = 0.0, 0.0
    for text in entry.findall(nodes.Text):
        if isinstance(text.parent, nodes.math):  # LaTeX source, set far narrower than it is long
            total += MATH_SHARE * len(text)
            widest = max(widest, MATH_SHARE * len(text))
            continue
        code = isinstance(text.parent, nodes.literal)
        total += text_width(text, code)
        for word in text.split():
            parts = (
                [p for piece in UNBREAKABLE.findall(word) for p in CODE_BREAKS_AFTER.findall(piece)]
                if code
                else UNBREAKABLE.findall(word)
            )
            widest = max([widest, *(text_width(p, code) for p in parts)])
    return total, widest


def column_widths(table: nodes.table, line: float = LINE) -> list[int] | None:
    """Each column's width in characters of a text line of ``line`` characters.

    Each column gets at least its widest unbreakable word, and 3 characters of slack (a bold or
    sans-serif heading is wider); the rest of the line goes to the columns in
    proportion to all the text they hold, none wider than its longest cell: a column of short terms stays
    narrow, a column of sentences gets the room. ``None`` for a table with cells spanning rows or columns.
    """
    groups = list(table.findall(nodes.tgroup))
    if len(groups) != 1:
        return None
    count = groups[0]["cols"]
    longest, needed, text = [0.0] * count, [0.0] * count, [0.0] * count
    for row in groups[0].findall(nodes.row):
        entries = [e for e in row.children if isinstance(e, nodes.entry)]
        if len(entries) != count or any(e.get("morecols") or e.get("morerows") for e in entries):
            return None
        for i, entry in enumerate(entries):
            total, widest = cell_widths(entry)
            longest[i], needed[i], text[i] = (
                max(longest[i], total),
                max(needed[i], widest + 3),
                text[i] + total,
            )
    widths, most = list(needed), [max(n, w) for n, w in zip(needed, longest)]
    spare, growing = line - sum(needed), {i for i in range(count) if most[i] > needed[i]}
    while spare > 0.5 and growing:
        weight = sum(text[i] for i in growing)
        for i in sorted(growing):
            widths[i] += min(spare * text[i] / weight, most[i] - widths[i])
        growing = {i for i in growing if widths[i] < most[i]}
        spare = line - sum(widths)
    return [round(w) for w in widths]


class TablesFitThePage(SphinxPostTransform):
    """Give every table without explicit widths column widths in proportion to its text (see above)."""

    default_priority = 720
    builders = ("latex",)

    def run(self, **kwargs) -> None:
        for table in self.document.findall(nodes.table):
            if "colwidths-given" in table["classes"]:
                continue
            widths = column_widths(table)
            if widths is None:
                continue
            for colspec, width in zip(table.findall(nodes.colspec), widths):
                colspec["colwidth"] = width
            table["classes"] = [c for c in table["classes"] if c != "colwidths-auto"] + ["colwidths-given"]


class KeepIntroTargets(SphinxPostTransform):
    """Keep the ids of the root page's sections, which sphinx-jupyterbook-latex (700) turns into bare headings."""

    default_priority = 690
    builders = ("latex",)

    def run(self, **kwargs) -> None:
        root = self.config.root_doc
        for section in list(self.document.findall(nodes.section)):
            if (
                section.get("docname") == root
                and section["ids"]
                and isinstance(section.parent, nodes.section)
            ):
                section.insert(0, nodes.target("", "", ids=list(section["ids"])))


def setup(app: Sphinx) -> dict:
    for transform in (
        KeepSolutions,
        SolutionsToBack,
        LetterTheAppendices,
        TablesFitThePage,
        KeepIntroTargets,
    ):
        app.add_post_transform(transform)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
