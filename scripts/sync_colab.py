#!/usr/bin/env python3
"""Rewrite every chapter's Colab install cell from the repository URL in ``_config.yml``.

A fork changes one line (``repository.url`` in ``_config.yml``) and runs::

    python scripts/sync_colab.py

The install cell is the first code cell of each ``book/*.ipynb``; it installs the companion
package only when the notebook runs in Google Colab. ``tests/test_notebooks.py`` fails when
a notebook's cell differs from :func:`install_cell_source`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
MARKER = "# Colab only: install the book's companion package"


def repository_url(config: Path = ROOT / "_config.yml") -> str:
    """The ``repository: url:`` value of the book's ``_config.yml``."""
    match = re.search(r"^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:\s*(\S+)", config.read_text(), re.M)
    if not match:
        raise ValueError(f"{config} has no 'repository: url:' entry; add the book's repository URL there")
    return match.group(1).strip("'\"")


def install_cell_source(url: str) -> str:
    """The source of the first code cell of every chapter."""
    return (
        f"{MARKER} (elsewhere: pip install -e . from the repository).\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+{url}"], check=True)'
    )


def first_code_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for cell in nb.cells:
        if cell.cell_type == "code":
            return cell
    raise ValueError("notebook has no code cell")


def main() -> int:
    source = install_cell_source(repository_url())
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cell = first_code_cell(nb)
        if cell.source != source:
            if not cell.source.startswith(MARKER):
                raise SystemExit(f"{path}: the first code cell is not the Colab install cell; add one")
            cell.source = source
            nbformat.write(nb, path)
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
