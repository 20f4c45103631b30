"""The documented shell examples, parsed out of README.md and every ``docs/**/*.md``, run,
and compared with what the documentation says.

Every ```sh block right after the marker line :data:`MARKER` is checked, in the README and
in every Markdown page under ``docs/`` (new pages are picked up by themselves): each command
in it is run by bash against a live server (``localhost:5000`` becomes the server's
address; ``$KEY``, ``$PK`` and ``$CLIENT`` are real keys), in document order (the README,
then the pages by path), on one database seeded with the demo. A command's documented
output is the run of ``#`` comment lines right below it that starts with ``{``, ``[`` or
a status code and goes on with indented ``#   `` lines. Documented JSON must be found in
the real output (``"…"`` matches any value, objects may have more keys); a status code
must be the real one. A command without documented output must still answer a 2xx.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKER = "<!-- example: run by tests/test_readme.py -->"
ANY = "…"
_BLOCK = re.compile(r"^[ ]*```sh\n(.*?)^[ ]*```", re.S | re.M)
_STATUS_LINE = re.compile(r"^HTTP/\S+ (\d{3})", re.M)


@dataclass(frozen=True)
class Example:
    """One documented command and the output it documents (None when it shows none)."""

    line: int
    command: str
    documented: str | None
    source: str = "README.md"

    @property
    def where(self) -> str:
        """``path:line`` of the command in its document."""
        return f"{self.source}:{self.line}"


def documents() -> list[Path]:
    """The README, then every Markdown page of the documentation site, by path."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def checked_blocks(text: str) -> Iterator[tuple[int, str]]:
    """(line number, body) of every sh block directly after the marker."""
    for match in _BLOCK.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.strip() == MARKER:
            yield text[:match.start()].count("\n") + 2, textwrap.dedent(match.group(1))


def examples(text: str | None = None, source: str = "README.md") -> list[Example]:
    """Every command of the checked blocks of ``text``, or of every document when None."""
    if text is None:
        return [example for path in documents()
                for example in examples(path.read_text(encoding="utf-8"),
                                        str(path.relative_to(ROOT)))]
    found: list[Example] = []
    for first_line, block in checked_blocks(text):
        found.extend(_commands(first_line, block.splitlines(), source))
    return found


def _commands(first_line: int, lines: list[str], source: str) -> Iterator[Example]:
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip() or line.lstrip().startswith("#") or _is_assignment(line):
            index += 1
            continue
        start = index
        command = [line]
        while _continues(command):
            index += 1
            command.append(lines[index])
        index += 1
        output: list[str] = []
        if index < len(lines) and re.match(r"#\s*[\[{0-9]", lines[index]):
            output.append(lines[index].lstrip("#").strip())
            index += 1
            while index < len(lines) and lines[index].startswith("#  "):
                output.append(lines[index].lstrip("#").strip())
                index += 1
        yield Example(first_line + start, "\n".join(command), " ".join(output) or None, source)


def _is_assignment(line: str) -> bool:
    # KEY=sk_...: the test provides real keys in the environment instead.
    return re.match(r"^[A-Z]+=\S+", line) is not None


def _continues(command: list[str]) -> bool:
    text = "\n".join(command)
    return text.rstrip().endswith("\\") or text.count("'") % 2 == 1


def run(example: Example, base_url: str, env: Mapping[str, str]) -> tuple[int | None, str]:
    """Run the command with bash; (status from ``-i`` headers or None, body).

    With ``-i`` a header the documented output names (``ETag``) must be there too.
    """
    command = example.command.replace("localhost:5000", base_url)
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", **env})
    assert result.returncode == 0, f"{example.where}: {result.stderr}"
    output = result.stdout
    status = _STATUS_LINE.search(output)
    if status is None:
        return None, output
    headers, body = re.split(r"\r?\n\r?\n", output, maxsplit=1)
    if "ETag" in (example.documented or "") and "\netag:" not in headers.lower():
        return int(status.group(1)), "documented ETag header missing"
    return int(status.group(1)), body


def mismatch(documented: Any, real: Any, where: str = "") -> str | None:
    """Where ``real`` departs from ``documented`` (None when it matches)."""
    if documented == ANY:
        return None
    if isinstance(documented, dict):
        if not isinstance(real, dict):
            return f"{where or 'output'}: expected an object, got {real!r}"
        for key, value in documented.items():
            if key not in real:
                return f"{where}.{key}: missing"
            if (problem := mismatch(value, real[key], f"{where}.{key}")) is not None:
                return problem
        return None
    if isinstance(documented, list):
        if not isinstance(real, list) or len(real) != len(documented):
            return f"{where}: expected {len(documented)} items, got {real!r}"
        return next((problem for index, (doc, got) in enumerate(zip(documented, real,
                                                                      strict=True))
                     if (problem := mismatch(doc, got, f"{where}[{index}]")) is not None), None)
    return None if documented == real else f"{where}: documented {documented!r}, got {real!r}"


def check(example: Example, status: int | None, body: str) -> str | None:
    """Why the real answer contradicts the documentation (None when it does not)."""
    documented = example.documented
    if documented is not None and documented[0].isdigit():
        code, _, documented = documented.partition(" ")
        if status != int(code):
            return f"status {status}, documented {code}"
    try:
        real = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if isinstance(real, dict) and "error" in real:
        return f"error answer: {real['error']}"
    if status is not None and status >= 300:
        return f"status {status}"
    if documented and documented[0] in "[{":
        try:
            expected = json.loads(documented)
        except ValueError:
            return None  # prose such as {"flags": [...every running experiment...]}
        return mismatch(expected, real)
    return None
