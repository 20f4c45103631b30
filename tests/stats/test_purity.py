"""The stats package stays pure: no web, database or other project imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STATS_DIR = Path(__file__).resolve().parents[2] / "stats"
FORBIDDEN = {"flask", "sqlalchemy", "experiments", "webhooks", "admin", "alembic", "werkzeug"}
ALLOWED = {
    "stats",
    "numpy",
    "scipy",
    "statsmodels",
    "__future__",
    "collections",
    "dataclasses",
    "functools",
    "math",
    "numbers",
    "typing",
}


def _imported_roots(path: Path) -> set[str]:
    """Top-level package names a module imports."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(STATS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_stats_module_imports_only_numeric_libraries(path: Path) -> None:
    roots = _imported_roots(path)
    assert not roots & FORBIDDEN
    assert roots <= ALLOWED
