"""The built book in a real browser: `make test-site` (after `jupyter-book build`).

Serves the built HTML on 127.0.0.1 and drives Debian's Chromium through its ChromeDriver
(/usr/bin/chromium, /usr/bin/chromedriver; Selenium never downloads a browser or a driver here:
SE_OFFLINE is set and both paths are given). Chromium resolves no host name, so a page that needed
the network would fail to load a resource and show up as a console error.

Every page is visited at a desktop width (1400 px) and a phone width (400 px) and checked for:

- console errors (both widths);
- the ☰ button: at desktop width it hides and shows the chapter list; at phone width it opens the
  chapter list, and the page-contents button opens the page's sections;
- typeset math: every formula is rendered by MathJax without error, and no raw ``$$`` or stray ``$``
  is left in the text;
- images (every solution toggle opened): each one loads, is shown at >= 70 % of its natural width,
  and has alt text that describes it (Sphinx's default alt text is the file's path, which does not);
- text outputs: no line wider than the column (a block that scrolls sideways is one too wide);
- chapter pages (the notebooks): a Colab button whose link opens that chapter's notebook under
  book/ on the configured branch;
- the site's furniture: the favicon and the logo load, the <title> names the book once, and no
  inline script is written twice.

Then the search page must find "AdamW". Screenshots of the intro and of one chapter go to
``<build>/../screenshots/``. Prints the number of pages and checks; exits 1 with the failures listed
per page.

    python site_tests/check_site.py [--html _build/html] [--only PAGE ...]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DESKTOP, PHONE = 1400, 400
HEIGHT = 900
MIN_SHOWN_FRACTION = 0.70
SEARCH_TERM, SEARCH_EXPECTS = "AdamW", "02_optimizers"
SCREENSHOT_PAGES = {
    "book/intro.html": "intro",
    "book/02_optimizers.html": "chapter-02",
    "zh_CN/book/01_concepts.html": "zh-chapter-01",
}
SKIPPED_PAGES = {"index.html", "genindex.html", "search.html"}  # a redirect, an empty index, the search
# The Chinese edition (scripts/zh_edition.py) lives in <build>/zh_CN; its pages are checked where their
# catalogue is complete (the others still read in English), with its own title and a few checks of its own.
ZH = "zh_CN/"
ZH_TITLE = "更快更好地训练 PyTorch 模型"
ZH_CATALOGUES = ROOT / "locales" / "zh_CN" / "LC_MESSAGES"
ZH_SEARCH_TERM = "优化器"
MIN_CJK_SHARE = 0.3  # of the letters in a translated page's prose (code and outputs left out)

# --- JavaScript run in the page -------------------------------------------------------------------------

# Waits (async) for MathJax to finish typesetting, where the page loads it.
WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
const loads = document.querySelector('script[src*="mathjax"]');
if (!loads) { done('no MathJax on this page'); return; }
const start = Date.now();
(function poll() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done('typeset'), e => done('MathJax failed: ' + e));
  } else if (Date.now() - start > 20000) {
    done('MathJax never started');
  } else { setTimeout(poll, 100); }
})();
"""

MATH_REPORT = """
const article = document.querySelector('article') || document.body;
const formulas = Array.from(article.querySelectorAll('.math'));
const untypeset = formulas.filter(m => !m.querySelector('mjx-container') && !m.closest('mjx-container'))
  .map(m => m.textContent.trim().slice(0, 60));
const errors = Array.from(article.querySelectorAll('mjx-merror')).map(e => e.textContent.slice(0, 60));
const skip = 'pre, code, kbd, samp, script, style, mjx-container, .math, .cell_output, .output, .highlight';
const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
const dollars = [];
while (walker.nextNode()) {
  const node = walker.currentNode;
  if (!node.textContent.includes('$') || node.parentElement.closest(skip)) continue;
  const text = node.textContent, i = text.indexOf('$');
  dollars.push(text.slice(Math.max(0, i - 30), i + 30).replace(/\\s+/g, ' '));
}
return {formulas: formulas.length, untypeset, errors, dollars};
"""

