"""The Chinese edition's catalogues (locales/zh_CN/LC_MESSAGES/<document>.po, scripts/zh_edition.py).

A translated document must stay translated: when its English text changes, `make translations` turns the
changed paragraph into an empty or fuzzy message, and the test below names it. A translation must keep the
code, math, roles and link targets of its English message, span for span, so that it cannot break the code
or the build. Documents not yet translated are listed in PENDING, each reported as a skip with its count.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import polib
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CATALOGUES = ROOT / "locales" / "zh_CN" / "LC_MESSAGES"

# Every message of these documents must be translated and none fuzzy.
TRANSLATED = [
    "book/intro",
    "book/01_concepts",
    "book/02_optimizers",
    "book/03_losses",
    "book/04_mse_derivation",
    "book/05_data_loading",
    "book/06_training_loop",
    "book/appendix_errata",
    "book/appendix_glossary",
    "book/09_debugging",
    "book/testing",
    "book/07_speed",
    "book/08_accuracy",
    "book/10_distributed",
    "book/appendix_cheatsheet",
]
# Translated once the issues that change them have landed (issue 19): move each to TRANSLATED when done.
PENDING: list[str] = []

CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")  # ideographs and CJK punctuation
LATEX = re.compile(r"\\[A-Za-z]+")
CODE = re.compile(r"(?:\{[\w:-]+\})?(`+)(.+?)\1", re.S)  # a code span, or a role with its target ({ref}`x`)
DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)
INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$")
LINK_TARGET = re.compile(r"\]\(([^)\s]+)\)")
ENGLISH_PHRASE = re.compile(r"[A-Za-z]{2,}(?: [A-Za-z]{2,}){3,}")


def documents_in_toc() -> list[str]:
    """Every document of _toc.yml: the root and each chapter of each part."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf8"))
    return [toc["root"], *(c["file"] for part in toc["parts"] for c in part["chapters"])]


def catalogue(document: str) -> polib.POFile:
    path = CATALOGUES / f"{document}.po"
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: run `make translations`")
    return polib.pofile(str(path))


def display_math(msgid: str) -> bool:
    """A math block's message (LaTeX, kept as it is, `\\text{...}` included): commands, no `$`, no markdown."""
    return bool(LATEX.search(msgid)) and "$" not in msgid and "`" not in msgid and "**" not in msgid


def english_left(msgid: str, msgstr: str) -> bool:
    """A translation with no Chinese whose prose, outside its code spans and roles, holds an English phrase.

    A message that is only code (a quoted line of the article's code) stays as it is, and so does a math block.
    """
    prose = CODE.sub(" ", msgstr)
    return not CJK.search(msgstr) and bool(ENGLISH_PHRASE.search(prose)) and not display_math(msgid)


def glossary_english_terms() -> set[str]:
    """The glossary table's English column: the Chinese edition keeps these terms in English, beside its Chinese."""
    lines = (ROOT / "book" / "appendix_glossary.md").read_text(encoding="utf8").splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| ---")]
    return {row.removeprefix("| ").split(" | ")[0].strip() for row in rows}


def markup(text: str) -> Counter:
    """The spans a translation must keep as they are: code spans and roles, $math$, $$math$$, link targets."""
    spans: Counter = Counter()
    for match in CODE.finditer(text):
        spans[f"code {match.group(0)}"] += 1
    text = CODE.sub(" ", text)
    for match in DISPLAY_MATH.finditer(text):
        spans[f"math $${match.group(1).strip()}$$"] += 1
    text = DISPLAY_MATH.sub(" ", text)
    for match in INLINE_MATH.finditer(text):
        spans[f"math ${match.group(1)}$"] += 1
    for match in LINK_TARGET.finditer(text):
        spans[f"link ({match.group(1)})"] += 1
    return spans


def test_every_document_of_the_book_has_a_catalogue_and_a_status():
    documents = documents_in_toc()
    assert sorted(TRANSLATED + PENDING) == sorted(documents), "each document is TRANSLATED or PENDING, once"
    missing = [d for d in documents if not (CATALOGUES / f"{d}.po").exists()]
    assert not missing, f"no catalogue for {missing}: run `make translations`"


@pytest.mark.parametrize("document", TRANSLATED)
def test_translated_document_has_no_untranslated_or_fuzzy_message(document):
    po = catalogue(document)
    assert len(po) > 0, f"{document}.po holds no message"
    left = [e.msgid[:70] for e in po if not e.msgstr or "fuzzy" in e.flags or e.obsolete]
    assert not left, f"{document}: {len(left)} of {len(po)} messages untranslated or fuzzy, first: {left[:3]}"


@pytest.mark.parametrize("document", TRANSLATED)
def test_translated_document_reads_in_chinese(document):
    kept = glossary_english_terms() if document == "book/appendix_glossary" else set()
    copied = [
        e.msgid[:70]
        for e in catalogue(document)
        if english_left(e.msgid, e.msgstr) and not (e.msgstr == e.msgid and e.msgid in kept)
    ]
    assert not copied, f"{document}: English prose left in msgstr: {copied[:3]}"


@pytest.mark.parametrize("document", PENDING)
def test_pending_document_is_reported(document):
    po = catalogue(document)
    done = len(po.translated_entries())
    pytest.skip(f"{document}: translation pending ({done} of {len(po)} messages translated)")


@pytest.mark.parametrize("document", TRANSLATED + PENDING)
def test_translation_keeps_code_math_roles_and_link_targets(document):
    broken = []
    for entry in catalogue(document):
        if entry.msgstr and markup(entry.msgid) != markup(entry.msgstr):
            lost = markup(entry.msgid) - markup(entry.msgstr)
            added = markup(entry.msgstr) - markup(entry.msgid)
            broken.append(f"{entry.msgid[:50]!r}: lost {sorted(lost)}, added {sorted(added)}")
    assert not broken, f"{document}: {len(broken)} messages change their markup: {broken[:3]}"


def test_markup_check_sees_a_changed_code_span_math_role_or_link():
    english = "Call `model.train()` before {ref}`loops`; the loss is $\\ell(x)$, see [it](03_losses.ipynb)."
    kept = "训练前先调用 `model.train()`（见 {ref}`loops`）；损失为 $\\ell(x)$，参见[这里](03_losses.ipynb)。"
    assert markup(english) == markup(kept)
    for broken in (
        kept.replace("`model.train()`", "`model.train`"),
        kept.replace("{ref}", "{doc}"),
        kept.replace("$\\ell(x)$", "$\\ell (x)$"),
        kept.replace("(03_losses.ipynb)", "(04_mse_derivation.ipynb)"),
        kept.replace("`model.train()`", "model.train()"),
    ):
        assert markup(english) != markup(broken), broken


def test_english_check_passes_a_code_only_message_and_catches_english_prose_beside_code():
    code = "`for epoch in range(num_epochs):`"
    assert not english_left(code, code)
    assert english_left("The loop runs over the data", "The loop runs over the data")
    assert english_left(
        "Call `model.train()` before the loop starts", "Call `model.train()` before the loop starts"
    )
    assert not english_left("Call `model.train()` first", "先调用 `model.train()`")


def test_glossary_keeps_only_its_english_column_in_english():
    terms = glossary_english_terms()
    assert {"Ablation", "Fully Sharded Data Parallel (FSDP)", "`DataLoader`"} <= terms
    assert "消融实验" not in terms
    assert (
        "Changing one thing at a time against a fixed baseline, and measuring each change the same way"
        not in terms
    )
