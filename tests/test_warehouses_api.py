"""Warehouses API (SPEC §15): listing without URLs, events sources probed with LIMIT 0,
``analysis.warehouse`` validated, and the seam the pipeline consumes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text

from experiments.db import get_db
from experiments.jobs import registered_jobs
from experiments.models import AuditEntry, WarehouseSource, WarehouseSync
from experiments.services.warehouses.engines import get_warehouses
from experiments.services.warehouses.sources import type_kind, warehouse_sources
from experiments.services.warehouses.sync import sync_warehouse
from tests.conftest import auth_headers, make_test_app
from tests.factories import experiment_payload
from tests.test_admin_support import (  # noqa: F401  (cheap_argon2: autouse fixture)
    cheap_argon2,
    logged_in,
    post,
    submitted_form,
)

ORDERS_SQL = ("SELECT CAST(customer AS VARCHAR) AS unit_id, ts AS occurred_at, "
              "'conversion' AS type, 'order' AS name, NULL AS step, amount AS value, "
              "NULL AS friction_kind FROM orders")
CALLS_SQL = ("SELECT CAST(customer AS VARCHAR) AS unit_id, ts AS occurred_at, "
             "'friction' AS type, 'support_call' AS name, NULL AS step, NULL AS value, "
             "'support_call' AS friction_kind FROM support_calls")


@pytest.fixture
def shop(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    """An app with a DuckDB warehouse ``shop`` holding customer-shaped tables."""
    app = make_test_app(database_url, tmp_path,
                        WAREHOUSE_SHOP_URL=f"duckdb:///{tmp_path / 'shop.duckdb'}",
                        WAREHOUSE_SHOP_TIMEOUT_SECONDS="30")
    with app.app_context(), get_warehouses().engine("shop").begin() as connection:
        connection.execute(text("CREATE TABLE orders (customer BIGINT, ts TIMESTAMPTZ, "
                                "amount DECIMAL(10, 2))"))
        connection.execute(text("CREATE TABLE support_calls (customer BIGINT, ts TIMESTAMPTZ)"))
        connection.execute(text("INSERT INTO orders VALUES (1, '2026-11-21 10:00:00+00', 30.5), "
                                "(2, '2026-11-21 11:00:00+00', 12)"))
        connection.execute(text("INSERT INTO support_calls VALUES (2, '2026-11-22 09:00+00')"))
    yield app
    get_warehouses(app).dispose()
    get_db(app).engine.dispose()


@pytest.fixture
def headers(shop: Flask) -> dict[str, str]:
    return auth_headers(shop)


@pytest.fixture
def api(shop: Flask) -> FlaskClient:
    return shop.test_client()


def put_sources(api: FlaskClient, headers: dict[str, str], events_sql: Any,
                name: str = "shop") -> Any:
    return api.put(f"/api/v1/warehouses/{name}/sources", json={"events_sql": events_sql},
                   headers=headers)


def test_warehouses_are_listed_with_dialect_and_never_their_url(
        api: FlaskClient, headers: dict[str, str], tmp_path: Path) -> None:
    response = api.get("/api/v1/warehouses", headers=headers)
    assert response.status_code == 200
    assert response.json["items"] == [{
        "name": "shop", "dialect": "duckdb", "timeout_seconds": 30.0, "sync_events": False,
        "last_sync_at": None, "last_sync_error": None,
        "lag": {"exposures": 0, "identity_links": 0},
        "sources": [], "experiments": []}]
    assert str(tmp_path) not in response.get_data(as_text=True)


def test_a_client_key_cannot_list_warehouses(shop: Flask, api: FlaskClient) -> None:
    response = api.get("/api/v1/warehouses", headers=auth_headers(shop, "client"))
    assert response.status_code == 403


def test_sources_are_probed_stored_and_audited(shop: Flask, api: FlaskClient,
                                               headers: dict[str, str]) -> None:
    response = put_sources(api, headers, [ORDERS_SQL, CALLS_SQL])
    assert response.status_code == 200, response.json
    sources = response.json["sources"]
    assert [source["events_sql"] for source in sources] == [ORDERS_SQL, CALLS_SQL]
    assert sources[0]["validation"]["ok"] is True
    assert sources[0]["validation"]["columns"] == {
        "unit_id": "VARCHAR", "occurred_at": "TIMESTAMP WITH TIME ZONE", "type": "VARCHAR",
        "name": "VARCHAR", "step": '"NULL"', "value": "DECIMAL(10,2)",
        "friction_kind": '"NULL"'}
    with get_db(shop).sessionmaker() as session:
        audit = session.scalars(select(AuditEntry).where(
            AuditEntry.action == "warehouse.sources")).one()
        assert (audit.target_id, len(audit.after["sources"]), audit.before) == (
            "shop", 2, {"sources": []})


@pytest.mark.parametrize(("events_sql", "messages"), [
    ("SELECT CAST(customer AS VARCHAR) AS unit_id, ts AS occurred_at FROM orders",
     ["column 'type' is missing", "column 'name' is missing", "column 'step' is missing",
      "column 'value' is missing", "column 'friction_kind' is missing"]),
    (ORDERS_SQL.replace("ts AS occurred_at", "CAST(ts AS VARCHAR) AS occurred_at")
     .replace("amount AS value", "'x' AS value"),
     ["column 'occurred_at' is VARCHAR, expected a timestamp",
      "column 'value' is VARCHAR, expected a number or NULL"]),
    (ORDERS_SQL.replace("CAST(customer AS VARCHAR)", "customer"),
     ["column 'unit_id' is BIGINT, expected text (e.g. CAST(x AS VARCHAR))"]),
])
def test_sources_without_the_event_columns_are_refused_naming_them(
        shop: Flask, api: FlaskClient, headers: dict[str, str], events_sql: str,
        messages: list[str]) -> None:
    assert put_sources(api, headers, ORDERS_SQL).status_code == 200
    response = put_sources(api, headers, events_sql)
    assert response.status_code == 422
    assert response.json["error"]["code"] == "validation_error"
    assert response.json["error"]["details"] == [{"field": "events_sql", "message": message}
                                                 for message in messages]
    with get_db(shop).sessionmaker() as session:  # the previous source is kept
        assert list(session.scalars(select(WarehouseSource.events_sql))) == [ORDERS_SQL]


def test_a_source_the_engine_refuses_is_a_422_with_its_message(
        api: FlaskClient, headers: dict[str, str]) -> None:
    response = put_sources(api, headers, [ORDERS_SQL, "SELECT * FROM refunds"])
    assert response.status_code == 422
    [detail] = response.json["error"]["details"]
    assert detail["field"] == "events_sql[1]"
    assert detail["message"].startswith("warehouse 'shop': Catalog Error: Table with name "
                                        "refunds does not exist")


def test_sources_of_an_unknown_warehouse_are_a_404(api: FlaskClient,
                                                   headers: dict[str, str]) -> None:
    response = put_sources(api, headers, ORDERS_SQL, name="lake")
    assert response.status_code == 404
    assert "PARCOURS_WAREHOUSE_LAKE_URL" in response.json["error"]["message"]


def test_an_empty_or_nul_source_is_refused(api: FlaskClient, headers: dict[str, str]) -> None:
    for events_sql in ("", [], "SELECT 1\x00"):
        response = put_sources(api, headers, events_sql)
        assert response.status_code == 422, events_sql
        assert response.json["error"]["details"][0]["field"].startswith("events_sql")


def test_an_experiment_names_a_configured_warehouse(api: FlaskClient,
                                                    headers: dict[str, str]) -> None:
    unknown = experiment_payload(key="in-lake", analysis={"warehouse": "lake"})
    response = api.post("/api/v1/experiments", json=unknown, headers=headers)
    assert response.status_code == 422
    assert [d["field"] for d in response.json["error"]["details"]] == ["analysis.warehouse"]
    known = experiment_payload(key="in-shop", analysis={"warehouse": "shop"})
    response = api.post("/api/v1/experiments", json=known, headers=headers)
    assert response.status_code == 201
    assert response.json["analysis"]["warehouse"] == "shop"
    patch = api.patch("/api/v1/experiments/in-shop", json={"analysis": {"warehouse": "nope"}},
                      headers=headers)
    assert patch.status_code == 422
    assert patch.json["error"]["details"][0]["field"] == "analysis.warehouse"
    assert api.post("/api/v1/experiments", json=experiment_payload(key="at-home"),
                    headers=headers).status_code == 201
    (shop,) = api.get("/api/v1/warehouses", headers=headers).json["items"]
    assert shop["experiments"] == [{"key": "in-shop", "name": known["name"],
                                    "status": "draft", "per_unit_values": {
                                        "kept": False, "why": "every event read at each "
                                        "analysis: only a running or paused experiment "
                                        "keeps its per-unit values"}}]


def test_the_listing_says_why_a_running_experiment_reads_every_event(
        shop: Flask, api: FlaskClient, headers: dict[str, str]) -> None:
    """Per experiment, whether its per-unit values are kept in the warehouse between
    analyses and, if not, why (the page shows it beside the experiment)."""
    known = experiment_payload(key="in-shop", analysis={"warehouse": "shop"})
    assert api.post("/api/v1/experiments", json=known, headers=headers).status_code == 201
    assert api.post("/api/v1/experiments/in-shop/start", headers=headers).status_code == 200

    def told() -> dict[str, Any]:
        (listed,) = api.get("/api/v1/warehouses", headers=headers).json["items"]
        return dict(listed["experiments"][0]["per_unit_values"])

    assert told() == {"kept": False, "why": "no events to read: no source, and Parcours's "
                                            "events are not copied"}
    assert put_sources(api, headers, ORDERS_SQL).status_code == 200
    why = "every event read at each analysis: events_sql sources have no ids to fold by"
    assert told() == {"kept": False, "why": why}
    page = logged_in(shop, "admin").get("/admin/warehouses").get_data(as_text=True)
    assert why in page


def test_the_warehouses_page_lists_the_experiments_analysed_there(
        shop: Flask, api: FlaskClient, headers: dict[str, str]) -> None:
    admin = logged_in(shop, "admin")
    page = admin.get("/admin/warehouses").get_data(as_text=True)
    assert "none analysed here yet" in page
    known = experiment_payload(key="in-shop", analysis={"warehouse": "shop"})
    assert api.post("/api/v1/experiments", json=known, headers=headers).status_code == 201
    page = admin.get("/admin/warehouses").get_data(as_text=True)
    cell = page[page.index('class="warehouse-experiments"'):]
    cell = cell[:cell.index("</dd>")]
    assert 'href="/admin/experiments/in-shop"' in cell and "draft" in cell


def test_the_seam_gives_synced_exposures_and_customer_events(
        shop: Flask, api: FlaskClient, headers: dict[str, str]) -> None:
    """What the pipeline will consume: exposures from Parcours joined to the customer's
    orders and support calls, inside the warehouse."""
    assert put_sources(api, headers, [ORDERS_SQL, CALLS_SQL]).status_code == 200
    payload = experiment_payload(layer=None, targeting=[], overrides={})
    assert api.post("/api/v1/experiments", json=payload, headers=headers).status_code == 201
    assert api.post("/api/v1/experiments/checkout-redesign/start",
                    headers=headers).status_code == 200
    client = auth_headers(shop, "client")
    for unit in ("1", "2", "3"):
        assert api.post("/api/v1/assign", json={"unit_id": unit, "experiments": [
            "checkout-redesign"]}, headers=client).status_code == 200
    with shop.app_context(), get_db(shop).sessionmaker() as session:
        assert sync_warehouse(session, "shop").exposures == 3
        engine, exposures, events = warehouse_sources(session, "shop")
        query = (select(exposures.c.unit_id, events.c.name, events.c.value)
                 .join(events, events.c.unit_id == exposures.c.unit_id)
                 .where(exposures.c.experiment_key == "checkout-redesign")
                 .order_by(exposures.c.unit_id, events.c.name))
        with engine.connect() as connection:
            rows = [(unit, name, None if value is None else float(value))
                    for unit, name, value in connection.execute(query)]
            count = connection.scalar(select(func.count()).select_from(exposures))
    assert rows == [("1", "order", 30.5), ("2", "order", 12.0), ("2", "support_call", None)]
    assert count == 3
    listed = api.get("/api/v1/warehouses", headers=headers).json["items"][0]
    assert listed["lag"] == {"exposures": 0, "identity_links": 0}
    assert listed["last_sync_at"] is not None


def test_the_lag_counts_identity_links_waiting_to_be_copied(
        shop: Flask, api: FlaskClient, headers: dict[str, str]) -> None:
    def lag() -> dict[str, int]:
        return api.get("/api/v1/warehouses", headers=headers).json["items"][0]["lag"]

    def identify(*pairs: tuple[str, str]) -> None:
        response = api.post("/api/v1/identify", headers=auth_headers(shop, "client"), json={
            "links": [{"anonymous_id": a, "user_id": u} for a, u in pairs]})
        assert response.status_code == 200, response.json

    identify(("visitor-1", "customer-1"), ("visitor-2", "customer-1"))
    assert lag() == {"exposures": 0, "identity_links": 2}  # never synced: both wait
    with shop.app_context(), get_db(shop).sessionmaker() as session:
        assert sync_warehouse(session, "shop").links == 2
    assert lag() == {"exposures": 0, "identity_links": 0}
    identify(("visitor-3", "customer-2"), ("visitor-1", "customer-1"))  # one new, one known
    assert lag() == {"exposures": 0, "identity_links": 1}
    admin = logged_in(shop, "admin")
    page = admin.get("/admin/warehouses").get_data(as_text=True)
    assert "0 exposures · 1 identity link" in page
    # Parcours keeps the mark (migration 0012): the lag never asks the warehouse.
    with shop.app_context(), get_db(shop).sessionmaker() as session:
        assert session.get(WarehouseSync, "shop").identity_links_through == 2
    assert lag() == {"exposures": 0, "identity_links": 1}


@pytest.mark.parametrize(("type_name", "kind"), [
    ("VARCHAR", "text"), ("String", "text"), ("LowCardinality(String)", "text"),
    ("Nullable(String)", "text"), ("TIMESTAMP WITH TIME ZONE", "time"),
    ("DateTime64(6, 'UTC')", "time"), ("DATE", "time"), ("Decimal(10, 2)", "number"),
    ("UInt8", "number"), ("DOUBLE", "number"), ('"NULL"', "null"),
    ("Nullable(Nothing)", "null"), ("BLOB", None),
])
def test_engine_type_names_map_to_kinds(type_name: str, kind: str | None) -> None:
    assert type_kind(type_name) == kind


def test_the_cli_syncs_one_warehouse_and_names_unknown_ones(shop: Flask) -> None:
    runner = shop.test_cli_runner()
    result = runner.invoke(args=["warehouse", "sync", "--name", "shop"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == ("shop: 0 exposure(s), 0 event(s) copied "
                                              "(through exposure 0, event 0)")
    assert "warehouse sync" in result.stderr  # the progress bar
    unknown = runner.invoke(args=["warehouse", "sync", "--name", "lake"])
    assert unknown.exit_code == 2
    assert "no warehouse named lake (configured: shop)" in unknown.output


def test_the_scheduler_syncs_configured_warehouses(shop: Flask, tmp_path: Path,
                                                   database_url: str) -> None:
    jobs = {job.name: job for job in registered_jobs(shop)}
    assert jobs["warehouse-sync"].interval_s == 300.0
    with shop.app_context():
        jobs["warehouse-sync"].run(shop)
    listed = shop.test_client().get("/api/v1/warehouses", headers=auth_headers(shop))
    assert listed.json["items"][0]["last_sync_at"] is not None
    bare = make_test_app(database_url, tmp_path / "bare")
    assert "warehouse-sync" not in {job.name for job in registered_jobs(bare)}
    get_db(bare).engine.dispose()


def test_the_edit_form_keeps_and_changes_the_warehouse(
        shop: Flask, api: FlaskClient, headers: dict[str, str]) -> None:
    """The form had no warehouse field: saving an experiment analysed in ``shop`` moved its
    analysis back to Parcours's database without a word."""
    known = experiment_payload(key="in-shop", analysis={"warehouse": "shop"})
    assert api.post("/api/v1/experiments", json=known, headers=headers).status_code == 201
    editor = logged_in(shop, "editor")
    page = editor.get("/admin/experiments/in-shop/edit").get_data(as_text=True)
    form = submitted_form(page, "experiment-form")
    assert form["analysis_warehouse"] == "shop"
    assert post(editor, "/admin/experiments/in-shop/edit", form).status_code == 302
    saved = api.get("/api/v1/experiments/in-shop", headers=headers).json
    assert saved["analysis"]["warehouse"] == "shop"
    form["analysis_warehouse"] = ""
    assert post(editor, "/admin/experiments/in-shop/edit", form).status_code == 302
    saved = api.get("/api/v1/experiments/in-shop", headers=headers).json
    assert saved["analysis"]["warehouse"] is None
