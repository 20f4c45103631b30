"""Schemathesis over /openapi.json against a live server, with each kind of key.

Zero server errors, and every response must match its documented status, content
type and schema. Bounded example counts keep it to seconds per backend.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.api.routing import ROUTES
from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.services.accounts import create_api_key

pytestmark = pytest.mark.slow
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
ROOT = Path(__file__).resolve().parent.parent
HOOKS = "tests.schemathesis_hooks"  # NUL-bearing strings in bodies and query strings
CONFIG = Path(__file__).with_name("schemathesis.toml")
PATH_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")  # Flask's <int:id> is OpenAPI's {id}
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,negative_data_rejection")


def run_schemathesis(url: str, key: str, phases: str, tmp_path: Path,
                     config: Path = CONFIG) -> str:
    """Run the schemathesis CLI; fail the test with its report when it finds anything."""
    report = tmp_path / f"schemathesis-{phases.replace(',', '-')}.txt"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PARCOURS_NUL_LOG": str(nul_log(tmp_path)),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{url}/openapi.json",
         "-H", f"Authorization: Bearer {key}",
         "--checks", CHECKS, "--phases", phases, "--max-examples", "10", "--workers", "1",
         "--continue-on-failure", "--request-timeout", "20", "--seed", "20261124",
         "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=400, env=env)
    report.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-20000:]
    return result.stdout


def client_config(tmp_path: Path) -> Path:
    """The configuration for a client key: no coverage phase on the admin-only operations.

    A client key is refused (403) before its body or query is read, so the coverage
    phase's ~2,500 boundary and negative cases there would all take the same path; the
    admin key's run covers them, and the fuzzing and stateful phases still send the
    client key to every operation."""
    admin_only = sorted(route.method.upper() + " " + PATH_PARAM.sub(r"{\2}", route.rule)
                        for route in ROUTES if route.auth == "admin")
    assert len(admin_only) > 30, admin_only  # the app's routes are registered
    path = tmp_path / "schemathesis-client.toml"
    path.write_text(CONFIG.read_text() + "\n[[operations]]\n"
                    f"include-name = {json.dumps(admin_only)}\n"
                    "phases.coverage.enabled = false\n")
    return path


def nul_log(tmp_path: Path) -> Path:
    """Where the hooks list each request they sent with a NUL character."""
    return tmp_path / "nul-requests.txt"


@pytest.mark.parametrize("role", ["admin", "client"])
def test_schemathesis_finds_no_server_error_or_schema_violation(app, live_server, tmp_path,
                                                                  role):
    with get_db(app).session() as session:
        key = create_api_key(session, name=f"fuzz {role}", role=role, principal=SYSTEM)[1]
    config = client_config(tmp_path) if role == "client" else CONFIG
    output = run_schemathesis(live_server.url, key, "examples,coverage,fuzzing,stateful",
                              tmp_path, config)
    assert "generated" in output
    nul_requests = nul_log(tmp_path).read_text().splitlines()
    # The strategy reached the write routes, and none of those requests was a 5xx.
    assert len(nul_requests) >= 20, nul_requests
    assert {"POST /experiments", "POST /assign"} & {line.replace("/api/v1", "")
                                                   for line in nul_requests}
