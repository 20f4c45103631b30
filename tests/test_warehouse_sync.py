"""Syncing exposures and events into a warehouse: incremental, idempotent, crash-safe."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import AuditEntry, Event, Experiment, Exposure, WarehouseSync
from experiments.services.erasure import erase_unit
from experiments.services.warehouses import sync
from experiments.services.warehouses.engines import get_warehouses
from tests import warehouse_child
from tests.conftest import auth_headers, make_test_app
from tests.factories import experiment_payload

ROOT = Path(__file__).resolve().parent.parent
# Each child is forked from a server that imported tests.warehouse_child (and DuckDB) once:
# a fresh process for each, without its 2–3 s of imports. Not chDB: it starts threads on
# import, which a fork would not carry over.
CHILDREN = multiprocessing.get_context("forkserver")
CHILDREN.set_forkserver_preload(["tests.warehouse_child", "duckdb", "duckdb_engine"])
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def add_traffic(db: Session, experiment_key: str, units: range) -> None:
    """Exposures and two events per unit, written the fast way (tests only)."""
    experiment = db.scalar(select(Experiment).where(Experiment.key == experiment_key))
    for unit in units:
        at = T0 + timedelta(minutes=unit)
        db.add(Exposure(experiment_id=experiment.id, unit_id=f"u{unit}",
                        variant_key=("control", "one-page")[unit % 2], exposed_at=at))
        db.add(Event(event_id=f"e{unit}", unit_id=f"u{unit}", type="step", name="cart",
                     step="cart", occurred_at=at + timedelta(minutes=1)))
        db.add(Event(event_id=f"p{unit}", unit_id=f"u{unit}", type="conversion", name="purchase",
                     value=float(unit % 7), occurred_at=at + timedelta(minutes=2)))
    db.commit()


def run_child(app: Flask, warehouse_url: str, *args: str,
              **settings: str) -> subprocess.CompletedProcess[str]:
    """``tests.warehouse_child`` against the app's database and the warehouse ``w``."""
    env = {**os.environ, "PARCOURS_DATABASE_URL": app.config["PARCOURS"].DATABASE_URL,
           "PARCOURS_SECRET_KEY": "test", "PARCOURS_INSTANCE_PATH": app.instance_path,
           "PARCOURS_WAREHOUSE_W_URL": warehouse_url, "PARCOURS_WAREHOUSE_W_SYNC_EVENTS": "1",
           "PARCOURS_LOG_LEVEL": "WARNING",
           **{f"PARCOURS_WAREHOUSE_W_{key}": value for key, value in settings.items()}}
    out, err = (Path(app.instance_path) / f"warehouse-child.{end}" for end in ("out", "err"))
    child = CHILDREN.Process(target=warehouse_child.forked,
                             args=(list(args), env, str(ROOT), str(out), str(err)))
    child.start()
    child.join(timeout=120)
    if child.exitcode is None:
        child.kill()
        child.join()
        raise subprocess.TimeoutExpired(["tests.warehouse_child", *args], 120)
    return subprocess.CompletedProcess(["tests.warehouse_child", *args], child.exitcode,
                                       out.read_text(), err.read_text())


@pytest.fixture(params=["duckdb", "chdb"])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'analytics.duckdb'}"
    return f"chdb:///{tmp_path / 'clickhouse'}"


def test_a_sync_killed_mid_way_resumes_without_duplicate_or_gap(
        app: Flask, db: Session, started: dict, warehouse_url: str) -> None:
    add_traffic(db, "checkout-redesign", range(450))
    crashed = run_child(app, warehouse_url, "crash", "3")  # killed inside the 3rd batch
    assert crashed.returncode == -9, crashed.stderr

    add_traffic(db, "checkout-redesign", range(450, 500))  # traffic goes on meanwhile
    erase_unit(db, "u0", SYSTEM)  # already copied: its copies go as well
    rerun = run_child(app, warehouse_url, "sync")
    assert rerun.returncode == 0, rerun.stderr
    synced = json.loads(rerun.stdout.splitlines()[-1])
    resumed, again = synced["copied"]
    # The killed run left whole batches (DuckDB rolled the 3rd back; ClickHouse kept it).
    assert 1 not in synced["parcours_exposures"]
    assert 500 - resumed["w"] in (200, 300)
    assert again == {"w": 0}  # nothing new: nothing copied twice
    assert synced["parcours_exposures"] == sorted(db.scalars(select(Exposure.id)))
    assert synced["parcours_events"] == sorted(db.scalars(select(Event.id)))
    db.commit()  # an open transaction would hold the next PostgreSQL sync back
    state = db.get(WarehouseSync, "w")
    assert (state.exposures_through, state.events_through, state.last_error) == (500, 1000, None)
    assert state.erasures_through == db.scalar(select(AuditEntry.id).where(
        AuditEntry.action == "unit.erased"))


