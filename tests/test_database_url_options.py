"""A database URL's query options reach every connection (SPEC §1): a non-public schema.

``?options=-csearch_path%3D<schema>`` must hold for migrations, the CLI, the web app,
the exposure writer and the analysis, merged with Parcours's statement timeout.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from bench.support import scratch_postgres_database
from experiments.db import get_db, postgres_connect_args
from tests.conftest import make_test_app
from tests.factories import experiment_payload

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
