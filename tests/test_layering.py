"""Import arrows point one way (STYLE.md): checked on the source, not by convention."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(package: str) -> dict[str, set[str]]:
    """Top-level module names each file of ``package`` imports."""
    result = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        result[str(path.relative_to(ROOT))] = names
    return result


@pytest.mark.parametrize(("package", "forbidden"), [
    ("stats", {"flask", "sqlalchemy", "experiments", "webhooks", "admin", "alembic"}),
    ("experiments", {"webhooks", "admin"}),
    ("webhooks", {"admin"}),
])
def test_package_does_not_import(package, forbidden):
    offenders = {path: names & forbidden for path, names in imported_modules(package).items()
                 if names & forbidden}
    assert offenders == {}


def test_layering_check_detects_a_violation(tmp_path, monkeypatch):
    (tmp_path / "stats").mkdir()
    (tmp_path / "stats" / "bad.py").write_text("import flask\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert imported_modules("stats") == {"stats/bad.py": {"flask"}}
