"""MkDocs hook: the built site loads nothing from another host.

Material's bundle can fetch two scripts from unpkg.com: the Mermaid library (only on a page
with a diagram; these docs have none) and a ResizeObserver polyfill (only in browsers without
ResizeObserver). Both URLs are replaced by an empty inline script, so not even an old browser
reaches a CDN. ``tests/test_docs_site.py`` fails if any other host appears in the built site.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CDN_SCRIPTS = ("https://unpkg.com/mermaid@11/dist/mermaid.min.js",
               "https://unpkg.com/resize-observer-polyfill")
EMPTY_SCRIPT = "data:text/javascript,"


def on_post_build(config: Any) -> None:
    """Replace the theme's CDN script URLs in the copied bundle."""
    for bundle in (Path(config["site_dir"]) / "assets" / "javascripts").glob("bundle.*.js"):
        text = bundle.read_text(encoding="utf-8")
        for url in CDN_SCRIPTS:
            text = text.replace(url, EMPTY_SCRIPT)
        bundle.write_text(text, encoding="utf-8")
