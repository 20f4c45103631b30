"""A database URL's query options reach every connection (SPEC §1): a non-public schema.

``?options=-csearch_path%3D<schema>`` must hold for migrations, the CLI, the web app,
the exposure writer and the analysis, merged with Parcours's statement timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from bench.support import free_port, scratch_postgres_database
from experiments.auth import SYSTEM
from experiments.config import WarehouseConfig
from experiments.db import get_db, postgres_connect_args
from experiments.migrate import upgrade
from experiments.services.lifecycle import create_experiment, transition
from experiments.services.warehouses.engines import _make_engine
from tests.conftest import make_test_app
from tests.factories import experiment_payload

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("PARCOURS_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="needs PARCOURS_TEST_POSTGRES_URL")


@pytest.fixture
def schema_url() -> Iterator[tuple[str, str]]:
    """A URL whose options put everything in a fresh schema of an empty database."""
    assert POSTGRES_URL
    with scratch_postgres_database(POSTGRES_URL, "parcours_schema") as url:
        schema = f"app_{uuid.uuid4().hex[:8]}"
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield f"{url}?options={quote(f'-csearch_path={schema}')}", schema
        finally:
            with engine.connect() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            engine.dispose()


def test_url_options_are_merged_with_the_statement_timeout_and_a_connect_timeout():
    url = "postgresql+psycopg://u@h/db?options=-csearch_path%3Dapp"
    assert postgres_connect_args(url, 1000) == {
        "options": "-csearch_path=app -c statement_timeout=1000", "connect_timeout": 5}
    assert postgres_connect_args("postgresql+psycopg://u@h/db?connect_timeout=2", None) == {}


@pytest.mark.parametrize("tokyo", ["server", "PGTZ"])
def test_sessions_are_in_utc_whatever_the_server_or_client_zone(
        tokyo: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A server in Tokyo (initdb writes the machine's zone into postgresql.conf; here the
    database's own setting) or a client's ``PGTZ``: Parcours's sessions, its own and a
    PostgreSQL warehouse's, still read UTC, and the client's own time of a clamped
    year-9999 exposure is read back (in Tokyo it is in year 10000, which psycopg refused:
    every read of the row failed)."""
    assert POSTGRES_URL
    if tokyo == "PGTZ":
        monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    with scratch_postgres_database(POSTGRES_URL, "parcours_tokyo") as url:
        if tokyo == "server":
            admin = create_engine(url, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                database = connection.scalar(text("SELECT current_database()"))
                connection.execute(text(
                    f"ALTER DATABASE \"{database}\" SET timezone = 'Asia/Tokyo'"))
            admin.dispose()
        app = make_test_app(url, tmp_path)
        engines = [get_db(app).engine, _make_engine(WarehouseConfig("pg", url))]
        read = []
        for engine in engines:
            with engine.connect() as connection:
                read.append((connection.scalar(text("SELECT current_setting('TimeZone')")),
                             connection.scalar(text(
                                 "SELECT TIMESTAMPTZ '9999-12-31 23:59:59+00'"))))
            engine.dispose()
    assert [(zone, far.year, far.utcoffset()) for zone, far in read] == [
        ("UTC", 9999, timedelta(0))] * 2


def test_a_schema_in_the_url_holds_migrations_keys_serving_assignment_and_analysis(
        schema_url, tmp_path):
    url, schema = schema_url
    app = make_test_app(url, tmp_path)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    keys = {}
    for role in ("admin", "client"):
        result = runner.invoke(args=["api-keys", "create", "--role", role, "--name", role])
        assert result.exit_code == 0, result.output
        keys[role] = {"Authorization": f"Bearer {result.output.splitlines()[-1]}"}
    client = app.test_client()
    payload = experiment_payload(key="schema-exp", targeting=[], overrides={}, layer=None)
    assert client.post("/api/v1/experiments", json=payload,
                       headers=keys["admin"]).status_code == 201
    assert client.post("/api/v1/experiments/schema-exp/start",
                       headers=keys["admin"]).status_code == 200
    for unit in ("u-1", "u-2", "u-3"):
        response = client.post("/api/v1/assign", json={"unit_id": unit}, headers=keys["client"])
        assert response.status_code == 200, response.get_data(as_text=True)
        assert [a["experiment"] for a in response.get_json()["assignments"]] == ["schema-exp"]
    events = {"events": [{"unit_id": "u-1", "type": "conversion", "name": "purchase"}]}
    response = client.post("/api/v1/events", json=events, headers=keys["client"])
    assert response.get_json()["accepted"] == 1
    result = runner.invoke(args=["analyze", "--experiment", "schema-exp"])
    assert result.exit_code == 0, result.output
    get_db(app).engine.dispose()
    engine = create_engine(url.split("?")[0])  # no search_path: name the schema
    with engine.connect() as connection:
        public = connection.scalar(text(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"))
        exposures = connection.scalar(text(f'SELECT count(*) FROM "{schema}".exposures'))
        reports = connection.scalar(text(f'SELECT count(*) FROM "{schema}".reports'))
    engine.dispose()
    assert (public, exposures, reports) == (0, 3, 1)


def scrape(port: int) -> dict[tuple[str, str], float]:
    """``parcours_job_runs_total`` by (job, result) from a metrics endpoint, {} if down."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    return {(sample.labels["job"], sample.labels["result"]): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples if sample.name == "parcours_job_runs_total"}


def test_the_scheduler_analyses_in_the_urls_schema_and_serves_its_metrics(
        schema_url, tmp_path):
    url, schema = schema_url
    upgrade(url)
    app = make_test_app(url, tmp_path)
    with get_db(app).session() as session:
        create_experiment(session, experiment_payload(key="sched-exp"), SYSTEM)
        transition(session, "sched-exp", "start", SYSTEM)
    get_db(app).engine.dispose()
    port = free_port()
    env = {**os.environ, "PARCOURS_DATABASE_URL": url, "PARCOURS_ANALYSIS_INTERVAL_S": "2",
           "PARCOURS_INSTANCE_PATH": str(tmp_path), "PARCOURS_SECRET_KEY": "sched"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(tmp_path / "scheduler.log", "w") as log:
        process = subprocess.Popen(
            [str(ROOT / ".venv/bin/flask"), "--app", "wsgi", "scheduler", "--metrics-port",
             str(port)], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while scrape(port).get(("analysis", "ok"), 0) < 1:
            assert process.poll() is None, (tmp_path / "scheduler.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    engine = create_engine(url.split("?")[0])
    with engine.connect() as connection:
        reports = connection.scalar(text(f'SELECT count(*) FROM "{schema}".reports'))
    engine.dispose()
    assert reports >= 1
