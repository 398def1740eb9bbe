"""Two fixes to the rendered pages, loaded by `_config.yml` (`sphinx.local_extensions`).

- An inline script is written twice into every page's head when an extension adds it after the HTML
  builder started: Sphinx 7.4 (the last series Jupyter Book 1.x runs on) keeps it once as filename
  ``None`` and once as ``''``, which compare unequal (sphinx-doc/sphinx#13402, fixed in Sphinx 8.2).
  sphinx-thebe's ``const THEBE_JS_URL = ...`` then throws "Identifier 'THEBE_JS_URL' has already been
  declared" on every page, and sphinx-togglebutton's selector is set twice. Each script is kept once.
- The root page's heading is the book's name, so its ``<title>`` read "Name — Name": it reads "Name"
  (``templates/layout.html``, added to ``templates_path`` here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.application import Sphinx

TEMPLATES = Path(__file__).parent / "templates"


def _asset_key(script: Any) -> tuple:
    """What makes two ``<script>`` entries the same: file (``None`` == ``''``), priority, attributes."""
    return (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))


def drop_duplicate_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Keep the first of each identical script in the page's ``script_files`` (edited in place)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _asset_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def add_templates(app: Sphinx, config) -> None:
    """``templates/layout.html`` beside this file: the theme's layout with the root page's title once."""
    config.templates_path.append(str(TEMPLATES))


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", drop_duplicate_scripts)
    app.connect("config-inited", add_templates)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