OPEN_ALL_TOGGLES = "document.querySelectorAll('details').forEach(d => d.open = true);"

# The heading of the section an element is in, to tell the chapter's author where it is.
SECTION_OF = """
const sectionOf = el => {
  const h = el.closest('section')?.querySelector('h1, h2, h3, h4');
  return h ? h.textContent.replace(/[#\u00b6]/g, '').trim().slice(0, 50) : '?';
};
"""

IMAGE_REPORT = (
    SECTION_OF
    + """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.querySelectorAll('article img'));
Promise.all(imgs.map(img => img.complete ? null : new Promise(r => {
  img.addEventListener('load', r); img.addEventListener('error', r); setTimeout(r, 10000); })))
.then(() => done(imgs.map(img => {
  const r = img.getBoundingClientRect();
  return {src: img.getAttribute('src'), alt: img.getAttribute('alt'), loaded: img.complete && img.naturalWidth > 0,
          natural: img.naturalWidth, shown: Math.round(r.width), displayed: img.offsetParent !== null,
          section: sectionOf(img)};
})));
"""
)

ALT_OUTSIDE_ARTICLE = """
return Array.from(document.images).filter(img => !img.closest('article'))
  .map(img => ({src: img.getAttribute('src'), alt: img.getAttribute('alt')}));
"""

OUTPUT_REPORT = (
    SECTION_OF
    + """
const blocks = Array.from(document.querySelectorAll('article .cell_output pre, article .output pre'));
return blocks.filter(pre => pre.offsetParent !== null).map(pre => {
  const lines = pre.textContent.split('\\n');
  const longest = lines.reduce((a, b) => b.length > a.length ? b : a, '');
  return {scroll: pre.scrollWidth, client: pre.clientWidth, chars: longest.length, line: longest.slice(0, 40),
          section: sectionOf(pre)};
});
"""
)

FETCH_STATUS = """
const done = arguments[arguments.length - 1];
const link = document.querySelector(arguments[0]);
if (!link) { done('no <link rel="icon"> in the head'); return; }
fetch(link.href).then(r => done(r.status), e => done(String(e)));
"""

LOGO_LOADED = """
const logo = document.querySelector('img.logo__image');
if (!logo) return 'no logo image';
return logo.complete && logo.naturalWidth > 0 ? true : 'did not load: ' + logo.getAttribute('src');
"""

# The link to the same page in the other edition (_ext/editions.py), where it leads, and the page's language.
EDITION_LINK = """
const done = arguments[arguments.length - 1];
const a = document.querySelector('a.edition-link');
if (!a) { done({error: 'no link to the other edition'}); return; }
fetch(a.href).then(r => done({href: a.href, status: r.status, shown: a.offsetParent !== null}),
                   e => done({href: a.href, status: String(e)}));
"""

# How much of the prose is Chinese: CJK characters among the letters, code and outputs left out.
CJK_SHARE = """
const article = (document.querySelector('article') || document.body).cloneNode(true);
article.querySelectorAll('pre, code, .cell_output, .output, mjx-container, .math, script, style')
  .forEach(e => e.remove());
const text = article.textContent;
const cjk = (text.match(/[\u4e00-\u9fff]/g) || []).length;
const latin = (text.match(/[A-Za-z]/g) || []).length;
return {cjk, latin, lang: document.documentElement.lang};
"""

INLINE_SCRIPTS_TWICE = """
const bodies = Array.from(document.querySelectorAll('script:not([src]):not([type])'))
  .map(s => s.textContent.trim()).filter(t => t);
return bodies.filter((t, i) => bodies.indexOf(t) !== i).map(t => t.slice(0, 60));
"""

PRIMARY_SIDEBAR_SHOWN = """
const s = document.querySelector('#pst-primary-sidebar');
if (!s) return false;
const r = s.getBoundingClientRect();
return getComputedStyle(s).visibility !== 'hidden' && r.width > 0 && r.right > 0;
"""


