"""The PDF edition (`make pdf`) holds the whole book and reads right on paper.

`make pdf` builds ``_build/latex/book.pdf`` and then runs this file with ``BOOK_PDF_REQUIRED=1``, so that a
missing PDF fails. Under plain `make test` there is no PDF unless `make pdf` ran, and the checks of the PDF
are skipped, saying so; the checks of the log parsing below always run.

- every chapter and appendix title of ``_toc.yml`` is in the text (``pdftotext``), and so is the chapter of
  collected exercise solutions;
- no reference is unresolved: no "??" in the text, no undefined reference in the LaTeX log;
- no character is missing from its font ("Missing character" in the log: XeLaTeX drops such a glyph
  silently), and the Chinese of the errata is set in Noto CJK (``pdffonts``);
- no line of code is wider than the text block. Sphinx breaks code lines at the text block's edge
  (``verbatimwrapslines``, and inside long words with ``verbatimforcewraps``, both set in _config.yml); a
  line that still runs off is reported by TeX as an "Overfull \\hbox" whose input lines lie inside a
  ``sphinxVerbatim`` environment of book.tex, and that fails. (Without ``verbatimwrapslines`` TeX reports
  nothing, so the setting itself is checked too.) Any other box more than ``PROSE_SLACK_PT`` too wide fails;
- a few pages are rendered to PNG in ``_build/pdf-pages/`` (``pdftoppm``) for a person to look at.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml
from docutils import nodes

ROOT = Path(__file__).resolve().parent.parent
LATEX = ROOT / "_build" / "latex"
PDF, LOG, TEX = (LATEX / f"book.{ext}" for ext in ("pdf", "log", "tex"))
PAGES = ROOT / "_build" / "pdf-pages"
REQUIRED = os.environ.get("BOOK_PDF_REQUIRED") == "1"
PROSE_SLACK_PT = 5.0  # a box of prose or a table this much too wide shows as a glyph past the margin
SOLUTIONS_TITLE = "Solutions to the exercises"  # _ext/book_pdf.py

OVERFULL = re.compile(
    r"^Overfull \\hbox \((?P<pt>[\d.]+)pt too wide\) (?:in paragraph|in alignment) at lines (?P<first>\d+)--(?P<last>\d+)"
    r"|^Overfull \\hbox \((?P<pt2>[\d.]+)pt too wide\) detected at line (?P<line>\d+)",
    re.M,
)
VERBATIM_BEGIN, VERBATIM_END = r"\begin{sphinxVerbatim}", r"\end{sphinxVerbatim}"


@dataclass(frozen=True)
class Overfull:
    """One "Overfull \\hbox" of the LaTeX log: how much too wide, and the book.tex lines it was set from."""

    points: float
    first: int
    last: int


def overfull_boxes(log: str) -> list[Overfull]:
    """Every "Overfull \\hbox ... at lines A--B" (or "detected at line N") of a LaTeX log."""
    boxes = []
    for m in OVERFULL.finditer(log):
        if m["pt"]:
            boxes.append(Overfull(float(m["pt"]), int(m["first"]), int(m["last"])))
        else:
            boxes.append(Overfull(float(m["pt2"]), int(m["line"]), int(m["line"])))
    return boxes


def verbatim_lines(tex: str) -> set[int]:
    """The 1-based line numbers of ``tex`` inside a ``sphinxVerbatim`` environment (code and outputs)."""
    inside, lines = False, set()
    for number, line in enumerate(tex.splitlines(), start=1):
        if VERBATIM_BEGIN in line:
            inside = True
        elif VERBATIM_END in line:
            inside = False
        elif inside:
            lines.add(number)
    return lines


def code_overflows(boxes: list[Overfull], code: set[int]) -> list[Overfull]:
    """The boxes set from lines of code: a line of code or output wider than the text block."""
    return [b for b in boxes if any(n in code for n in range(b.first, b.last + 1))]


def titles() -> list[str]:
    """The title (first heading) of every page in ``_toc.yml`` but the root: each chapter and appendix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    found = []
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            path = ROOT / chapter["file"]
            if path.with_suffix(".ipynb").exists():
                nb = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
                text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
            else:
                text = path.with_suffix(".md").read_text(encoding="utf-8")
            heading = re.search(r"^# (.+)$", text, re.M)
            assert heading, f"{chapter['file']} has no '# ' title"
            found.append(re.sub(r"[`*_]", "", heading[1]).strip())
    return found


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