CH_SOURCE = ("SELECT toString(number) AS unit_id, now64(6, 'UTC') AS occurred_at, "
             "'conversion' AS type, 'order' AS name, NULL AS step, toFloat64(number) AS value, "
             "NULL AS friction_kind FROM numbers(3)")


def test_clickhouse_sources_are_probed_and_slow_queries_stopped(sqlite_template: Path,
                                                                tmp_path: Path) -> None:
    app = make_test_app(f"sqlite:///{sqlite_template}", tmp_path)  # only read, never written
    done = run_child(app, f"chdb:///{tmp_path / 'clickhouse'}", "probe", CH_SOURCE,
                     CH_SOURCE.replace("toString(number)", "number"), "SELECT * FROM refunds",
                     TIMEOUT_SECONDS="1")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    good, mistyped, refused = result["probes"]
    assert good == {"unit_id": "String", "occurred_at": "DateTime64(6, 'UTC')",
                    "type": "String", "name": "String", "step": "Nullable(Nothing)",
                    "value": "Float64", "friction_kind": "Nullable(Nothing)"}
    assert mistyped == [{"field": "events_sql", "message": "column 'unit_id' is UInt64, "
                         "expected text (e.g. CAST(x AS VARCHAR))"}]
    [refusal] = refused
    assert refusal["message"].startswith("warehouse 'w': Code: 60. DB::Exception: Unknown "
                                         "table expression identifier 'refunds'")
    assert result["slow"] == ("warehouse 'w': query stopped after 1 s "
                              "(PARCOURS_WAREHOUSE_W_TIMEOUT_SECONDS)")


