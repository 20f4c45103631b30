"""The holdout report through the analysis pipeline (SPEC §12), on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from experiments.db import get_db
from experiments.jobs import run_analysis
from experiments.models import Event, Holdout, HoldoutExposure, HoldoutReport, IdentityLink
from experiments.services import holdout_reports
from experiments.services.holdout_reports import analyze_running_holdouts
from experiments.services.pipeline.dialects import refresh_statistics
from tests.factories import experiment_payload
from tests.test_admin_support import logged_in

T0 = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
UNITS = 1200  # per group
METRICS = [{"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary"},
           {"key": "views", "kind": "count", "event": "page_view", "role": "secondary"}]


def create_holdout(client: Any, headers: dict[str, str], key: str, **scope: Any) -> None:
    body = {"key": key, "name": key, "percent": 0.05,
            "scope": scope or {"experiments": ["*"]}, "metrics": METRICS}
    assert client.post("/api/v1/holdouts", json=body, headers=headers).status_code == 201


def create_experiment(client: Any, headers: dict[str, str], key: str,
                      journey: list[str]) -> None:
    body = experiment_payload(key, journey=journey, layer=None, targeting=[], overrides={},
                              metrics=METRICS[:1])
    response = client.post("/api/v1/experiments", json=body, headers=headers)
    assert response.status_code == 201, response.json


def simulate(db: Any, key: str, rates: dict[str, float], seed: int) -> dict[str, int]:
    """UNITS exposures per group; each unit buys with its group's rate, 1 to 40 days after
    its exposure (mostly past any conversion window), and some bought before it (never
    counted). Journey steps: everyone lands, buyers reach the cart. Returns the purchasers
    the report must count per group."""
    rng = random.Random(seed)
    holdout_id = db.scalar(select(Holdout.id).where(Holdout.key == key))
    exposures, events, buyers = [], [], dict.fromkeys(rates, 0)
    for group, rate in rates.items():
        for index in range(UNITS):
            unit = f"{key}-{group}-{index}"
            exposed = T0 + timedelta(hours=rng.uniform(0, 72))
            exposures.append({"holdout_id": holdout_id, "unit_id": unit, "group": group,
                              "exposed_at": exposed})
            stamps = [("page_view", "landing", exposed + timedelta(minutes=1))]
            if rng.random() < rate:
                buyers[group] += 1
                bought = exposed + timedelta(days=rng.uniform(1, 40))
                stamps += [("purchase", None, bought), ("page_view", "cart", bought)]
            if rng.random() < 0.1:  # before the exposure: never counted
                stamps.append(("purchase", None, exposed - timedelta(hours=2)))
            events += [{"event_id": f"{unit}-{number}", "unit_id": unit, "type": "track",
                        "name": name, "step": step, "occurred_at": at}
                       for number, (name, step, at) in enumerate(stamps)]
    db.execute(insert(HoldoutExposure), exposures)
    db.execute(insert(Event), events)
    db.commit()
    return buyers


def test_the_report_detects_a_cumulative_effect_and_an_aa_holdout_shows_none(
        client, admin_headers, db):
    create_experiment(client, admin_headers, "first", ["landing", "cart"])
    create_experiment(client, admin_headers, "second", ["cart", "payment", "thanks"])
    create_experiment(client, admin_headers, "elsewhere", ["search"])
    create_holdout(client, admin_headers, "h-effect", experiments=["first", "second"])
    create_holdout(client, admin_headers, "h-aa", experiments=["first", "second"])
    buyers = simulate(db, "h-effect", {"holdout": 0.20, "measure": 0.30}, seed=1)
    simulate(db, "h-aa", {"holdout": 0.24, "measure": 0.24}, seed=2)

    response = client.post("/api/v1/holdouts/h-effect/analyze", headers=admin_headers)
    assert response.status_code == 200
    report = response.json
    assert report["error"] is None and report["holdout"] == "h-effect"
    assert report["units"] == {"holdout": UNITS, "measure": UNITS}
    assert report["srm"]["p_value"] == pytest.approx(1.0) and not report["srm"]["detected"]
    # No link names its units: every unit is a cluster of its own.
    assert report["identity"] == {"clusters": 2 * UNITS, "linked_units": 0, "conflicts": 0}
    purchase = report["metrics"][0]
    assert purchase["key"] == "purchase"
    # Every purchase from exposure on (up to 40 days later), none before it.
    assert {v["variant"]: v["conversions"] for v in purchase["variants"]} == buyers
    (comparison,) = purchase["comparisons"]
    assert comparison["variant"] == "measure"
    assert comparison["absolute_effect"] == pytest.approx(
        (buyers["measure"] - buyers["holdout"]) / UNITS)
    assert comparison["absolute_effect"] > 0.06 and comparison["significant"]
    assert comparison["adjusted_p_value"] < 0.05
    # Funnel over the union of in-scope journeys, in order of first appearance.
    assert [step["step"] for step in report["funnel"]] == ["landing", "cart", "payment",
                                                            "thanks"]
    assert report["funnel"][0]["variants"]["measure"]["units"] == UNITS
    assert report["funnel"][1]["variants"]["holdout"]["units"] == buyers["holdout"]
    assert report["timeline"] and report["friction_points"] == []
    # GET returns the stored report.
    stored = client.get("/api/v1/holdouts/h-effect/report", headers=admin_headers).json
    assert stored["id"] == report["id"] and stored["metrics"] == report["metrics"]

    aa = client.post("/api/v1/holdouts/h-aa/analyze", headers=admin_headers).json
    (aa_comparison,) = aa["metrics"][0]["comparisons"]
    assert not aa_comparison["significant"] and aa_comparison["adjusted_p_value"] > 0.05
    assert not aa["srm"]["detected"]


def test_the_analysis_job_computes_every_running_holdout_despite_one_failure(
        app, client, admin_headers, db, monkeypatch):
    create_experiment(client, admin_headers, "first", ["landing", "cart"])
    for key in ("h-a", "h-b", "h-c"):
        create_holdout(client, admin_headers, key)
    simulate(db, "h-b", {"holdout": 0.2, "measure": 0.2}, seed=3)
    assert client.post("/api/v1/holdouts/h-c/conclude", headers=admin_headers).status_code == 200
    real = holdout_reports.build_report

    def broken(subject: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if subject.key == "h-a":
            raise ZeroDivisionError("boom")
        return real(subject, *args, **kwargs)

    monkeypatch.setattr(holdout_reports, "build_report", broken)
    results = analyze_running_holdouts(get_db(app).session)
    assert results == {"h-a": "error: ZeroDivisionError: boom", "h-b": "ok"}
    stored = {row.holdout_id: row.body for row in db.scalars(select(HoldoutReport))}
    assert len(stored) == 2  # the concluded holdout is not analysed
    ids = {key: db.scalar(select(Holdout.id).where(Holdout.key == key)) for key in ("h-a", "h-b")}
    assert stored[ids["h-a"]]["error"] == "ZeroDivisionError: boom"
    assert stored[ids["h-b"]]["units"] == {"holdout": UNITS, "measure": UNITS}
    failed = client.get("/api/v1/holdouts/h-a/report", headers=admin_headers)
    assert failed.status_code == 200 and failed.json["error"] == "ZeroDivisionError: boom"
    monkeypatch.setattr(holdout_reports, "build_report", real)
    run_analysis(app)  # the scheduled job: experiments, then holdouts
    assert len(db.scalars(select(HoldoutReport)).all()) == 4


def test_analyze_an_unknown_holdout_is_404(client, admin_headers):
    response = client.post("/api/v1/holdouts/nope/analyze", headers=admin_headers)
    assert response.status_code == 404


def test_a_customer_on_two_devices_is_one_unit_of_the_holdout_report(
        app, client, admin_headers, db):
    """The holdout report clusters identities as an experiment's does (SPEC §14): one unit
    per customer, in the group of its first holdout exposure, back-office events under the
    customer id counted, customers in both groups left out and counted."""
    create_holdout(client, admin_headers, "h-id")
    holdout_id = db.scalar(select(Holdout.id).where(Holdout.key == "h-id"))
    groups = {"x-phone": "holdout", "x-laptop": "holdout", "y-phone": "measure",
              "z-phone": "holdout", "z-tablet": "measure",  # z: in both groups
              "h1": "holdout", "m1": "measure", "m2": "measure"}
    db.execute(insert(HoldoutExposure), [
        {"holdout_id": holdout_id, "unit_id": unit, "group": group,
         "exposed_at": T0 + timedelta(hours=index)}
        for index, (unit, group) in enumerate(groups.items())])
    db.execute(insert(IdentityLink), [
        {"anonymous_id": device, "user_id": f"customer-{device[0]}", "occurred_at": T0}
        for device in ("x-phone", "x-laptop", "y-phone", "z-phone", "z-tablet")])
    # x bought on both devices (one customer, one conversion); y's purchase came in from
    # the back office under the customer id.
    db.execute(insert(Event), [
        {"event_id": f"buy-{unit}", "unit_id": unit, "type": "track", "name": "purchase",
         "occurred_at": T0 + timedelta(days=3)}
        for unit in ("x-phone", "x-laptop", "customer-y", "z-phone", "m1")])
    db.commit()

    report = client.post("/api/v1/holdouts/h-id/analyze", headers=admin_headers).json
    assert report["error"] is None
    # Raw device ids would give 4 and 4 units, purchases holdout 3 and measure 1.
    assert report["units"] == {"holdout": 2, "measure": 3}  # x and h1; y, m1, m2
    assert report["identity"] == {"clusters": 6, "linked_units": 5, "conflicts": 1}
    purchase = report["metrics"][0]
    assert {v["variant"]: v["conversions"] for v in purchase["variants"]} == {
        "holdout": 1, "measure": 2}
    stored = client.get("/api/v1/holdouts/h-id/report", headers=admin_headers).json
    assert stored["identity"] == report["identity"]
    page = logged_in(app, "viewer").get("/admin/holdouts/h-id").get_data(as_text=True)
    assert ("Analysed by customer: 6 customers, 5 devices linked, 1 customers in both "
            "groups left out.") in page


def test_a_holdout_report_first_refreshes_stale_planner_statistics(client, admin_headers, db):
    """As an experiment's report: the holdout's exposures, just loaded and never analysed
    (autovacuum off on the test server), are analysed before the report reads them."""
    create_experiment(client, admin_headers, "first", ["landing", "cart"])
    create_holdout(client, admin_headers, "h-stats", experiments=["first"])
    simulate(db, "h-stats", {"holdout": 0.2, "measure": 0.2}, seed=3)
    postgresql = db.get_bind().dialect.name == "postgresql"
    if postgresql:  # this session's counts reach the statistics when it is next idle
        db.execute(text("SELECT pg_stat_force_next_flush()"))
        db.commit()
    response = client.post("/api/v1/holdouts/h-stats/analyze", headers=admin_headers)
    assert response.status_code == 200 and response.json["units"]["holdout"] == UNITS
    if postgresql:
        assert db.execute(text(
            "SELECT n_mod_since_analyze, last_analyze IS NOT NULL FROM pg_stat_user_tables "
            "WHERE relname = 'holdout_exposures'")).one() == (0, True)
    assert refresh_statistics(db, holdout_reports.HOLDOUT_TABLES) == []
