"""Import arrows point one way (STYLE.md): checked on the source, not by convention."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def imports_inside_functions(package: str) -> dict[str, list[str]]:
    """The modules each file of ``package`` imports inside a function (a dodged cycle)."""
    result = {}
    for path in (ROOT / package).rglob("*.py"):
        found = [node.module or "" for function in ast.walk(ast.parse(path.read_text()))
                 if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
                 for node in ast.walk(function) if isinstance(node, ast.ImportFrom)]
        if found:
            result[str(path.relative_to(ROOT))] = found
    return result


def test_services_import_at_module_level_only():
    assert imports_inside_functions("experiments/services") == {}


def from_imports(module: str) -> set[str]:
    """Every module a file names in ``from … import`` (at any depth)."""
    return {node.module for node in ast.walk(ast.parse((ROOT / module).read_text()))
            if isinstance(node, ast.ImportFrom) and node.module}


def test_bandit_statistics_do_not_depend_on_where_the_data_lives():
    # reallocation → warehouses.routing → bandits, one way: routing period-groups a
    # warehouse's report with bandits, so bandits may not reach back for the routing.
    assert {m for m in from_imports("experiments/services/bandits.py") if m.startswith(
        ("experiments.services.warehouses", "experiments.services.reallocation"))} == set()
    assert "experiments.services.warehouses.routing" in from_imports(
        "experiments/services/reallocation.py")


def loaded_after(statement: str) -> set[str]:
    """The heavy packages a fresh interpreter has loaded after running ``statement``."""
    probe = (f"import sys\n{statement}\n"
             "print(','.join(sorted(m for m in ('statsmodels', 'pandas') if m in sys.modules)))")
    output = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    return set(filter(None, output.strip().split(",")))


def test_only_the_sample_size_calculator_loads_statsmodels(tmp_path):
    # statsmodels brings pandas: ~70 MB of RSS in every web worker and analysis job.
    app = ("from experiments.app import create_app\n"
           f"create_app({{'DATABASE_URL': 'sqlite:///{tmp_path}/p.db', 'SCHEDULER': False, "
           f"'SECRET_KEY': 'x', 'INSTANCE_PATH': '{tmp_path}'}})\n"
           "import experiments.services.analysis, experiments.services.warehouses.routing")
    assert loaded_after(app) == set()
    assert loaded_after("from stats import sample_size\n"
                        "sample_size('conversion', baseline=0.1, mde=0.1)") == {
        "statsmodels", "pandas"}