def test_ids_of_a_transaction_still_open_are_left_for_the_next_sync(
        postgres_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL a smaller id may commit after a larger one: while a transaction that
    began before the sync looked is open, the sync copies nothing new (never skips it)."""
    monkeypatch.setattr(sync, "SETTLE_WAIT_S", 0.2)
    app = make_test_app(postgres_database_url, tmp_path,
                        WAREHOUSE_W_URL=f"duckdb:///{tmp_path / 'w.duckdb'}")
    headers = auth_headers(app)
    payload = experiment_payload(layer=None, targeting=[], overrides={})
    client = app.test_client()
    assert client.post("/api/v1/experiments", json=payload, headers=headers).status_code == 201
    assert client.post("/api/v1/experiments/checkout-redesign/start",
                       headers=headers).status_code == 200
    with app.app_context(), get_db(app).sessionmaker() as session:
        add_traffic(session, "checkout-redesign", range(3))
        with get_db(app).engine.connect() as other:
            other.execute(select(1))  # a transaction open since before the sync
            assert sync.sync_warehouse(session, "w").exposures == 0
        assert sync.sync_warehouse(session, "w").exposures == 3
        get_warehouses().dispose()
    get_db(app).engine.dispose()


def test_the_sync_job_drops_the_kept_values_of_experiments_that_no_longer_run(
        database_url: str, tmp_path: Path) -> None:
    """A concluded experiment is analysed on demand from its events: the scheduled sync
    drops its per-unit tables (``warehouses.rollup``); a running or paused one keeps its."""
    app = make_test_app(database_url, tmp_path,
                        WAREHOUSE_W_URL=f"duckdb:///{tmp_path / 'w.duckdb'}")
    client, headers = app.test_client(), auth_headers(app)
    for key in ("still-running", "paused", "concluded"):
        body = experiment_payload(key, layer=None, targeting=[])
        assert client.post("/api/v1/experiments", json=body, headers=headers).status_code == 201
        assert client.post(f"/api/v1/experiments/{key}/start",
                           headers=headers).status_code == 200
    assert client.post("/api/v1/experiments/paused/pause", headers=headers).status_code == 200
    assert client.post("/api/v1/experiments/concluded/conclude",
                       json={"outcome": "no_difference", "winner": None, "learnings": "none"},
                       headers=headers).status_code == 200
    with app.app_context():
        with get_db(app).sessionmaker() as db:
            ids = {e.key: e.id for e in db.scalars(select(Experiment))}
        names = {key: f"parcours_rollup_{number}_0a1b2c" for key, number in ids.items()}
        with get_warehouses(app).engine("w").begin() as connection:
            for name in names.values():
                connection.exec_driver_sql(f"CREATE TABLE {name} AS SELECT 1 AS exposure_id")
        assert not isinstance(sync.sync_all(get_db(app))["w"], str)
        with get_warehouses(app).engine("w").connect() as connection:
            left = set(connection.exec_driver_sql(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_name LIKE 'parcours_rollup%'").scalars())
        get_warehouses(app).dispose()
    assert left == {names["still-running"], names["paused"], "parcours_rollups"}
    get_db(app).engine.dispose()


OLD_EVENTS_DDL = ("CREATE TABLE parcours_events (id Int64, unit_id String, type String, "
                  "name String, step Nullable(String), friction_kind Nullable(String), "
                  "value Nullable(Float64), occurred_at DateTime64(6, 'UTC')) "
                  "ENGINE = MergeTree ORDER BY id")


def test_clickhouse_copies_made_before_low_cardinality_columns_are_converted(
        tmp_path: Path) -> None:
    """A ClickHouse warehouse whose ``parcours_events`` predates the LowCardinality columns
    gets them converted by the next sync's table set-up, its rows unchanged; the columns
    already converted are left alone."""
    from sqlalchemy import create_engine, text

    from experiments.services.warehouses import tables

    engine = create_engine(f"chdb:///{tmp_path / 'clickhouse'}")
    row = (1, "u1", "friction", "payment_failed", "payment", "error", None,
           "2026-11-20 09:00:00.123456")
    with engine.connect() as connection:
        connection.exec_driver_sql(OLD_EVENTS_DDL)
        connection.exec_driver_sql(
            "INSERT INTO parcours_events VALUES (1, 'u1', 'friction', 'payment_failed', "
            "'payment', 'error', NULL, '2026-11-20 09:00:00.123456')")
        tables.create_tables(connection)
        tables.create_tables(connection)  # again: nothing left to convert
        types = dict(connection.execute(text(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
            "AND table = 'parcours_events'")).all())
        rows = connection.execute(text(
            "SELECT id, unit_id, type, name, step, friction_kind, value, "
            "toString(occurred_at) FROM parcours_events")).all()
        exposure_types = dict(connection.execute(text(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
            "AND table = 'parcours_exposures'")).all())
    engine.dispose()
    assert {name: types[name] for name in tables.LOW_CARDINALITY["parcours_events"]} == \
        tables.LOW_CARDINALITY["parcours_events"]
    assert types["unit_id"] == "String"
    assert [tuple(r) for r in rows] == [row]
    assert exposure_types["variant_key"] == "LowCardinality(String)"


def test_a_conversion_the_server_refuses_is_logged_and_the_sync_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A ClickHouse user without ``ALTER`` rights keeps its plain string columns: the table
    set-up logs each refusal and completes (the conversion only buys speed)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from experiments.services.warehouses import tables

    engine = create_engine(f"chdb:///{tmp_path / 'clickhouse'}")
    with engine.connect() as connection:
        connection.exec_driver_sql(OLD_EVENTS_DDL)
        run = connection.exec_driver_sql

        def refuse_alters(statement: str, *args: object) -> object:
            if statement.startswith("ALTER TABLE parcours_events MODIFY"):
                raise OperationalError(statement, {}, Exception("Code: 497. ACCESS_DENIED"))
            return run(statement, *args)

        monkeypatch.setattr(connection, "exec_driver_sql", refuse_alters)
        tables.create_tables(connection)
        types = dict(connection.execute(text(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
            "AND table = 'parcours_events'")).all())
    engine.dispose()
    assert types["name"] == types["type"] == "String"
    refused = [r.getMessage() for r in caplog.records if "ACCESS_DENIED" in r.getMessage()]
    assert len(refused) == 4
    assert refused[0].startswith("parcours_events.type stays String")