# --- Running -------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Counts every check and keeps the failed ones, grouped by page."""

    checks: int = 0
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def check(self, page: str, ok: bool, what: str) -> bool:
        self.checks += 1
        if not ok:
            self.failures[page].append(what)
        return ok

    @property
    def failed(self) -> int:
        return sum(len(v) for v in self.failures.values())


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


def serve(html: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``html`` on 127.0.0.1 at a free port; returns the server and its base URL."""
    handler = functools.partial(QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def start_chromium(profile: str) -> webdriver.Chrome:
    """Headless Debian Chromium that reaches 127.0.0.1 only and keeps its console log."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"{path} is missing: install Debian's chromium and chromium-driver packages")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a browser or driver to download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # we run as root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--disable-extensions",
        "--force-device-scale-factor=1",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """The SEVERE console entries since the last call (reading the log empties it)."""
    return [e["message"][:200] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def visible(driver: webdriver.Chrome, css: str) -> list:
    return [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]


def wait_until(driver: webdriver.Chrome, condition, seconds: float = 5) -> bool:
    try:
        WebDriverWait(driver, seconds, poll_frequency=0.1).until(lambda d: condition(d))
        return True
    except TimeoutException:
        return False


def in_viewport(element) -> bool:
    r = element.rect
    return element.is_displayed() and r["width"] > 0 and r["x"] >= 0 and r["x"] + r["width"] <= PHONE + 1


def load(driver: webdriver.Chrome, url: str, width: int) -> None:
    driver.set_window_size(width, HEIGHT)
    driver.get_log("browser")  # drop what an earlier page logged
    driver.execute_script("try { localStorage.clear(); } catch (e) {}")
    driver.get(url)
    wait_until(driver, lambda d: d.execute_script("return document.readyState") == "complete", 20)


# --- Checks ----------------------------------------------------------------------------------------------


def describes(alt: str | None, src: str | None) -> bool:
    """Alt text that says something: not missing, empty, or the file's path (Sphinx's default)."""
    if not alt or not alt.strip():
        return False
    name = (src or "").rsplit("/", 1)[-1]
    return not (name and name in alt) and not alt.strip().lower().endswith((".png", ".svg", ".jpg", ".jpeg"))


class SiteCheck:
    """One browser session over the served book; each ``check_*`` method adds its checks to ``report``."""

    def __init__(self, driver: webdriver.Chrome, base: str, config: dict, screenshots: Path) -> None:
        self.driver, self.base, self.config, self.screenshot_dir = driver, base, config, screenshots
        self.report = Report()
        self.screenshots: list[Path] = []
        self.book_title = config["title"]
        self.html: Path | None = None  # the built site, to tell whether a page's translation was built

    def check(self, page: str, ok: bool, what: str) -> bool:
        return self.report.check(page, ok, what)

    def screenshot(self, page: str, suffix: str) -> None:
        if page not in SCREENSHOT_PAGES:
            return
        path = self.screenshot_dir / f"{SCREENSHOT_PAGES[page]}-{suffix}.png"
        self.driver.execute_script("window.scrollTo({top: 0, behavior: 'instant'})")
        self.driver.save_screenshot(str(path))
        self.screenshots.append(path)

    def no_console_errors(self, page: str, width: int) -> None:
        errors = console_errors(self.driver)
        self.check(page, not errors, f"console errors at {width} px: {errors}")

    # -- a whole page, at both widths

    def page(self, page: str) -> None:
        d = self.driver
        load(d, self.base + page, DESKTOP)
        self.furniture(page)
        self.edition(page)
        self.math(page)
        self.desktop_toggle(page)
        if (expected := colab_link(page.removeprefix(ZH), self.config)) is not None:
            self.colab(page, expected)
        self.screenshot(page, "desktop")
        d.execute_script(OPEN_ALL_TOGGLES)
        self.images(page)
        self.outputs(page)
        self.no_console_errors(page, DESKTOP)

        load(d, self.base + page, PHONE)
        self.screenshot(page, "phone")
        self.phone_toggles(page)
        self.no_console_errors(page, PHONE)

    # -- the checks

    def furniture(self, page: str) -> None:
        """The favicon and the logo load; the title names the book once; no inline script twice."""
        d = self.driver
        icon = d.execute_async_script(FETCH_STATUS, "link[rel~='icon']")
        self.check(page, icon == 200, f"favicon: {icon}")
        logo = d.execute_script(LOGO_LOADED)
        self.check(page, logo is True, f"logo: {logo}")
        title, book_title = d.title, ZH_TITLE if page.startswith(ZH) else self.book_title
        self.check(
            page,
            title.count(book_title) == 1,
            f"<title> names the book {title.count(book_title)} times: {title!r}",
        )
        twice = d.execute_script(INLINE_SCRIPTS_TWICE)
        self.check(page, not twice, f"inline scripts written twice: {twice}")

    def edition(self, page: str) -> None:
        """The link to this page's translation is shown and leads to it; a Chinese page is zh-CN and reads in
        Chinese (a CJK share of its prose's letters), an English page is en."""
        d, chinese = self.driver, page.startswith(ZH)
        other = page.removeprefix(ZH) if chinese else ZH + page
        if self.html is not None and not (self.html / other).exists():
            return  # the Chinese edition was not built (jupyter-book build alone)
        link = d.execute_async_script(EDITION_LINK)
        if not self.check(page, "error" not in link, f"edition: {link.get('error')}"):
            return
        self.check(page, link["shown"], "edition: the link to the other edition is hidden")
        self.check(
            page,
            link["status"] == 200 and link["href"] == self.base + other,
            f"edition: the link leads to {link['href']} ({link['status']}), expected {self.base + other}",
        )
        share = d.execute_script(CJK_SHARE)
        if not chinese:
            self.check(page, share["lang"] == "en", f"edition: <html lang={share['lang']!r}>, expected 'en'")
            return
        self.check(
            page, share["lang"] == "zh-CN", f"edition: <html lang={share['lang']!r}>, expected 'zh-CN'"
        )
        letters = share["cjk"] + share["latin"]
        self.check(
            page,
            letters > 0 and share["cjk"] / letters >= MIN_CJK_SHARE,
            f"edition: the prose is {share['cjk']} CJK characters and {share['latin']} Latin letters, "
            f"under {MIN_CJK_SHARE:.0%} Chinese",
        )

    def math(self, page: str) -> None:
        d = self.driver
        status = d.execute_async_script(WAIT_FOR_MATHJAX)
        math = d.execute_script(MATH_REPORT)
        if math["formulas"]:
            self.check(page, status == "typeset", f"math: {status}")
        untypeset = math["untypeset"]
        self.check(
            page, not untypeset, f"math: {len(untypeset)} formulas not typeset, first: {untypeset[:1]}"
        )
        self.check(page, not math["errors"], f"math: MathJax errors {math['errors'][:3]}")
        text = d.execute_script("return (document.querySelector('article') || document.body).innerText")
        self.check(page, "$$" not in text, "math: raw $$ in the page text")
        self.check(page, not math["dollars"], f"math: stray $ in text: {math['dollars'][:3]}")

    def images(self, page: str) -> None:
        """Every image in the article (every toggle open): alt text, loaded, shown at >= 70 %."""
        for i, img in enumerate(self.driver.execute_async_script(IMAGE_REPORT), 1):
            name = f"image {i} (section {img['section']!r})"
            self.check(page, describes(img["alt"], img["src"]), f"{name}: no alt text")
            if not self.check(page, img["loaded"], f"{name}: did not load"):
                continue
            if not self.check(page, img["displayed"], f"{name}: not displayed even with every toggle open"):
                continue
            fraction = img["shown"] / img["natural"]
            self.check(
                page,
                fraction >= MIN_SHOWN_FRACTION,
                f"{name}: shown at {fraction:.0%} of its natural width ({img['shown']} of {img['natural']} px)",
            )
        for img in self.driver.execute_script(ALT_OUTSIDE_ARTICLE):
            self.check(page, describes(img["alt"], img["src"]), f"image {img['src']}: no alt text")

    def outputs(self, page: str) -> None:
        """No text output scrolls sideways: each line fits the column."""
        for i, out in enumerate(self.driver.execute_script(OUTPUT_REPORT), 1):
            self.check(
                page,
                out["scroll"] <= out["client"] + 1,
                f"text output {i} (section {out['section']!r}): {out['scroll']} px wide in a "
                f"{out['client']} px column; longest line {out['chars']} chars: {out['line']!r}...",
            )

    def colab(self, page: str, expected: str) -> None:
        """A chapter's launch menu holds a Colab button that opens the chapter's own notebook."""
        d = self.driver
        links = d.find_elements(By.CSS_SELECTOR, 'a[href*="colab.research.google.com"]')
        hrefs = [a.get_attribute("href") for a in links]
        if not self.check(page, expected in hrefs, f"Colab: no button linking to {expected} (found {hrefs})"):
            return
        buttons = visible(d, ".dropdown-launch-buttons button")
        if not self.check(page, bool(buttons), "Colab: the launch (rocket) button is not shown"):
            return
        buttons[0].click()
        colab = links[hrefs.index(expected)]
        self.check(
            page, wait_until(d, lambda _: colab.is_displayed()), "Colab: the launch menu does not show it"
        )
        buttons[0].click()

    def desktop_toggle(self, page: str) -> None:
        """☰ at desktop width hides the chapter list, and a second click shows it again."""
        d = self.driver
        buttons = visible(d, ".primary-toggle")
        if not self.check(
            page, len(buttons) == 1, f"☰: {len(buttons)} visible buttons at {DESKTOP} px, expected 1"
        ):
            return
        shown = d.execute_script(PRIMARY_SIDEBAR_SHOWN)
        self.check(page, shown, "☰: the chapter list is not shown at desktop width")
        buttons[0].click()
        moved = wait_until(d, lambda _: d.execute_script(PRIMARY_SIDEBAR_SHOWN) != shown)
        self.check(page, moved, "☰: does nothing at desktop width")
        buttons[0].click()
        wait_until(d, lambda _: d.execute_script(PRIMARY_SIDEBAR_SHOWN) == shown)

    def phone_toggles(self, page: str) -> None:
        """At phone width ☰ opens the chapter list, the page-contents button the page's sections."""
        d = self.driver
        other = "02_optimizers.html" if page.endswith("01_concepts.html") else "01_concepts.html"
        chapters = f'.bd-sidebar-primary a[href$="{other}"]'
        if self.opens(page, ".primary-toggle", chapters, "☰", "the chapter list"):
            self.screenshot(page, "phone-menu")
        self.close_with_escape(page, "the chapter list")
        if d.execute_script("return !!document.querySelector('#pst-page-toc-nav a, .bd-toc-nav a')"):
            sections = ".bd-sidebar-secondary a, dialog .bd-toc-nav a, dialog #pst-page-toc-nav a"
            self.opens(page, ".secondary-toggle", sections, "page contents", "the page's sections")
            self.close_with_escape(page, "the page's sections")

    def opens(self, page: str, button: str, links: str, name: str, what: str) -> bool:
        """Clicking the one visible ``button`` shows one of ``links`` inside the phone's screen."""
        d = self.driver
        buttons = visible(d, button)
        if not self.check(
            page, len(buttons) == 1, f"{name}: {len(buttons)} visible buttons at {PHONE} px, expected 1"
        ):
            return False
        buttons[0].click()
        opened = wait_until(d, lambda _: any(in_viewport(a) for a in d.find_elements(By.CSS_SELECTOR, links)))
        return self.check(page, opened, f"{name}: does not open {what} at {PHONE} px")

    def close_with_escape(self, page: str, what: str) -> None:
        """Escape closes an open sidebar (closed by script otherwise, so the next check can click)."""
        d = self.driver
        if not d.find_elements(By.CSS_SELECTOR, "dialog[open]"):
            return
        ActionChains(d).send_keys(Keys.ESCAPE).perform()
        closed = wait_until(d, lambda _: not d.find_elements(By.CSS_SELECTOR, "dialog[open]"))
        self.check(page, closed, f"Escape does not close {what} at {PHONE} px")
        if not closed:
            d.execute_script("document.querySelectorAll('dialog[open]').forEach(x => x.close())")

    def search(self, prefix: str = "", term: str = SEARCH_TERM) -> None:
        """The search page (client-side JavaScript) finds the term and lists the chapter about it."""
        page, d = f"{prefix}search.html", self.driver
        load(d, f"{self.base}{page}?q={term}", DESKTOP)
        results = "#search-results ul.search li a"
        found = wait_until(d, lambda _: d.find_elements(By.CSS_SELECTOR, results), 60)
        hrefs = [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, results)]
        self.check(page, found, f"search: no results for {term!r} within 60 s")
        self.check(
            page,
            any(SEARCH_EXPECTS in h for h in hrefs),
            f"search: {term!r} does not find {SEARCH_EXPECTS} ({len(hrefs)} results)",
        )
        self.no_console_errors(page, DESKTOP)


# --- The book --------------------------------------------------------------------------------------------


def pages(html: Path) -> list[str]:
    """Every page of the book, as paths relative to the build (the search page is checked on its own), and
    each page of the Chinese edition whose catalogue is complete."""
    skip = ("_static/", "_sources/", "_images/", ZH)
    found = [p.relative_to(html).as_posix() for p in sorted(html.rglob("*.html"))]
    english = [p for p in found if p not in SKIPPED_PAGES and not p.startswith(skip)]
    return english + [ZH + p for p in english if (html / ZH / p).exists() and translated(p)]


def translated(page: str) -> bool:
    """Whether every message of the page's catalogue is translated (none empty, none fuzzy)."""
    import polib

    path = (ZH_CATALOGUES / page).with_suffix(".po")
    if not path.exists():
        return False
    po = polib.pofile(str(path))
    return len(po) > 0 and not po.untranslated_entries() and not po.fuzzy_entries()


def colab_link(page: str, config: dict) -> str | None:
    """The Colab URL a chapter page must offer, or None for a page that is not a notebook."""
    source = (ROOT / page).with_suffix(".ipynb")
    if not source.exists():
        return None
    repo = urlparse(config["repository"]["url"]).path.strip("/")
    base = config["launch_buttons"]["colab_url"].rstrip("/")
    book_path = (config["repository"].get("path_to_book") or "").strip("/")
    notebook = "/".join(p for p in (book_path, source.relative_to(ROOT).as_posix()) if p)
    return f"{base}/github/{repo}/blob/{config['repository']['branch']}/{notebook}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html", help="the built book")
    parser.add_argument("--only", nargs="*", help="check only these pages (e.g. book/intro.html), no search")
    args = parser.parse_args(argv)
    html = args.html.resolve()
    if not (html / "search.html").exists():
        raise SystemExit(f"no built book at {html}: run `jupyter-book build .` first")
    screenshots = html.parent / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    todo = args.only or pages(html)

    started = time.monotonic()
    server, base = serve(html)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        driver = start_chromium(profile)
        site = SiteCheck(driver, base, config, screenshots)
        site.html = html
        try:
            for page in todo:
                try:
                    site.page(page)
                except WebDriverException as e:
                    site.check(page, False, f"the browser failed on this page: {e.msg}")
            if not args.only:
                site.search()
                if (html / ZH / "search.html").exists() and translated("book/02_optimizers.html"):
                    site.search(ZH, ZH_SEARCH_TERM)
        finally:
            driver.quit()
            server.shutdown()

    report = site.report
    searched = "" if args.only else ", then the search page"
    print(
        f"site: {len(todo)} pages at {DESKTOP} and {PHONE} px{searched}: {report.checks} checks "
        f"in {time.monotonic() - started:.0f} s"
    )
    for path in site.screenshots:
        print(f"screenshot: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    for page, failures in sorted(report.failures.items()):
        print(f"\nFAILED {page} ({len(failures)}):")
        for failure in failures:
            print(f"  - {failure}")
    pages_checked = len(todo) + (0 if args.only else 1)
    print(json.dumps({"pages": pages_checked, "checks": report.checks, "failed": report.failed}))
    print(f"site-check: {report.checks - report.failed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
