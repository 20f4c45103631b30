"""A warehouse that is down, slow or refusing fails only its experiments' analyses (SPEC §15),
and the admin pages show warehouses, their sync and the failure."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, func, select, text
from sqlalchemy.sql import FromClause

from experiments.db import get_db
from experiments.jobs import JobFailed, run_analysis
from experiments.models import Experiment, Report
from experiments.schemas import AnalysisSettings
from experiments.services.warehouses import routing
from experiments.services.warehouses.engines import get_warehouses
from tests.conftest import auth_headers, make_test_app
from tests.factories import experiment_payload
from tests.test_admin_support import cheap_argon2, logged_in  # noqa: F401  (autouse fixture)

GOOD_SQL = ("SELECT 'u1' AS unit_id, TIMESTAMPTZ '2026-11-21 10:00+00' AS occurred_at, "
            "'conversion' AS type, 'purchase' AS name, NULL AS step, 1.0 AS value, "
            "NULL AS friction_kind")


def fake_pipeline(engine: Engine, exposures: FromClause, events: FromClause,
                  experiment: Experiment, settings: AnalysisSettings, metrics: Any,
                  dimensions: Any = (), **options: Any) -> Any:
    """What the portable pipeline does to a warehouse: query it through the seam's
    relations. ``slow`` runs past its 1 s limit, ``refusing`` names a missing table."""
    query: Any = select(func.count()).select_from(exposures.join(
        events, events.c.unit_id == exposures.c.unit_id))
    if settings.warehouse == "slow":
        query = text("SELECT count(*) FROM range(100000000000) t(i) WHERE hash(i) = 42")
    elif settings.warehouse == "refusing":
        query = select(func.count()).select_from(text("refunds"))
    with engine.connect() as connection:
        connection.execute(query).all()
    raise AssertionError("every warehouse of this test fails before this point")


@pytest.fixture
def warehouses_app(database_url: str, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    app = make_test_app(
        database_url, tmp_path,
        WAREHOUSE_DOWN_URL=f"duckdb:///{tmp_path / 'missing-dir' / 'dw.duckdb'}",
        WAREHOUSE_SLOW_URL=f"duckdb:///{tmp_path / 'slow.duckdb'}",
        WAREHOUSE_SLOW_TIMEOUT_SECONDS="1",
        WAREHOUSE_REFUSING_URL=f"duckdb:///{tmp_path / 'refusing.duckdb'}")
    monkeypatch.setattr(routing, "run_pipeline", fake_pipeline)
    yield app
    get_warehouses(app).dispose()
    get_db(app).engine.dispose()


def start(app: Flask, headers: dict[str, str], key: str, warehouse: str | None) -> None:
    client = app.test_client()
    body = experiment_payload(key, layer=None, targeting=[], overrides={},
                              analysis={"warehouse": warehouse} if warehouse else {})
    assert client.post("/api/v1/experiments", json=body, headers=headers).status_code == 201
    assert client.post(f"/api/v1/experiments/{key}/start", headers=headers).status_code == 200


def test_a_failing_warehouse_fails_only_its_experiments(
        warehouses_app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    app, headers = warehouses_app, auth_headers(warehouses_app)
    client = app.test_client()
    assert client.put("/api/v1/warehouses/slow/sources", json={"events_sql": GOOD_SQL},
                      headers=headers).status_code == 200
    assert client.put("/api/v1/warehouses/refusing/sources", json={"events_sql": GOOD_SQL},
                      headers=headers).status_code == 200
    for key, warehouse in (("a-down", "down"), ("b-slow", "slow"),
                           ("c-refusing", "refusing"), ("d-parcours", None)):
        start(app, headers, key, warehouse)

    with (caplog.at_level(logging.INFO), app.app_context(),  # as the scheduler runs jobs
          pytest.raises(JobFailed) as failed):
        run_analysis(app)

    with get_db(app).sessionmaker() as session:
        bodies = {session.get(Experiment, r.experiment_id).key: r.body
                  for r in session.scalars(select(Report))}
    assert bodies["a-down"]["error"].startswith(
        "WarehouseError: warehouse 'down': IO Error: Cannot open file")
    assert bodies["b-slow"]["error"] == ("WarehouseError: warehouse 'slow': query stopped "
                                         "after 1 s (PARCOURS_WAREHOUSE_SLOW_TIMEOUT_SECONDS)")
    assert bodies["c-refusing"]["error"].startswith(
        "WarehouseError: warehouse 'refusing': Catalog Error: Table with name refunds")
    assert "error" not in bodies["d-parcours"]
    assert bodies["d-parcours"]["units"] == {"control": 0, "one-page": 0}
    assert str(failed.value).startswith("3 of 4 experiment(s) failed: a-down: error: "
                                        "WarehouseError: warehouse 'down'")
    logged = [r.getMessage() for r in caplog.records]
    assert "analysis: 4 running experiment(s) analysed, 3 failed" in logged
    assert "analysis of experiment b-slow failed" in logged

    viewer = logged_in(app, "viewer")
    page = viewer.get("/admin/experiments/b-slow").get_data(as_text=True)
    assert 'id="analysis-error"' in page
    assert "query stopped after 1 s" in page
    assert 'analysed in warehouse <code id="warehouse-name">slow</code>' in page
    fine = viewer.get("/admin/experiments/d-parcours").get_data(as_text=True)
    assert 'id="analysis-error"' not in fine and 'id="warehouse-name"' not in fine


def test_the_warehouses_page_lists_sync_state_and_sources(warehouses_app: Flask) -> None:
    app, headers = warehouses_app, auth_headers(warehouses_app)
    client = app.test_client()
    assert client.put("/api/v1/warehouses/slow/sources", json={"events_sql": GOOD_SQL},
                      headers=headers).status_code == 200
    start(app, headers, "b-slow", "slow")
    assert app.test_cli_runner().invoke(args=["warehouse", "sync"]).exit_code == 1  # down fails

    admin = logged_in(app, "admin")
    page = admin.get("/admin/warehouses").get_data(as_text=True)
    assert 'href="/admin/warehouses" aria-current="page">Warehouses</a>' in page
    down = page[page.index('id="warehouse-down"'):page.index('id="warehouse-refusing"')]
    assert "never" in down and "IO Error: Cannot open file" in down
    slow = page[page.index('id="warehouse-slow"'):]
    assert "duckdb" in slow and "UTC" in slow.split('class="last-sync">')[1][:30]
    assert "0 exposures" in slow and "No event source yet" not in slow
    assert "✓ valid" in slow and "<code>occurred_at</code> TIMESTAMP WITH TIME ZONE" in slow
    assert "1 s" in slow
    assert "No event source yet" in down
    assert "duckdb:///" not in page  # the URLs (and their secrets) never show
    assert logged_in(app, "editor").get("/admin/warehouses").status_code == 403
