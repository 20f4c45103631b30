"""The documentation site (issue #24): ``mkdocs build --strict`` passes, every internal link
and anchor of the built site resolves, and no page loads anything from another host.

"Loads from another host" means: an ``src``/``href``/``srcset``/``action``/``poster``/``data``
attribute of the HTML, an ``@import`` or ``url()`` of a stylesheet (or of an inline
``style``), or a URL string literal in JavaScript (a script, a font, an API) naming a host
other than localhost. A URL written as text (in a code sample or a sentence) loads nothing
and is allowed. The site is built once per run into a temporary directory (~2 s).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
URL_ATTRIBUTES = {"src", "href", "srcset", "action", "poster", "data", "formaction"}
_CSS_URL = re.compile(r"""@import\s+(?:url\()?\s*["']?([^"')\s;]+)|url\(\s*["']?([^"')\s]+)""")
_JS_URL = re.compile(r"""["'`](https?://[^"'`\s]+)""")
_FONT = re.compile(r"fonts\.(?:googleapis|gstatic)\.com|\.(?:woff2?|ttf|otf|eot)\b", re.I)
# Material's repository facts (its header's repo icon): fetched only when mkdocs.yml sets
# repo_url, which test_the_configuration_names_no_external_asset forbids.
_REPO_FACTS = ("https://api.github.com/", "https://${")


class _Page(HTMLParser):
    """The URL attributes, element ids and inline styles of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in URL_ATTRIBUTES:
                urls = [part.split()[0] for part in value.split(",") if part.split()] \
                    if name == "srcset" else [value]
                self.urls.extend((tag, url) for url in urls)
            elif name in {"id", "name"}:
                self.ids.add(value)
            elif name == "style":
                self.styles.append(value)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def is_foreign(url: str) -> bool:
    """True when loading ``url`` would reach another host."""
    parts = urlsplit(url.strip())
    if parts.scheme in {"data", "mailto", "javascript", "blob"}:
        return False
    if not parts.netloc:
        return parts.scheme not in {"", "file"}
    return (parts.hostname or "") not in LOCAL_HOSTS


def css_urls(text: str) -> Iterator[str]:
    for match in _CSS_URL.finditer(text):
        yield match.group(1) or match.group(2)


def foreign_references(site: Path) -> list[str]:
    """Every reference of the built site that would load from another host."""
    found: list[str] = []
    for path in sorted(site.rglob("*")):
        name = str(path.relative_to(site))
        if path.suffix == ".html":
            page = parse(path)
            found += [f"{name}: <{tag}> {url}" for tag, url in page.urls if is_foreign(url)]
            found += [f"{name}: style {url}" for style in page.styles
                      for url in css_urls(style) if is_foreign(url)]
        elif path.suffix == ".css":
            found += [f"{name}: {url}" for url in css_urls(path.read_text(encoding="utf-8"))
                      if is_foreign(url)]
        elif path.suffix == ".js":
            text = path.read_text(encoding="utf-8")
            found += [f"{name}: {url}" for url in _JS_URL.findall(text)
                      if is_foreign(url.replace("${", "x")) and not url.startswith(_REPO_FACTS)]
            found += [f"{name}: font {match.group(0)}" for match in _FONT.finditer(text)]
    return found


def broken_links(site: Path) -> list[str]:
    """Every internal link or anchor of the built site that leads nowhere."""
    pages = {path: parse(path) for path in site.rglob("*.html")}
    broken: list[str] = []
    for path, page in pages.items():
        for tag, url in page.urls:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith(("mailto:", "data:")):
                continue
            base = site if parts.path.startswith("/") else path.parent
            target = (base / unquote(parts.path).lstrip("/")).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            name = f"{path.relative_to(site)}: <{tag}> {url}"
            if not target.is_file():
                broken.append(f"{name}: no such file")
            elif (parts.fragment and target.suffix == ".html"
                  and unquote(parts.fragment) not in pages[target].ids):
                broken.append(f"{name}: no anchor #{parts.fragment}")
    return broken


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built as `make docs` builds it (--strict), into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                             "--site-dir", str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr
    return out


def test_the_site_builds_strict_with_every_guide(site: Path):
    for page in ["index.html", "statistics.html", "performance.html",
                 "product/experiments.html", "developers/browser-sdk.html",
                 "managers/reports.html", "operators/production.html"]:
        assert (site / page).is_file(), page
    assert "rage_click" in (site / "developers" / "browser-sdk.html").read_text(encoding="utf-8")


def test_every_internal_link_and_anchor_resolves(site: Path):
    assert broken_links(site) == []


def test_no_page_loads_anything_from_another_host(site: Path):
    assert foreign_references(site) == []
    # Text is not a load: the guides do mention other hosts in code samples.
    assert "https://parcours.example.com" in \
        (site / "developers" / "browser-sdk.html").read_text(encoding="utf-8")


def test_the_configuration_names_no_external_asset():
    config = re.sub(r"#.*", "", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert re.search(r"^\s+font: false$", config, re.M)
    # repo_url makes the header fetch repository facts from GitHub; analytics, emoji images
    # and MathJax come from CDNs.
    for key in ("repo_url", "repo_name", "analytics", "emoji", "arithmatex"):
        assert key not in config, key


def test_the_checks_catch_what_they_look_for(tmp_path: Path):
    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
        '<img srcset="local.png 1x, //cdn.example.com/a.png 2x">'
        '<a href="other.html#nowhere">x</a><a href="missing.html">y</a>'
        '<a href="#top" id="top">ok</a><a href="http://127.0.0.1:5000/docs">local</a>'
        '<style>body { background: url("https://img.example.com/b.png") }</style>'
        "<pre><code>curl https://parcours.example.com/sdk/parcours.js</code></pre>",
        encoding="utf-8")
    (tmp_path / "other.html").write_text('<h1 id="here">x</h1>', encoding="utf-8")
    (tmp_path / "local.png").write_bytes(b"")
    (tmp_path / "a.css").write_text('@import "https://cdn.example.com/x.css";'
                                    "b { src: url(data:font/woff2;base64,AA) }", encoding="utf-8")
    (tmp_path / "a.js").write_text('fetch("https://fonts.gstatic.com/s/x.woff2");'
                                   'const ns = "https://unpkg.com/lib";', encoding="utf-8")
    assert foreign_references(tmp_path) == [
        "a.css: https://cdn.example.com/x.css",
        "a.js: https://fonts.gstatic.com/s/x.woff2",
        "a.js: https://unpkg.com/lib",
        "a.js: font fonts.gstatic.com",
        "a.js: font .woff2",
        "index.html: <link> https://fonts.googleapis.com/css?family=Roboto",
        "index.html: <img> //cdn.example.com/a.png",
        "index.html: style https://img.example.com/b.png",
    ]
    assert broken_links(tmp_path) == ["index.html: <a> other.html#nowhere: no anchor #nowhere",
                                      "index.html: <a> missing.html: no such file"]
