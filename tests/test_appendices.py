"""The appendices point at what the chapters really say and print.

- every link of the errata, the cheat sheet and the glossary names a book page, and a heading of that
  page by the anchor MyST gives it (`myst_heading_anchors`), so a renamed heading fails here, not only
  in `make book`;
- the errata quote the source article verbatim (when ``../shared/seed/`` is present), translate every
  Chinese quote, and cover every error issue 11 names;
- every figure the cheat sheet quotes is printed by the notebook its row links to;
- the glossary gives each term in Chinese, once, in alphabetical order.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml
from markdown_it import MarkdownIt
from myst_parser.mdit_to_docutils.base import default_slugify

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
ERRATA, CHEATSHEET, GLOSSARY = (BOOK / f"appendix_{name}.md" for name in ("errata", "cheatsheet", "glossary"))
APPENDICES = [ERRATA, CHEATSHEET, GLOSSARY]
SEED = ROOT.parent / "shared" / "seed"  # the source article, beside the repository (not part of it)

ANCHOR_LEVELS = 3  # myst_heading_anchors: headings down to ### get an anchor
LINK = re.compile(r"\]\(([^)\s#]+)(?:#([^)\s]+))?\)")
CJK = re.compile(r"[\u4e00-\u9fff]")
COMMENT = re.compile(r"<!--.*?-->", re.S)
# figures as a notebook prints them: 0.011, 67066, 1.13e+04, 7.5e-10 (not the 64 of float64)
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[+-]\d+)?(?![\w])")
NOT_FIGURES = re.compile(r"\{glue:[a-z]*\}`[^`]*`|`[^`]*`|\$[^$]*\$")  # pasted values, code, math


def visible(path: Path) -> str:
    return COMMENT.sub("", path.read_text(encoding="utf-8"))


def markdown_sources(page: Path) -> list[str]:
    if page.suffix == ".ipynb":
        return [c.source for c in nbformat.read(page, as_version=4).cells if c.cell_type == "markdown"]
    return [page.read_text(encoding="utf-8")]


def heading_anchors(sources: list[str]) -> list[str]:
    """The anchors MyST gives a page's headings: its slug of the heading's text and inline code,
    made unique within the page by appending ``-1``, ``-2``, ... as MyST does."""
    md = MarkdownIt("commonmark")
    anchors: list[str] = []
    for source in sources:
        tokens = md.parse(source)
        for opening, inline in zip(tokens, tokens[1:]):
            if opening.type != "heading_open" or int(opening.tag[1:]) > ANCHOR_LEVELS:
                continue
            title = "".join(c.content for c in inline.children or [] if c.type in ("text", "code_inline"))
            slug, i = default_slugify(title), 1
            while slug in anchors:
                slug, i = f"{slug}-{i}", i + 1
            anchors.append(slug)
    return anchors


def broken_links(text: str) -> list[str]:
    problems = []
    for target, anchor in LINK.findall(text):
        if "://" in target:
            continue
        page = BOOK / target
        if not page.is_file():
            problems.append(f"{target}: no such page in book/")
        elif anchor and anchor not in heading_anchors(markdown_sources(page)):
            problems.append(f"{target}#{anchor}: no heading of {target} has this anchor")
    return problems


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every Markdown table in the text, as lists of stripped cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    header_rows = [
        r
        for r in rows
        if r and r[0] in ("Recipe", "English", "Left out", "The article's heading, as printed")
    ]
    return [r for r in rows if r not in header_rows]


def output_text(notebook: Path) -> str:
    texts = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            texts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(t if isinstance(t, str) else "".join(t) for t in texts)


def errata_entries() -> dict[str, str]:
    errors = visible(ERRATA).split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    return {part.split("\n", 1)[0]: part for part in re.split(r"^### ", errors, flags=re.M)[1:]}


# -- links -------------------------------------------------------------------------------------------


def test_the_anchor_function_agrees_with_myst_on_headings_with_code_and_punctuation():
    sources = [
        "# Title\n## What `Normalize((0.224,), (0.224,))` does\n### Adam (Kingma & Ba, 2015)\n#### Deep\n## Title"
    ]
    assert heading_anchors(sources) == [
        "title",
        "what-normalize0224-0224-does",
        "adam-kingma--ba-2015",
        "title-1",
    ]


@pytest.mark.parametrize("page", APPENDICES, ids=lambda p: p.name)
def test_every_link_of_an_appendix_names_a_page_and_one_of_its_headings(page):
    assert broken_links(visible(page)) == []


def test_a_link_to_a_renamed_heading_is_reported():
    assert broken_links("[x](01_concepts.ipynb#no-such-heading) [y](no_such_page.md)") == [
        "01_concepts.ipynb#no-such-heading: no heading of 01_concepts.ipynb has this anchor",
        "no_such_page.md: no such page in book/",
    ]


def test_the_table_of_contents_lists_the_appendices_in_their_own_part():
    parts = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))["parts"]
    appendices = [p for p in parts if p["caption"] == "Appendices"]
    assert len(appendices) == 1
    files = {c["file"] for c in appendices[0]["chapters"]}
    assert {f"book/{p.stem}" for p in APPENDICES} <= files


@pytest.mark.parametrize("page", APPENDICES, ids=lambda p: p.name)
def test_no_placeholder_text_is_visible_on_an_appendix(page):
    assert not re.search(r"TODO|FIXME|XXX|TBD", visible(page))


# -- errata ------------------------------------------------------------------------------------------


def quotes(text: str) -> list[str]:
    """What the errata quote from the article: blockquote lines (code without its backticks) and
    text in 「」 or 《》."""
    found = []
    for line in text.splitlines():
        if line.startswith("> ") and line[2:].strip():
            found.append(line[2:].strip().removeprefix("`").removesuffix("`"))
    found += re.findall(r"「([^」]+)」", text) + re.findall(r"(《[^》]+》)", text)
    return found


def test_the_errata_quote_the_article_verbatim():
    seeds = sorted(SEED.glob("*.txt")) if SEED.is_dir() else []
    if not seeds:
        pytest.skip(f"the source article is not at {SEED}")
    article = "\n".join(p.read_text(encoding="utf-8") for p in seeds)
    found = quotes(visible(ERRATA))
    assert len(found) > 30
    assert [q for q in found if q not in article] == []


def test_the_errata_credit_the_article_by_its_title():
    assert "《3. PyTorch优化：如何提高模型的性能？》" in visible(ERRATA)
    assert "*PyTorch optimization: how to\nimprove a model's performance?*" in visible(ERRATA)


def test_every_erratum_quotes_translates_corrects_and_links_a_chapter_section():
    entries = errata_entries()
    assert len(entries) >= 16
    for title, entry in entries.items():
        paragraphs = [p.strip() for p in entry.split("\n\n")]
        quoted = [i for i, p in enumerate(paragraphs) if p.startswith("> ") and CJK.search(p)]
        assert quoted, f"{title}: no Chinese sentence quoted from the article"
        for i in quoted:
            assert paragraphs[i + 1].startswith('"'), f"{title}: the quote is not followed by its translation"
        assert "**Correction.**" in entry, title
        shown = entry.split("**Shown in**", 1)
        assert len(shown) == 2 and LINK.search(shown[1]), f"{title}: no link to the section that shows it"


@pytest.mark.parametrize(
    "error",
    [
        "SmoothL2",
        "Nadam",
        "HingeLoss",
        "`zero_grad()` does not update the parameters",
        'not "a function"',
        "`num_epochs` and `dataloader` are never defined",
        "`Normalize((0.224,), (0.224,))`",
        "The `DataLoader` line is cut off",
        '`pred(i)` is not "the i-th model"',
    ],
)
def test_the_errata_have_an_entry_for_each_error_issue_11_names(error):
    assert any(error in title for title in errata_entries())


def test_the_errata_map_every_numbered_heading_of_the_article_to_the_book():
    numbering = (
        visible(ERRATA).split("## The article's numbering, mapped to the chapters", 1)[1].split("\n## ", 1)[0]
    )
    headings = [row[0] for row in table_rows(numbering)]
    for heading in (
        "「2.1. 基本概念解释」",
        "「2.1. 优化器」",
        "「2. 实现步骤与流程」",
        "「3.2.1. 使用数据加载器」",
    ):
        assert heading in headings
    assert all(LINK.search(row[-1]) or "Chapters" in row[-1] for row in table_rows(numbering))


# -- cheat sheet -------------------------------------------------------------------------------------


def figures(cell: str) -> list[str]:
    return NUMBER.findall(NOT_FIGURES.sub(" ", cell))


def test_figures_ignore_code_math_and_pasted_values():
    cell = "`float64`: True, $\\lambda = 10$, {glue:text}`06_training_loop.ipynb::test_accuracy:.4f`, 1.13e+04 (64, 3)"
    assert figures(cell) == ["1.13e+04", "64", "3"]


def cheatsheet_rows() -> list[list[str]]:
    return [row for row in table_rows(visible(CHEATSHEET)) if len(row) == 3]


def test_every_recipe_links_the_chapter_section_that_measures_it():
    rows = cheatsheet_rows()
    assert len(rows) >= 25
    for recipe, _, chapter in rows:
        assert LINK.search(chapter) and ".ipynb#" in chapter, recipe


def test_every_figure_of_the_cheat_sheet_is_printed_by_the_notebook_it_links():
    printed = {}
    missing = []
    for recipe, measured, chapter in cheatsheet_rows():
        notebook = LINK.search(chapter).group(1)
        if notebook not in printed:
            printed[notebook] = set(NUMBER.findall(output_text(BOOK / notebook)))
        missing += [
            f"{recipe}: {f} (not printed by {notebook})"
            for f in figures(measured)
            if f not in printed[notebook]
        ]
    assert missing == []


# -- glossary ----------------------------------------------------------------------------------------


def glossary_rows() -> list[list[str]]:
    return [row for row in table_rows(visible(GLOSSARY)) if len(row) == 4]


def sort_key(term: str) -> str:
    return re.sub(r"[`(]", "", term).lower()


def test_the_glossary_gives_every_term_in_chinese_with_the_chapter_that_introduces_it():
    rows = glossary_rows()
    assert len(rows) >= 100
    for english, chinese, meaning, where in rows:
        assert CJK.search(chinese), f"{english}: no Chinese term"
        assert meaning and LINK.search(where) and ".ipynb" in where, english


def test_the_glossary_lists_each_term_once_in_alphabetical_order():
    terms = [sort_key(row[0]) for row in glossary_rows()]
    assert len(set(terms)) == len(terms)
    assert terms == sorted(terms)
