"""POST /api/v1/assign and /exposures (SPEC §4): stickiness, durability, caching, validation."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, text

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.errors import NotFound
from experiments.models import Exposure
from experiments.services import assignment
from experiments.services.accounts import create_api_key
from tests.conftest import auth_headers, make_test_app
from tests.factories import experiment_payload

FR = {"country": "FR"}


def start(client: Any, headers: dict[str, str], key: str = "checkout-redesign",
          **overrides: Any) -> None:
    created = client.post("/api/v1/experiments", json=experiment_payload(key, **overrides),
                          headers=headers)
    assert created.status_code == 201, created.get_json()
    assert client.post(f"/api/v1/experiments/{key}/start", headers=headers).status_code == 200


def assign(client: Any, headers: dict[str, str], unit_id: str, **body: Any) -> list[dict]:
    response = client.post("/api/v1/assign", json={"unit_id": unit_id, **body}, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["assignments"]


def variants_of(client: Any, headers: dict[str, str], units: list[str],
                **body: Any) -> dict[str, str]:
    return {unit: assign(client, headers, unit, **body)[0]["variant"] for unit in units}


def exposures(db: Any) -> dict[str, tuple[str, bool]]:
    db.expire_all()
    rows = db.execute(select(Exposure.unit_id, Exposure.variant_key, Exposure.is_override))
    return {row.unit_id: (row.variant_key, row.is_override) for row in rows}


def patch(client: Any, headers: dict[str, str], key: str = "checkout-redesign",
          **changes: Any) -> None:
    response = client.patch(f"/api/v1/experiments/{key}", json=changes, headers=headers)
    assert response.status_code == 200, response.get_json()


def test_assign_answers_the_spec_shape_and_stores_the_first_exposure(client, admin_headers,
                                                                      client_headers, db):
    start(client, admin_headers)
    response = client.post("/api/v1/assign", headers=client_headers, json={
        "unit_id": "visitor-42", "attributes": FR, "experiments": ["checkout-redesign"]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["unit_id"] == "visitor-42"
    [result] = body["assignments"]
    payloads = {"control": {}, "one-page": {"layout": "single"}}
    assert result["experiment"] == "checkout-redesign"
    assert result["payload"] == payloads[result["variant"]]
    assert (result["in_experiment"], result["reason"]) == (True, "assigned")
    assert exposures(db) == {"visitor-42": (result["variant"], False)}
    stored = db.scalar(select(Exposure))
    assert stored.attributes == FR and stored.exposed_at.tzinfo is not None


def test_omitted_experiments_means_every_running_one_and_unknown_keys_are_listed(
        client, admin_headers, client_headers):
    start(client, admin_headers, "a", layer=None)
    start(client, admin_headers, "b", layer=None)
    client.post("/api/v1/experiments", json=experiment_payload("draft-one"),
                headers=admin_headers)
    everything = assign(client, client_headers, "u1", attributes=FR)
    assert [result["experiment"] for result in everything] == ["a", "b"]
    named = assign(client, client_headers, "u1", attributes=FR,
                   experiments=["nope", "draft-one", "b"])
    assert [(r["experiment"], r["variant"], r["reason"]) for r in named[:2]] == [
        ("nope", None, "not_found"), ("draft-one", "control", "not_running")]
    assert named[1]["in_experiment"] is False and named[2]["reason"] == "assigned"


def test_track_false_records_nothing_until_the_exposure_is_sent(client, admin_headers,
                                                                client_headers, db):
    start(client, admin_headers)
    [first] = assign(client, client_headers, "u1", attributes=FR, track=False)
    assert first["in_experiment"] is True and exposures(db) == {}
    response = client.post("/api/v1/exposures", headers=client_headers, json={
        "experiment": "checkout-redesign", "unit_id": "u1", "attributes": FR})
    assert response.status_code == 200
    assert response.get_json() == {"unit_id": "u1", **first}
    assert exposures(db) == {"u1": (first["variant"], False)}


def test_exposures_of_an_unknown_experiment_are_404(client, client_headers):
    response = client.post("/api/v1/exposures", headers=client_headers,
                           json={"experiment": "nope", "unit_id": "u1"})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_excluded_units_get_control_and_are_not_recorded(client, admin_headers, client_headers,
                                                         db):
    start(client, admin_headers, traffic=0.0)
    [by_traffic] = assign(client, client_headers, "u1", attributes=FR)
    [by_targeting] = assign(client, client_headers, "u2", attributes={"country": "US"})
    assert (by_traffic["variant"], by_traffic["in_experiment"], by_traffic["reason"]) == (
        "control", False, "traffic")
    assert (by_targeting["variant"], by_targeting["reason"]) == ("control", "targeting")
    assert exposures(db) == {}


def test_raising_traffic_keeps_every_exposed_unit_in_its_variant(client, admin_headers,
                                                                 client_headers, db):
    start(client, admin_headers, traffic=0.2)
    units = [f"u{index}" for index in range(200)]
    before = {unit: assign(client, client_headers, unit, attributes=FR)[0] for unit in units}
    included = {unit for unit, result in before.items() if result["in_experiment"]}
    assert 15 < len(included) < 65 and set(exposures(db)) == included
    patch(client, admin_headers, traffic=0.6)
    after = {unit: assign(client, client_headers, unit, attributes=FR)[0] for unit in units}
    assert all(after[unit]["variant"] == before[unit]["variant"] for unit in included)
    assert included < {unit for unit, result in after.items() if result["in_experiment"]}


def test_changing_weights_or_targeting_after_exposure_moves_no_exposed_unit(
        client, admin_headers, client_headers, db):
    start(client, admin_headers)
    units = [f"u{index}" for index in range(60)]
    before = variants_of(client, client_headers, units, attributes=FR)
    assert set(before.values()) == {"control", "one-page"}
    variants = experiment_payload()["variants"]
    variants[0]["weight"], variants[1]["weight"] = 0.0, 1.0
    patch(client, admin_headers, variants=variants,
          targeting=[{"attribute": "country", "op": "eq", "value": "DE"}])
    assert variants_of(client, client_headers, units, attributes=FR) == before
    # Even without attributes and with track=false the stored variant wins.
    assert variants_of(client, client_headers, units, track=False) == before
    assert assign(client, client_headers, "newcomer", attributes={"country": "DE"})[0][
        "variant"] == "one-page"
    assert len(exposures(db)) == 61


def test_a_config_change_is_seen_at_once_by_the_worker_that_made_it(
        database_url, tmp_path, admin_headers):
    app = make_test_app(database_url, tmp_path, CONFIG_REFRESH_S=600)
    headers = auth_headers(app)
    client = app.test_client()
    start(client, headers)
    assert assign(client, headers, "u1", attributes=FR)[0]["reason"] == "assigned"
    patch(client, headers, traffic=0.0)
    assert assign(client, headers, "u2", attributes=FR)[0]["reason"] == "traffic"
    assert client.post("/api/v1/experiments/checkout-redesign/pause",
                       headers=headers).status_code == 200
    assert assign(client, headers, "u1", experiments=["checkout-redesign"])[0][
        "reason"] == "not_running"
    get_db(app).engine.dispose()


def test_another_workers_change_is_seen_after_the_refresh_interval(database_url, tmp_path):
    app = make_test_app(database_url, tmp_path, CONFIG_REFRESH_S=0.5)
    headers = auth_headers(app)
    client = app.test_client()
    start(client, headers)
    assert assign(client, headers, "u1", attributes=FR)[0]["reason"] == "assigned"
    # Another host's write: no ORM event reaches this process.
    with get_db(app).engine.begin() as connection:
        connection.execute(text("UPDATE experiments SET traffic = 0, version = version + 1"))
    assert assign(client, headers, "u2", attributes=FR)[0]["reason"] == "assigned"
    time.sleep(0.6)
    assert assign(client, headers, "u3", attributes=FR)[0]["reason"] == "traffic"
    assert assign(client, headers, "u2", attributes=FR)[0]["reason"] == "assigned"
    get_db(app).engine.dispose()


def test_override_units_are_recorded_but_flagged(client, admin_headers, client_headers, db):
    start(client, admin_headers, traffic=0.0)
    [result] = assign(client, client_headers, "qa-user-1")
    assert (result["variant"], result["in_experiment"], result["reason"]) == (
        "one-page", True, "override")
    assert exposures(db) == {"qa-user-1": ("one-page", True)}


def test_overrides_win_over_a_stored_exposure_which_leaves_the_analysis(
        client, admin_headers, client_headers, db):
    start(client, admin_headers)
    units = [f"u{index}" for index in range(30)]
    control_unit = next(u for u, v in variants_of(client, client_headers, units,
                                                  attributes=FR).items() if v == "control")
    patch(client, admin_headers, overrides={control_unit: "one-page"})
    [result] = assign(client, client_headers, control_unit, attributes=FR)
    assert (result["variant"], result["reason"]) == ("one-page", "override")
    stored = exposures(db)
    assert stored[control_unit] == ("control", True)  # its first exposure, now flagged
    assert sum(flagged for _variant, flagged in stored.values()) == 1


def test_two_experiments_of_a_layer_never_share_a_unit(client, admin_headers, client_headers,
                                                       db):
    start(client, admin_headers, "first", layer="checkout")
    start(client, admin_headers, "second", layer="checkout")
    units = [f"u{index}" for index in range(80)]
    for unit in units:
        results = assign(client, client_headers, unit, attributes=FR)
        assert sum(result["in_experiment"] for result in results) == 1
        assert {r["reason"] for r in results if not r["in_experiment"]} == {"layer"}
    # One experiment at a time, in the other order: still exclusive.
    for unit in (f"w{index}" for index in range(40)):
        second = assign(client, client_headers, unit, attributes=FR, experiments=["second"])[0]
        first = assign(client, client_headers, unit, attributes=FR, experiments=["first"])[0]
        assert second["in_experiment"] != first["in_experiment"]
    db.expire_all()
    per_unit = db.execute(select(Exposure.unit_id, func.count()).group_by(Exposure.unit_id))
    counts = dict(per_unit.all())
    assert len(counts) == 120 and set(counts.values()) == {1}


def test_a_concluded_experiment_serves_its_shipped_winner(client, admin_headers,
                                                          client_headers):
    start(client, admin_headers, "shipped", layer=None)
    start(client, admin_headers, "rolled-back", layer=None)
    client.post("/api/v1/experiments/shipped/conclude", headers=admin_headers,
                json={"outcome": "ship", "winner": "one-page"})
    client.post("/api/v1/experiments/rolled-back/conclude", headers=admin_headers,
                json={"outcome": "rollback"})
    assert assign(client, client_headers, "u1") == []
    results = assign(client, client_headers, "u1", experiments=["shipped", "rolled-back"])
    assert [(r["variant"], r["payload"], r["in_experiment"], r["reason"]) for r in results] == [
        ("one-page", {"layout": "single"}, False, "concluded"),
        ("control", {}, False, "concluded")]


def test_the_service_backdates_exposures_with_now(app, client, admin_headers, db):
    start(client, admin_headers)
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with get_db(app).sessionmaker() as session:
        [result] = assignment.assign(session, unit_id="sim-1", attributes=FR, now=moment)
        assert result.in_experiment
        with pytest.raises(NotFound):
            assignment.record_exposure(session, experiment_key="nope", unit_id="sim-1")
    assert db.scalar(select(Exposure.exposed_at)) == moment


@pytest.mark.parametrize(("body", "field"), [
    ({}, "unit_id"),
    ({"unit_id": ""}, "unit_id"),
    ({"unit_id": 42}, "unit_id"),
    ({"unit_id": "x" * 201}, "unit_id"),
    ({"unit_id": "nul\u0000byte"}, "unit_id"),
    ({"unit_id": "u", "attributes": []}, "attributes"),
    ({"unit_id": "u", "attributes": {"a": "\u0000"}}, "attributes"),
    ({"unit_id": "u", "attributes": {"a": "x" * 9000}}, "attributes"),
    ({"unit_id": "u", "attributes": {"deep": [[[[[[[1]]]]]]]}}, "attributes"),
    ({"unit_id": "u", "experiments": "checkout-redesign"}, "experiments"),
    ({"unit_id": "u", "experiments": [1]}, "experiments[0]"),
    ({"unit_id": "u", "track": "yes"}, "track"),
    ({"unit_id": "u", "surprise": 1}, "surprise"),
])
def test_invalid_assign_bodies_are_422_naming_the_field_and_store_nothing(
        client, admin_headers, client_headers, db, body, field):
    start(client, admin_headers)
    response = client.post("/api/v1/assign", json=body, headers=client_headers)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert field in {detail["field"] for detail in error["details"]}
    assert exposures(db) == {}


@pytest.mark.parametrize(("raw", "content_type", "status", "code"), [
    (b'{"unit_id": ', "application/json", 400, "invalid_json"),
    (b'{"unit_id": "u", "attributes": {"a": NaN}}', "application/json", 422,
     "validation_error"),
    # A lone surrogate escape is replaced (test_events_api), an unterminated one is not JSON.
    (b'{"unit_id": "\\ud800', "application/json", 400, "invalid_json"),
    (b"unit_id=u", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
])
def test_malformed_requests_get_the_error_envelope(client, client_headers, raw, content_type,
                                                   status, code):
    response = client.post("/api/v1/assign", data=raw, content_type=content_type,
                           headers=client_headers)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_assignment_needs_a_key(client):
    response = client.post("/api/v1/assign", json={"unit_id": "u"})
    assert response.status_code == 401


def test_odd_attribute_types_against_every_op_never_fail(client, admin_headers, client_headers):
    rules = [{"attribute": "a", "op": op, "value": value} for op, value in [
        ("eq", "x"), ("neq", 1), ("in", ["x", 1]), ("not_in", [True]), ("gt", 1), ("gte", "a"),
        ("lt", 2.5), ("lte", "z"), ("contains", "x"), ("regex", "^x"), ("exists", True)]]
    for index, rule in enumerate(rules):
        start(client, admin_headers, f"op-{index}", layer=None, targeting=[rule])
    for value in ("x", 1, 2.5, True, None, [], ["x"], {"k": "v"}, "é\u2028", -10**30):
        results = assign(client, client_headers, "u", attributes={"a": value})
        assert len(results) == len(rules)
        assert {r["reason"] for r in results} <= {"assigned", "targeting"}


def test_assignments_are_counted_for_prometheus(client, admin_headers, client_headers):
    start(client, admin_headers, traffic=0.0)
    assign(client, client_headers, "u1", attributes=FR)
    text_body = client.get("/metrics").get_data(as_text=True)
    assert 'parcours_assignments_total{reason="traffic"}' in text_body


def test_racing_first_requests_store_one_exposure_and_agree_on_the_variant(
        postgres_database_url, tmp_path):
    """16 threads on two workers whose cached weights differ: the database decides, once."""
    setup = make_test_app(postgres_database_url, tmp_path / "setup")
    with get_db(setup).session() as session:
        key = create_api_key(session, name="k", role="admin", principal=SYSTEM)[1]
    start(setup.test_client(), {"Authorization": f"Bearer {key}"}, targeting=[])
    stale = _warm_worker(postgres_database_url, tmp_path / "stale")
    with get_db(setup).engine.begin() as connection:  # another host rebalanced the weights
        connection.execute(text("UPDATE variants SET weight = CASE WHEN is_control "
                                "THEN 0.1 ELSE 0.9 END"))
        connection.execute(text("UPDATE experiments SET version = version + 1"))
    fresh = _warm_worker(postgres_database_url, tmp_path / "fresh")
    units = [f"unit-{index}" for index in range(500)]
    seen: dict[str, set[str]] = defaultdict(set)
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def worker(index: int) -> None:
        app = (stale, fresh)[index % 2]
        order = random.Random(index).sample(units, len(units))
        with app.app_context(), get_db(app).sessionmaker() as session:
            barrier.wait()
            for unit in order:
                [result] = assignment.assign(session, unit_id=unit)
                with lock:
                    seen[unit].add(result.variant)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with get_db(setup).sessionmaker() as session:
        stored = dict(session.execute(select(Exposure.unit_id, Exposure.variant_key)).all())
    assert len(stored) == 500
    assert all(seen[unit] == {stored[unit]} for unit in units)
    for app in (setup, stale, fresh):
        get_db(app).engine.dispose()


def _warm_worker(url: str, instance: Any) -> Flask:
    """A second 'worker': its own app, engine and config cache, loaded now, refreshed rarely."""
    app = make_test_app(url, instance, CONFIG_REFRESH_S=600)
    with app.app_context(), get_db(app).sessionmaker() as session:
        assignment.assign(session, unit_id="warm-up", track=False)
    return app
