"""Holdouts (SPEC §12): groups, the ``holdout`` reason, holdout exposures and the resource."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from mmh3 import hash as mmh3_hash
from sqlalchemy import func, select

from experiments import signals
from experiments.db import get_db
from experiments.models import AuditEntry, Exposure, HoldoutExposure
from experiments.services import assignment, config_cache
from experiments.services.holdouts import holdout_group
from tests.conftest import auth_headers, make_test_app
from tests.factories import experiment_payload

HOLDOUT = {"key": "h2027", "name": "2027 holdout", "percent": 0.05,
           "scope": {"experiments": ["*"]},
           "metrics": [{"key": "purchase", "kind": "conversion", "event": "purchase",
                        "role": "primary"}]}


def holdout_body(**overrides: Any) -> dict[str, Any]:
    return {**HOLDOUT, **overrides}


def start(client: Any, headers: dict[str, str], key: str, **overrides: Any) -> None:
    body = experiment_payload(key, **{"layer": None, "targeting": [], "overrides": {},
                                      **overrides})
    assert client.post("/api/v1/experiments", json=body, headers=headers).status_code == 201
    assert client.post(f"/api/v1/experiments/{key}/start", headers=headers).status_code == 200


def units_in(group: str, count: int, key: str = "h2027", percent: float = 0.05) -> list[str]:
    found = (f"u{index}" for index in range(100_000))
    return [unit for unit in found if holdout_group(key, unit, percent) == group][:count]


def test_groups_are_murmur3_of_the_documented_string_with_seed_4():
    for unit in ("visitor-1", "visitor-2", "é-unit", "x" * 200):
        u = mmh3_hash(f"holdout:h2027:{unit}", 4, signed=False) / 2 ** 32
        expected = "holdout" if u < 0.05 else "measure" if 0.5 <= u < 0.55 else "general"
        assert holdout_group("h2027", unit, 0.05) == expected


@pytest.fixture
def unsynced_app(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    """The app, with PostgreSQL commits not waiting for their WAL flush: test speed only
    (4,000 single-unit durable writes would otherwise wait for 4,000 flushes)."""
    if database_url.startswith("postgresql"):
        database_url += "?options=" + quote("-csynchronous_commit=off")
    app = make_test_app(database_url, tmp_path)
    yield app
    get_db(app).engine.dispose()


def test_40000_units_in_process_split_within_3_sd_and_none_held_is_stored_anywhere(
        unsynced_app):
    app = unsynced_app
    client, admin_headers = app.test_client(), auth_headers(app)
    start(client, admin_headers, "shipped")
    assert client.post("/api/v1/experiments/shipped/conclude", headers=admin_headers, json={
        "outcome": "ship", "winner": "one-page", "acknowledge_risks": True}).status_code == 200
    start(client, admin_headers, "before")
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    start(client, admin_headers, "after")  # created after the holdout: `*` covers it too
    units = [f"visitor-{index}" for index in range(40_000)]
    with get_db(app).sessionmaker() as session:
        # The concluded experiment answers from memory: only measured units are written.
        answers = {unit: assignment.assign(session, unit_id=unit, experiment_keys=["shipped"])[0]
                   for unit in units}
        held = [unit for unit, answer in answers.items() if answer.reason == "holdout"]
        measured = [unit for unit in units if holdout_group("h2027", unit, 0.05) == "measure"]
        # Every running experiment, for the held units and a sample of measured ones.
        running = {unit: assignment.assign(session, unit_id=unit)
                   for unit in held + measured[:100]}
    sd = math.sqrt(40_000 * 0.05 * 0.95)  # ≈ 43.6: SPEC's "2,000 ± 130" is 3 SD
    assert abs(len(held) - 2_000) < 3 * sd and abs(len(measured) - 2_000) < 3 * sd
    assert {answers[unit].variant for unit in held} == {"control"}
    assert {(answers[unit].variant, answers[unit].reason) for unit in measured} == {
        ("one-page", "concluded")}
    for unit in held:
        assert [(r.experiment, r.variant, r.reason) for r in running[unit]] == [
            ("before", "control", "holdout"), ("after", "control", "holdout")]
    assert {r.reason for unit in measured[:100] for r in running[unit]} == {"assigned"}
    with get_db(app).sessionmaker() as db:
        stored = set(db.scalars(select(Exposure.unit_id)).all())
        exposed = db.execute(select(HoldoutExposure.group, func.count())
                             .group_by(HoldoutExposure.group)).all()
    assert not stored & set(held)
    assert stored == set(measured[:100])
    assert dict(exposed) == {"holdout": len(held), "measure": len(measured)}


def test_create_validates_percent_scope_and_metrics(client, admin_headers):
    for body, field in [(holdout_body(percent=0.3), "percent"),
                        (holdout_body(percent=0), "percent"),
                        (holdout_body(scope={}), "scope"),
                        (holdout_body(scope={"experiments": ["*"], "layers": ["x"]}), "scope"),
                        (holdout_body(metrics=[{"key": "m", "kind": "conversion"}]), "metrics[0]"),
                        (holdout_body(metrics=[{**HOLDOUT["metrics"][0], "role": "secondary"}]),
                         "metrics")]:
        response = client.post("/api/v1/holdouts", json=body, headers=admin_headers)
        assert response.status_code == 422, body
        assert any(d["field"].startswith(field) for d in response.json["error"]["details"]), \
            response.json
    assert client.get("/api/v1/holdouts", headers=admin_headers).json["items"] == []


def test_holdout_lifecycle_is_audited_and_signalled(client, admin_headers, db):
    sent: list[str] = []

    def receive(_sender: Any, *, event_type: str, data: dict[str, Any]) -> None:
        sent.append(f"{event_type}:{data['holdout']['key']}")

    signals.holdout_created.connect(receive)
    signals.holdout_concluded.connect(receive)
    try:
        created = client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers)
        assert created.status_code == 201
        assert created.json["status"] == "running"
        assert created.json["units"] == {"holdout": 0, "measure": 0}
        assert client.post("/api/v1/holdouts", json=HOLDOUT,
                           headers=admin_headers).status_code == 409
        patched = client.patch("/api/v1/holdouts/h2027", json={"percent": 0.1, "name": "H"},
                               headers=admin_headers)
        assert (patched.status_code, patched.json["percent"]) == (200, 0.1)
        listed = client.get("/api/v1/holdouts", headers=admin_headers).json["items"]
        assert [item["key"] for item in listed] == ["h2027"]
        concluded = client.post("/api/v1/holdouts/h2027/conclude", headers=admin_headers)
        assert concluded.json["status"] == "concluded" and concluded.json["concluded_at"]
        assert client.post("/api/v1/holdouts/h2027/conclude",
                           headers=admin_headers).status_code == 409
        assert client.get("/api/v1/holdouts/nope", headers=admin_headers).status_code == 404
    finally:
        signals.holdout_created.disconnect(receive)
        signals.holdout_concluded.disconnect(receive)
    assert sent == ["holdout.created:h2027", "holdout.concluded:h2027"]
    actions = db.scalars(select(AuditEntry.action).order_by(AuditEntry.id)).all()
    assert [a for a in actions if a.startswith("holdout.")] == [
        "holdout.create", "holdout.update", "holdout.conclude"]


def test_holdout_units_get_control_and_are_stored_nowhere_even_in_later_experiments(
        app, client, admin_headers, db):
    start(client, admin_headers, "before")
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    start(client, admin_headers, "after")  # created after the holdout: `*` covers it too
    held, measured = units_in("holdout", 30), units_in("measure", 30)
    general = units_in("general", 30)
    with get_db(app).sessionmaker() as session:
        for unit in held + measured + general:
            results = assignment.assign(session, unit_id=unit)
            reasons = {result.reason for result in results}
            if unit in held:
                assert reasons == {"holdout"}
                assert {r.variant for r in results} == {"control"}
                assert not any(r.in_experiment for r in results)
            else:
                assert reasons == {"assigned"}
    db.expire_all()
    stored_units = set(db.scalars(select(Exposure.unit_id)).all())
    assert not stored_units & set(held)
    assert stored_units == set(measured) | set(general)
    assert db.scalar(select(func.count()).select_from(Exposure)) == 2 * 60
    exposed = dict(db.execute(select(HoldoutExposure.unit_id, HoldoutExposure.group)).all())
    assert exposed == {**dict.fromkeys(held, "holdout"), **dict.fromkeys(measured, "measure")}


def test_a_holdout_unit_already_exposed_is_answered_holdout_and_overrides_still_win(
        client, admin_headers, client_headers):
    held = units_in("holdout", 2)
    start(client, admin_headers, "exp", overrides={held[1]: "one-page"})
    first = client.post("/api/v1/assign", json={"unit_id": held[0]}, headers=client_headers)
    assert first.json["assignments"][0]["reason"] == "assigned"
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    answers = [client.post("/api/v1/assign", json={"unit_id": unit}, headers=client_headers)
               .json["assignments"][0] for unit in held]
    assert [(a["variant"], a["reason"]) for a in answers] == [
        ("control", "holdout"), ("one-page", "override")]


def test_a_shipped_winner_reaches_measure_units_but_not_holdout_units(
        client, admin_headers, client_headers):
    start(client, admin_headers, "shipped")
    assert client.post("/api/v1/experiments/shipped/conclude", headers=admin_headers, json={
        "outcome": "ship", "winner": "one-page", "acknowledge_risks": True}).status_code == 200
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    for group, expected in [("holdout", ("control", "holdout")),
                            ("measure", ("one-page", "concluded")),
                            ("general", ("one-page", "concluded"))]:
        for unit in units_in(group, 10):
            answer = client.post("/api/v1/assign", json={
                "unit_id": unit, "experiments": ["shipped"]}, headers=client_headers)
            result = answer.json["assignments"][0]
            assert (result["variant"], result["reason"]) == expected, (group, unit)
    units = client.get("/api/v1/holdouts/h2027", headers=admin_headers).json["units"]
    assert units == {"holdout": 10, "measure": 10}


def test_holdout_exposures_are_stored_once_and_freeze_percent(
        app, client, admin_headers, client_headers, db):
    start(client, admin_headers, "exp")
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    unit = units_in("measure", 1)[0]
    for _ in range(3):
        assert client.post("/api/v1/assign", json={"unit_id": unit},
                           headers=client_headers).status_code == 200
    # Another worker (a cold cache) must not store it again either.
    config_cache._caches.clear()
    assert client.post("/api/v1/assign", json={"unit_id": unit},
                       headers=client_headers).status_code == 200
    assert client.post("/api/v1/assign", json={"unit_id": units_in("general", 1)[0]},
                       headers=client_headers).status_code == 200
    db.expire_all()
    assert db.execute(select(HoldoutExposure.unit_id, HoldoutExposure.group)).all() == [
        (unit, "measure")]
    frozen = client.patch("/api/v1/holdouts/h2027", json={"percent": 0.1}, headers=admin_headers)
    assert frozen.status_code == 409
    assert frozen.json["error"]["details"][0]["field"] == "percent"
    assert client.patch("/api/v1/holdouts/h2027", json={"percent": 0.05},
                        headers=admin_headers).status_code == 200


def test_track_false_stores_no_holdout_exposure_until_the_exposure_is_recorded(
        client, admin_headers, client_headers, db):
    start(client, admin_headers, "exp")
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    unit = units_in("holdout", 1)[0]
    answer = client.post("/api/v1/assign", json={"unit_id": unit, "track": False},
                         headers=client_headers)
    assert answer.json["assignments"][0]["reason"] == "holdout"
    assert db.scalar(select(func.count()).select_from(HoldoutExposure)) == 0
    recorded = client.post("/api/v1/exposures", json={"experiment": "exp", "unit_id": unit},
                           headers=client_headers)
    assert recorded.status_code == 200, recorded.json
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(HoldoutExposure)) == 1
    assert db.scalar(select(func.count()).select_from(Exposure)) == 0


def test_scope_by_layer_or_keys_leaves_other_experiments_alone(
        client, admin_headers, client_headers):
    start(client, admin_headers, "listed")
    start(client, admin_headers, "other")
    body = experiment_payload("layered", layer="checkout", targeting=[], overrides={})
    assert client.post("/api/v1/experiments", json=body, headers=admin_headers).status_code == 201
    assert client.post("/api/v1/experiments/layered/start",
                       headers=admin_headers).status_code == 200
    for key, scope in [("hk", {"experiments": ["listed"]}), ("hl", {"layers": ["checkout"]})]:
        assert client.post("/api/v1/holdouts", json=holdout_body(key=key, scope=scope),
                           headers=admin_headers).status_code == 201
    unit = next(u for u in units_in("holdout", 200, key="hk")
                if holdout_group("hl", u, 0.05) == "holdout")
    answers = client.post("/api/v1/assign", json={"unit_id": unit},
                          headers=client_headers).json["assignments"]
    reasons = {a["experiment"]: a["reason"] for a in answers}
    assert reasons["listed"] == "holdout" and reasons["layered"] == "holdout"
    assert reasons["other"] != "holdout"


def test_ofrep_single_evaluation_honours_the_holdout(client, admin_headers, client_headers, db):
    start(client, admin_headers, "exp", variants=[
        {"key": "control", "weight": 0.5, "is_control": True, "payload": {}},
        {"key": "one-page", "weight": 0.5, "payload": {}}])
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    for unit in units_in("holdout", 5):
        answer = client.post("/ofrep/v1/evaluate/flags/exp", json={
            "context": {"targetingKey": unit}}, headers=client_headers)
        assert (answer.status_code, answer.json["variant"], answer.json["reason"]) == (
            200, "control", "DEFAULT")
    assert db.scalar(select(func.count()).select_from(HoldoutExposure)) == 5
    assert db.scalar(select(func.count()).select_from(Exposure)) == 0


def test_report_has_the_report_shape_with_units_and_srm_and_says_it_is_not_computed(
        client, admin_headers, client_headers):
    start(client, admin_headers, "exp")
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    for unit in units_in("holdout", 4) + units_in("measure", 6):
        client.post("/api/v1/assign", json={"unit_id": unit}, headers=client_headers)
    report = client.get("/api/v1/holdouts/h2027/report", headers=admin_headers)
    assert report.status_code == 200
    assert report.json["units"] == {"holdout": 4, "measure": 6}
    assert report.json["srm"]["p_value"] == pytest.approx(0.527089, abs=1e-6)  # χ² = 0.4
    assert report.json["error"] == "report not computed yet"
    assert report.json["metrics"] == [] and report.json["funnel"] == []


def test_simulated_held_out_visitors_walk_the_control_journey_uncounted(
        app, client, admin_headers, db):
    from experiments.models import Event
    from experiments.services.simulate import SimulationPlan, simulate_traffic

    start(client, admin_headers, "exp")
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    with get_db(app).sessionmaker() as session:
        counts = simulate_traffic(session, "exp", SimulationPlan(units=400, seed=3, days=1))
    db.expire_all()
    groups = dict(db.execute(select(HoldoutExposure.unit_id, HoldoutExposure.group)).all())
    held = {unit for unit, group in groups.items() if group == "holdout"}
    assert held and sum(counts.values()) == 400 - len(held)
    assert db.scalar(select(func.count()).select_from(Exposure)) == 400 - len(held)
    assert set(db.scalars(select(Event.unit_id).where(Event.unit_id.in_(held)))) == held


def test_erasing_a_unit_deletes_its_holdout_exposures(client, admin_headers, client_headers, db):
    start(client, admin_headers, "exp")
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    unit, other = units_in("measure", 2)
    for visitor in (unit, other):
        client.post("/api/v1/assign", json={"unit_id": visitor}, headers=client_headers)
    assert client.delete(f"/api/v1/units/{unit}", headers=admin_headers).status_code == 200
    db.expire_all()
    assert db.scalars(select(HoldoutExposure.unit_id)).all() == [other]
    audit = db.scalars(select(AuditEntry).where(AuditEntry.action == "unit.erased")).one()
    assert audit.after["holdout_exposures"] == 1


def test_a_bad_patch_is_422_naming_the_field_and_changes_nothing(client, admin_headers):
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    for body, field in [({"scope": {"layers": []}}, "scope.layers"), ({"percent": 0.25}, "percent"),
                        ({"metrics": [HOLDOUT["metrics"][0]] * 2}, "metrics[1].key")]:
        refused = client.patch("/api/v1/holdouts/h2027", json=body, headers=admin_headers)
        assert refused.status_code == 422
        assert refused.json["error"]["details"][0]["field"] == field
    kept = client.get("/api/v1/holdouts/h2027", headers=admin_headers).json
    assert (kept["percent"], kept["scope"], len(kept["metrics"])) == (0.05, HOLDOUT["scope"], 1)
    client.post("/api/v1/holdouts/h2027/conclude", headers=admin_headers)
    frozen = client.patch("/api/v1/holdouts/h2027", json={"scope": {"layers": ["x"]}},
                          headers=admin_headers)
    assert frozen.status_code == 409 and frozen.json["error"]["details"][0]["field"] == "scope"


def test_units_in_general_cost_no_round_trip_and_returning_measured_ones_neither(
        app, client, admin_headers, monkeypatch):
    from sqlalchemy import event

    start(client, admin_headers, "shipped")
    assert client.post("/api/v1/experiments/shipped/conclude", headers=admin_headers, json={
        "outcome": "ship", "winner": "one-page", "acknowledge_risks": True}).status_code == 200
    assert client.post("/api/v1/holdouts", json=HOLDOUT, headers=admin_headers).status_code == 201
    engine = get_db(app).engine
    measured = units_in("holdout", 3) + units_in("measure", 3)
    statements: list[str] = []
    with get_db(app).sessionmaker() as session:
        for unit in measured:  # first visits: one write each, remembered
            assignment.assign(session, unit_id=unit, experiment_keys=["shipped"])
        config_cache.cache_for(session).refresh_s = 3600.0  # no re-validation in the window
        assignment.assign(session, unit_id="warm-up", experiment_keys=["shipped"])
        def record(*args: Any) -> None:
            statements.append(args[2])

        def no_store(_session: Any) -> None:
            raise AssertionError("the exposure store was used")

        monkeypatch.setattr(assignment, "store_for", no_store)  # PostgreSQL writes bypass the ORM
        event.listen(engine, "before_cursor_execute", record)
        try:
            for unit in units_in("general", 50) + measured:
                assignment.assign(session, unit_id=unit, experiment_keys=["shipped"])
        finally:
            event.remove(engine, "before_cursor_execute", record)
    assert statements == []
