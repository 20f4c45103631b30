"""``/healthz`` routes traffic only to an instance whose database schema is at head (SPEC §2)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bench.support import scratch_postgres_database
from experiments.db import get_db
from experiments.migrate import upgrade
from tests.conftest import BACKENDS, make_test_app


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (nothing migrated) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with scratch_postgres_database(os.environ["PARCOURS_TEST_POSTGRES_URL"],
                                   "parcours_health") as url:
        yield url


def health(url: str, tmp_path: Path) -> tuple[int, dict]:
    app = make_test_app(url, tmp_path)
    try:
        response = app.test_client().get("/healthz")
        return response.status_code, response.get_json()
    finally:
        get_db(app).engine.dispose()


def test_an_unmigrated_or_outdated_schema_takes_the_instance_out_of_rotation(
        empty_database_url, tmp_path):
    outdated = (503, {"status": "unavailable", "database": "schema_outdated"})
    assert health(empty_database_url, tmp_path) == outdated
    upgrade(empty_database_url, "0001")
    assert health(empty_database_url, tmp_path) == outdated
    upgrade(empty_database_url)
    assert health(empty_database_url, tmp_path) == (200, {"status": "ok", "database": "ok"})


def test_a_newer_unknown_revision_is_healthy_for_rolling_deploys(empty_database_url, tmp_path):
    upgrade(empty_database_url)
    engine = create_engine(empty_database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    assert health(empty_database_url, tmp_path) == (200, {"status": "ok", "database": "ok"})


def test_the_schema_check_is_cached_but_reachability_is_not(empty_database_url, tmp_path):
    upgrade(empty_database_url, "0001")
    app = make_test_app(empty_database_url, tmp_path)
    client = app.test_client()
    assert client.get("/healthz").status_code == 503
    upgrade(empty_database_url)
    assert client.get("/healthz").status_code == 503  # within the ~10 s cache
    app.extensions["parcours.health"].ttl_s = 0
    assert client.get("/healthz").status_code == 200
    get_db(app).engine.dispose()
