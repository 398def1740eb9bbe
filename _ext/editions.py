"""The book's two editions link each page to its translation: English at ``_build/html/``, Chinese (中文版) at
``_build/html/zh_CN/`` (``scripts/zh_edition.py``). Loaded by ``_config.yml`` (``sphinx.local_extensions``).

Every page gets a plain link in its header (``templates/edition-link.html``, no JavaScript) and a
``<link rel="alternate" hreflang=...>`` in its head, both to the same page in the other edition. The path is
relative, so the pair works wherever the site is served from.
"""

from __future__ import annotations

from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.locale import init as init_locale
from sphinx.util.i18n import docname_to_domain

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"  # editions.css: the link in one row with the header buttons
CHINESE = "zh_CN"  # the Chinese edition's language, and its folder inside the English build
EDITIONS = {  # the other edition of a page in this language: (its hreflang, its label, its title)
    "en": ("zh-CN", "中文", "本页的中文版"),
    CHINESE: ("en", "English", "This page in English"),
}


def edition_href(pagename: str, language: str) -> str:
    """The relative URL of ``pagename`` in the other edition, seen from ``pagename`` in ``language``.

    English ``book/01_concepts`` links to ``../zh_CN/book/01_concepts.html``; the Chinese page links back
    to ``../../book/01_concepts.html``.
    """
    up = "../" * pagename.count("/")
    if language == CHINESE:
        return f"../{up}{pagename}.html"
    return f"{up}{CHINESE}/{pagename}.html"


def add_edition_link(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Put ``edition_link`` (href, hreflang, label, title) in the page's context, and its ``<link>`` in the head."""
    language = app.config.language if app.config.language == CHINESE else "en"
    hreflang, label, title = EDITIONS[language]
    href = edition_href(pagename, language)
    context["edition_link"] = {"href": href, "hreflang": hreflang, "label": label, "title": title}
    context["metatags"] = (
        context.get("metatags", "") + f'\n<link rel="alternate" hreflang="{hreflang}" href="{href}" />'
    )


def add_header_item(app: Sphinx, config) -> None:
    """The link goes first in the article's header, before the theme's buttons (on phones too)."""
    if str(TEMPLATES) not in config.templates_path:
        config.templates_path.append(str(TEMPLATES))
    if str(STATIC) not in config.html_static_path:
        config.html_static_path.append(str(STATIC))
    options = dict(config.html_theme_options or {})
    end = options.get("article_header_end") or ["article-header-buttons.html"]
    if isinstance(end, str):
        end = [end]
    options["article_header_end"] = ["edition-link.html", *[t for t in end if t != "edition-link.html"]]
    config.html_theme_options = options


def translate_toctree_captions(app: Sphinx, doctree: nodes.document) -> None:
    """Translate the chapter list's part captions ("Foundations", ...) from the root page's catalogue.

    sphinx-external-toc inserts the toctrees after Sphinx's own translation pass, so their captions, which the
    gettext builder does extract, would stay in English in the sidebar of every translated page.
    """
    if not app.config.language or app.config.language == "en":
        return
    domain = docname_to_domain(app.env.docname, app.config.gettext_compact)
    dirs = [str(Path(app.srcdir, d)) for d in app.config.locale_dirs]
    catalog, has_catalog = init_locale(dirs, app.config.language, domain)
    if not has_catalog:
        return
    for toctree in doctree.findall(addnodes.toctree):
        if toctree.get("caption"):
            toctree["caption"] = catalog.gettext(toctree["caption"])


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", add_header_item)
    app.add_css_file("editions.css")
    app.connect("doctree-read", translate_toctree_captions)
    app.connect("html-page-context", add_edition_link)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
