"""The table on "How this book is tested", generated from the last `make test` run.

`make test` runs pytest with ``--book-report=_build/test-report.json`` (the hook is in conftest.py): for
each notebook, how many code cells strict nbval ran, how many of them are tagged
``nbval-ignore-output``, what failed, and how long the notebook took (kernel start to stop). This
module turns that report into a Markdown table, in two ways:

- as the directive ``{test-report}`` in book/testing.md, rendered by every build of the book (a
  Sphinx extension loaded from _config.yml); the page is rebuilt whenever the report changes;
- as a script, ``python _ext/report_table.py [REPORT]``, which prints the same table.

Without a report (a fresh clone that builds the book before testing it) the table says so and names
`make test`, and the build stays free of warnings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = Path("_build") / "test-report.json"
BOOK = Path("book")
NO_REPORT = (
    "No test report was found when this page was built: the table is generated from the report "
    "that `make test` writes to `_build/test-report.json`. Run `make test`, then `make book`."
)


def load_report(path: Path) -> dict | None:
    """The report `make test` wrote, or None when there is none (or it cannot be read)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def notebook_rows(report: dict, notebooks: list[str], link=lambda nb: f"`{nb}`") -> list[str]:
    """One Markdown row per notebook: cells, ignored outputs (count and share), seconds, result.

    ``notebooks`` lists every notebook of the book (paths relative to the repository), so one the
    last run skipped still gets a row. ``link`` renders a notebook's name.
    """
    ran = report.get("notebooks", {})
    rows = []
    for nb in sorted(set(notebooks) | set(ran)):
        entry = ran.get(nb)
        if entry is None:
            rows.append(f"| {link(nb)} | | | | not in the last run |")
            continue
        cells, ignored = entry.get("cells", 0), entry.get("ignored", 0)
        share = f"{ignored / cells:.0%}" if cells else "-"
        bad = {k: entry[k] for k in ("failed", "error") if entry.get(k)}
        result = ", ".join(f"{n} {k}" for k, n in bad.items()) if bad else "passed"
        rows.append(
            f"| {link(nb)} | {cells} | {ignored} ({share}) | {entry.get('seconds', 0):.0f} | {result} |"
        )
    return rows


def markdown(report: dict | None, notebooks: list[str], link=lambda nb: f"`{nb}`") -> str:
    """The table with a line naming the run it comes from, or the note that there is no report."""
    if report is None:
        return f":::{{note}}\n{NO_REPORT}\n:::\n"
    units = report.get("unit_tests", {})
    unit_line = ", ".join(f"{n} {outcome}" for outcome, n in sorted(units.items())) or "none run"
    header = (
        f"From the last `make test`, finished {report.get('finished', '?')} "
        f"(Python {report.get('python', '?')}, torch {report.get('torch', '?')}, "
        f"{report.get('machine', '?')}; pytest exit status {report.get('exit_status', '?')}). "
        f"Unit tests: {unit_line}.\n"
    )
    table = [
        "| Notebook | Code cells | Output ignored | Time (s) | Strict nbval |",
        "| :-- | --: | --: | --: | :-- |",
        *notebook_rows(report, notebooks, link),
    ]
    return header + "\n" + "\n".join(table) + "\n"


def book_notebooks(root: Path = ROOT) -> list[str]:
    return [p.relative_to(root).as_posix() for p in sorted((root / BOOK).glob("*.ipynb"))]


# --- the Sphinx directive ----------------------------------------------------------------------------


def setup(app):
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class TestReportDirective(SphinxDirective):
        """``{test-report}``: the table above, from ``_build/test-report.json`` under the book's root."""

        has_content = False

        def run(self) -> list:
            srcdir = Path(self.env.srcdir)
            path = srcdir / REPORT
            self.env.note_dependency(str(path))  # a new report rebuilds the page
            docs = self.env.found_docs

            def link(nb: str) -> str:
                doc = nb.removesuffix(".ipynb")
                return f"{{doc}}`/{doc}`" if doc in docs else f"`{nb}`"

            text = markdown(load_report(path), book_notebooks(srcdir), link)
            box = nodes.container(classes=["test-report"])
            self.state.nested_parse(StringList(text.splitlines(), source=str(path)), self.content_offset, box)
            return [box]

    app.add_directive("test-report", TestReportDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    report_path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / REPORT
    print(markdown(load_report(report_path), book_notebooks()), end="")
