"""The Chinese edition (中文版): the same book, its prose translated through Sphinx's gettext catalogues.

The code, outputs and figures are the English edition's (the committed notebooks that `make test` proves);
only the prose differs, read from ``locales/zh_CN/LC_MESSAGES/<document>.po``. The English build reads
``_config.yml`` alone; the Chinese one reads it too, with the few overrides in ``ZH_OVERRIDES`` on top, so the
two cannot drift apart.

    python scripts/zh_edition.py build     # _build/html/zh_CN/, beside the English _build/html/
    python scripts/zh_edition.py extract   # _build/gettext/*.pot, then merge them into locales/zh_CN (sphinx-intl)

After ``extract``, a changed English paragraph is a fuzzy or empty message in its ``.po`` file, and
``tests/test_translation.py`` fails until it is translated.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LANGUAGE = "zh_CN"
LOCALES = ROOT / "locales"
BUILD = ROOT / "_build"
HTML_ZH = BUILD / "html" / LANGUAGE  # the English edition is _build/html
GETTEXT = BUILD / "gettext"
TITLE_ZH = "更快更好地训练 PyTorch 模型"

# Settings both builds share (extraction and the Chinese edition): one catalogue per document.
I18N = {"locale_dirs": ["locales"], "gettext_compact": False, "gettext_uuid": False, "gettext_location": True}

ZH_OVERRIDES = {
    **I18N,
    "language": LANGUAGE,
    "html_title": TITLE_ZH,
    "nitpicky": True,  # as the English build (-n)
    # each document's catalogue is read from locales/zh_CN/LC_MESSAGES/<docname>.po (compiled to .mo by Sphinx)
}


def build(builder: str, out: Path, doctrees: Path, overrides: dict) -> int:
    """Run Jupyter Book 1.x's Sphinx build on the whole book with ``_config.yml`` plus ``overrides``."""
    from jupyter_book.sphinx import build_sphinx

    return build_sphinx(
        ROOT,
        out,
        noconfig=True,
        path_config=str(ROOT / "_config.yml"),
        confoverrides={
            "external_toc_path": (ROOT / "_toc.yml").as_posix(),
            "latex_individualpages": False,
            **overrides,
        },
        doctreedir=doctrees,
        builder=builder,
        warningiserror=True,
        keep_going=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["build", "extract"])
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.action == "build":
        status = build("html", HTML_ZH, BUILD / f".doctrees-{LANGUAGE}", ZH_OVERRIDES)
        print(f"zh_edition: built {HTML_ZH.relative_to(ROOT)} in {time.monotonic() - started:.0f} s")
        return int(bool(status))
    status = build("gettext", GETTEXT, BUILD / ".doctrees-gettext", I18N)
    if status:
        return 1
    update = [sys.executable, "-m", "sphinx_intl", "update", "-p", str(GETTEXT), "-d", str(LOCALES)]
    subprocess.run([*update, "-l", LANGUAGE, "-w", "0"], check=True)
    print(f"zh_edition: catalogues updated under {LOCALES.relative_to(ROOT)}/{LANGUAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
