"""Minify the browser SDK offline: ``python scripts/build_sdk.py [--check]``.

Writes ``experiments/static/sdk/parcours.min.js`` (what ``GET /sdk/parcours.js``
serves) from the readable source next to it. ``--check`` exits 1 when the
committed minified file is stale, for CI.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import rjsmin

SDK_DIR = Path(__file__).resolve().parent.parent / "experiments" / "static" / "sdk"
SOURCE = SDK_DIR / "parcours.js"
MINIFIED = SDK_DIR / "parcours.min.js"


def minify(source: str) -> str:
    """The minified script, keeping the ``/*! … */`` licence banner."""
    return rjsmin.jsmin(source, keep_bang_comments=True) + "\n"


def gzipped_size(text: str) -> int:
    """Bytes on the wire with gzip, the size the SPEC budget (< 8 KB) is about."""
    return len(gzip.compress(text.encode(), compresslevel=9))


def main(argv: list[str]) -> int:
    """Build (or with ``--check`` verify) the minified SDK."""
    built = minify(SOURCE.read_text(encoding="utf-8"))
    if "--check" in argv:
        current = MINIFIED.read_text(encoding="utf-8") if MINIFIED.exists() else ""
        if current != built:
            print(f"{MINIFIED} is stale: run python scripts/build_sdk.py", file=sys.stderr)
            return 1
        return 0
    MINIFIED.write_text(built, encoding="utf-8")
    print(f"{MINIFIED.name}: {len(built)} bytes, {gzipped_size(built)} bytes gzipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