book_pdf = _load(ROOT / "_ext" / "book_pdf.py")


def table(*rows: list) -> nodes.table:
    """A docutils table like MyST's; a cell given as ("code", text) is inline code."""
    group = nodes.tgroup(cols=len(rows[0]))
    group += [nodes.colspec() for _ in rows[0]]
    body = nodes.tbody()
    for cells in rows:
        row = nodes.row()
        for cell in cells:
            inner = nodes.literal("", cell[1]) if isinstance(cell, tuple) else nodes.Text(cell)
            row += nodes.entry("", nodes.paragraph("", "", inner))
        body += row
    group += body
    return nodes.table("", group)


def flat(text: str) -> str:
    """Text compared as read: ligatures and full-width forms unfolded, whitespace runs one space."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


# --- the log parsing and its decisions, always ---


def test_overfull_boxes_are_read_with_their_input_lines():
    log = (
        "Overfull \\hbox (4.42516pt too wide) in paragraph at lines 14480--14482\n"
        "[]\\TU/DejaVuSansMono(0)/m/n/10 fit(accumulate_grad_batches=4)\n"
        "Overfull \\hbox (1097.18839pt too wide) in alignment at lines 14495--14511\n"
        "Overfull \\hbox (20.0pt too wide) detected at line 7\n"
        "Overfull \\vbox (0.83806pt too high) detected at line 2132\n"
    )
    assert overfull_boxes(log) == [
        Overfull(4.42516, 14480, 14482),
        Overfull(1097.18839, 14495, 14511),
        Overfull(20.0, 7, 7),
    ]


def test_a_box_set_from_inside_a_verbatim_is_code_and_one_outside_is_not():
    tex = "text\n\\begin{sphinxVerbatim}[commandchars=\\\\\\{\\}]\nx = 1\n\\end{sphinxVerbatim}\nmore text\n"
    code = verbatim_lines(tex)
    assert code == {3}
    assert code_overflows([Overfull(9.0, 3, 3), Overfull(9.0, 5, 5), Overfull(1.0, 1, 4)], code) == [
        Overfull(9.0, 3, 3),
        Overfull(1.0, 1, 4),
    ]


def test_table_columns_share_the_line_by_their_text_and_fit_their_longest_word():
    prose = "a sentence that is long enough to need wrapping across several lines of a table cell " * 2
    widths = book_pdf.column_widths(table(["Batch", "批大小", prose], ["Term", "全归约", prose]))
    assert sum(widths) <= book_pdf.LINE
    assert widths[2] > widths[0] and widths[2] > widths[1]  # the sentences get the room
    assert widths[0] >= len("Batch") + 1 and widths[1] >= 2 * 1 + 1  # a word, or one CJK character, fits


def test_a_cjk_bracket_holds_to_its_word_and_inline_code_breaks_where_latex_can():
    """'（torch.compile）' cannot break inside (xeCJK keeps brackets on their word); inline code breaks
    only after the characters of \\sphinxbreaksafteractivelist, so its widest piece sets the column."""
    chinese = nodes.entry("", nodes.paragraph("", "", nodes.Text("编译（torch.compile）")))
    total, widest = book_pdf.cell_widths(chinese)
    assert widest == pytest.approx(2 + len("torch.compile") + 2) and total == pytest.approx(4 + widest)
    code = nodes.entry("", nodes.paragraph("", "", nodes.literal("", "fit(accumulate_grad_batches=4)")))
    assert book_pdf.cell_widths(code)[1] == pytest.approx(1.25 * len("accumulate_grad_batches="))


def test_every_chapter_and_appendix_has_a_title_to_look_for():
    found = titles()
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    assert len(found) == sum(len(p["chapters"]) for p in toc["parts"]) and all(found)


# --- the PDF itself, when `make pdf` built it ---


@pytest.fixture(scope="module")
def built() -> Path:
    if not PDF.exists():
        if REQUIRED:
            pytest.fail(f"{PDF.relative_to(ROOT)} was not built: run `make pdf`")
        pytest.skip(f"no {PDF.relative_to(ROOT)}: the PDF is checked after `make pdf`")
    missing = [tool for tool in ("pdftotext", "pdftoppm", "pdffonts") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: `make pdf` installs poppler-utils")
    return PDF


@pytest.fixture(scope="module")
def text(built: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(built), "-"], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def log(built: Path) -> str:
    return LOG.read_text(encoding="utf-8", errors="replace")


def test_pdf_has_every_chapter_and_appendix_title(text):
    pdf = flat(text)
    missing = [t for t in [*titles(), SOLUTIONS_TITLE] if flat(t) not in pdf]
    assert not missing, f"titles not in the PDF's text: {missing}"


def test_pdf_collects_every_exercise_solution_at_the_back(text):
    """sphinx-jupyterbook-latex drops cells tagged hide-cell; _ext/book_pdf.py keeps the solutions, at the back."""
    notebooks = sorted((ROOT / "book").glob("*.ipynb"))
    solutions = sum(
        c.source.lstrip().startswith("# @title Solution")
        for nb in notebooks
        for c in nbformat.read(nb, as_version=4).cells
        if c.cell_type == "code"
    )
    pages = text.split("\f")
    back = page_of(text, "On the site each solution is hidden") - 1
    assert sum(page.count("# @title Solution") for page in pages[back:]) == solutions
    assert not any("# @title Solution" in page for page in pages[:back]), "a solution is left in its chapter"


def test_pdf_has_no_unresolved_reference(text, log):
    pages = [i + 1 for i, page in enumerate(text.split("\f")) if "??" in page]
    assert not pages, f'"??" (an unresolved reference) on page(s) {pages}'
    undefined = sorted(set(re.findall(r"(?:Hyper )?[Rr]eference `([^']+)' on page", log)))
    assert not undefined, f"undefined references in the LaTeX log: {undefined}"


def test_pdf_misses_no_character(log):
    missing = sorted(set(re.findall(r"Missing character: There is no (.+?) in font", log)))
    assert not missing, f"characters with no glyph in their font (XeLaTeX left them out): {missing}"


def test_pdf_sets_chinese_in_noto_cjk(built):
    fonts = subprocess.run(["pdffonts", str(built)], capture_output=True, text=True, check=True).stdout
    assert "NotoSerifCJK" in fonts or "NotoSansCJK" in fonts, f"no Noto CJK font embedded:\n{fonts}"


def test_no_line_of_code_is_wider_than_the_text_block(log):
    tex = TEX.read_text(encoding="utf-8")
    setup = re.search(r"\\sphinxsetup\{([^}]*)\}", tex)
    assert setup and "verbatimwrapslines=true" in setup[1], (
        "verbatimwrapslines is off: TeX would then report no code line that runs off the page"
    )
    boxes = overfull_boxes(log)
    code = code_overflows(boxes, verbatim_lines(tex))
    assert not code, "code or output wider than the text block, at book.tex lines: " + ", ".join(
        f"{b.first}-{b.last} ({b.points:.1f}pt)" for b in code
    )
    prose = [b for b in boxes if b not in code and b.points > PROSE_SLACK_PT]
    assert not prose, "text or tables running past the margin, at book.tex lines: " + ", ".join(
        f"{b.first}-{b.last} ({b.points:.1f}pt)" for b in prose
    )


def page_of(text: str, needle: str) -> int:
    """The 1-based number of the first page whose text holds ``needle``, the table of contents left out."""
    for i, page in enumerate(text.split("\f"), start=1):
        if needle in flat(page) and ". . . . ." not in page:
            return i
    raise AssertionError(f"{needle!r} is on no page but the table of contents")


def test_sample_pages_render_to_png(built, text):
    """A chapter page with code, an output and a figure; the errata's Chinese; the collected solutions."""
    samples = {
        "chapter-code": page_of(text, "The update rules") + 1,
        "errata-chinese": page_of(text, "准备工作"),
        "glossary": page_of(text, "消融实验"),
        "solutions": page_of(text, "On the site each solution is hidden"),
    }
    PAGES.mkdir(parents=True, exist_ok=True)
    for name, page in samples.items():
        out = PAGES / f"{name}-p{page}"
        subprocess.run(
            [
                "pdftoppm",
                "-png",
                "-r",
                "80",
                "-f",
                str(page),
                "-l",
                str(page),
                "-singlefile",
                str(built),
                str(out),
            ],
            check=True,
        )
        assert out.with_suffix(".png").stat().st_size > 10_000, f"{out}.png is nearly empty"
