"""Bandit experiments end to end (SPEC §13), on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from scipy import stats as sps
from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.errors import Conflict
from experiments.models import AllocationPeriod, Event, Experiment, Exposure
from experiments.services import bandits, lifecycle, reallocation
from experiments.services.analysis import analyze_experiment
from experiments.services.assignment import assign, decide
from experiments.services.config_cache import cache_for
from tests.factories import experiment_payload
from tests.test_admin_support import cheap_argon2, logged_in  # noqa: F401  (autouse fixture)
from webhooks.models import WebhookDelivery

BANDIT = {"type": "bandit", "burn_in_hours": 24, "update_every_hours": 12,
          "min_weight": 0.02, "min_units_per_arm": 30}
ARMS = ["control", "b", "c"]
_ids = itertools.count()


def bandit_payload(key: str = "banner", **overrides: Any) -> dict[str, Any]:
    """A 3-arm conversion bandit, no layer, targeting or overrides."""
    fields: dict[str, Any] = {
        "layer": None, "targeting": [], "overrides": {}, "allocation": dict(BANDIT),
        "variants": [{"key": arm, "name": arm, "weight": 1 / 3 if arm != "c" else 1 - 2 / 3,
                      "is_control": arm == "control", "payload": {}} for arm in ARMS],
        "metrics": [{"key": "click", "kind": "conversion", "event": "click",
                     "role": "primary"}],
        "analysis": {"min_units_per_variant": 10, "min_days": 0,
                     "conversion_window_hours": 72}}
    return experiment_payload(key, **{**fields, **overrides})


def start_bandit(app: Flask, **overrides: Any) -> datetime:
    """Create and start the bandit; returns its start time."""
    with get_db(app).session() as session:
        lifecycle.create_experiment(session, bandit_payload(**overrides), SYSTEM)
        experiment = lifecycle.transition(session, "banner", "start", SYSTEM)
        assert experiment.started_at is not None
        experiment.salt = "banner-tests"  # the same split in every run (the default is random)
        session.commit()
        return experiment.started_at


def add_traffic(session: Session, at: datetime, rates: dict[str, float], units: int,
                rng: np.random.Generator, ids: Iterator[int] = _ids) -> None:
    """Exposures split by the current weights (the real decision) and their conversions;
    units numbered by ``ids`` (a test's own counter makes its split independent of the
    tests run before it in the same process)."""
    config = cache_for(session).snapshot(session).by_key["banner"]
    experiment_id = config.id
    for _ in range(units):
        unit = f"u{next(ids)}"
        variant = decide(config, unit, {}).variant.key
        session.add(Exposure(experiment_id=experiment_id, unit_id=unit, variant_key=variant,
                             exposed_at=at))
        if rng.random() < rates[variant]:
            session.add(Event(event_id=f"e-{unit}", unit_id=unit, type="conversion",
                              name="click", occurred_at=at + timedelta(minutes=5)))
    session.commit()


def test_bandit_validation_names_the_fields(client: FlaskClient, admin_headers: dict) -> None:
    nps = bandit_payload(metrics=[{"key": "nps", "kind": "nps", "role": "primary"}])
    response = client.post("/api/v1/experiments", json=nps, headers=admin_headers)
    assert response.status_code == 422
    assert {d["field"] for d in response.json["error"]["details"]} == {"metrics[0].kind"}
    sequential = bandit_payload(analysis={"method": "sequential"})
    response = client.post("/api/v1/experiments", json=sequential, headers=admin_headers)
    assert response.status_code == 422
    assert response.json["error"]["details"][0]["field"] == "analysis.method"
    bad = bandit_payload(allocation={"type": "bandit", "min_weight": 2})
    response = client.post("/api/v1/experiments", json=bad, headers=admin_headers)
    assert response.status_code == 422
    assert "allocation" in response.json["error"]["details"][0]["field"]
    created = client.post("/api/v1/experiments", json=bandit_payload(), headers=admin_headers)
    assert created.status_code == 201
    assert created.json["allocation"] == BANDIT
    assert created.json["analysis"]["method"] == "frequentist"  # not the sequential default
    fixed = client.post("/api/v1/experiments", json=experiment_payload("plain"),
                        headers=admin_headers)
    assert fixed.json["allocation"] == {"type": "fixed"}


def test_start_opens_period_zero_and_weights_are_frozen(app: Flask, client: FlaskClient,
                                                        admin_headers: dict) -> None:
    started = start_bandit(app)
    response = client.get("/api/v1/experiments/banner/allocations", headers=admin_headers)
    assert response.status_code == 200
    [period] = response.json["items"]
    assert period["period"] == 0 and period["p_best"] is None
    assert period["weights"] == pytest.approx({"control": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert datetime.fromisoformat(period["started_at"]) == started
    variants = bandit_payload()["variants"]
    variants[0]["weight"], variants[1]["weight"] = 0.5, 1 / 6
    patch = client.patch("/api/v1/experiments/banner", json={"variants": variants},
                         headers=admin_headers)
    assert patch.status_code == 409


def test_burn_in_and_min_units_per_arm_are_respected(app: Flask, client: FlaskClient,
                                                     admin_headers: dict) -> None:
    started = start_bandit(app)
    rng = np.random.default_rng(1)
    with get_db(app).session() as session:
        add_traffic(session, started + timedelta(minutes=1), dict.fromkeys(ARMS, 0.2), 300, rng)
        # Before the burn-in: nothing, even with plenty of units.
        assert reallocation.reallocate(session, "banner", started + timedelta(hours=23)) is None
        assert reallocation.reallocate_due(session, started + timedelta(hours=23)) == {
            "banner": "waiting"}  # the scheduler's pass too
    with get_db(app).session() as session:
        session.execute(Exposure.__table__.delete())
        session.commit()
        add_traffic(session, started + timedelta(minutes=1), dict.fromkeys(ARMS, 0.2), 20, rng)
        # After the burn-in but under min_units_per_arm: nothing either; forced: 409.
        assert reallocation.reallocate(session, "banner", started + timedelta(hours=25)) is None
        with pytest.raises(Conflict, match="30 units"):
            reallocation.reallocate(session, "banner", started + timedelta(hours=25), force=True)
    response = client.post("/api/v1/experiments/banner/reallocate", headers=admin_headers)
    assert response.status_code == 409
    assert len(client.get("/api/v1/experiments/banner/allocations",
                          headers=admin_headers).json["items"]) == 1


def test_after_reallocation_new_units_follow_the_new_weights(app: Flask, client: FlaskClient,
                                                             admin_headers: dict) -> None:
    hook = client.post("/api/v1/webhooks", headers=admin_headers, json={
        "url": "http://127.0.0.1:9/hook", "events": ["experiment.reallocated"]})
    assert hook.status_code == 201
    started = start_bandit(app)
    with get_db(app).session() as session:
        exposed = {}
        for i in range(150):  # through the real assignment, stored
            [result] = assign(session, unit_id=f"old-{i}", experiment_keys=["banner"],
                              now=started + timedelta(minutes=1))
            exposed[f"old-{i}"] = result.variant
        for unit, variant in exposed.items():
            if variant == "c" or (variant == "b" and int(unit[4:]) % 4 == 0):
                session.add(Event(event_id=f"e-{unit}", unit_id=unit, type="conversion",
                                  name="click", occurred_at=started + timedelta(minutes=3)))
        session.commit()
        assert min(Counter(exposed.values()).values()) >= 30
        with app.app_context():
            period = reallocation.reallocate(session, "banner",
                                             started + timedelta(hours=24, minutes=1))
        assert period is not None and period.period == 1
        weights = dict(period.weights)
        assert weights["c"] > 0.9 and min(weights.values()) >= 0.02
        assert sum(weights.values()) == pytest.approx(1.0)
        # Not due again before the cadence.
        assert reallocation.reallocate(session, "banner", started + timedelta(hours=30)) is None
    with get_db(app).session() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert delivery.event_type == "experiment.reallocated"
        assert delivery.payload["data"]["period"]["period"] == 1
        assert delivery.payload["data"]["period"]["weights"] == pytest.approx(weights)
        # Exposed units keep their variant, whatever the weights became.
        for unit, variant in list(exposed.items())[:40]:
            [result] = assign(session, unit_id=unit, experiment_keys=["banner"])
            assert result.variant == variant
        # New units follow the new weights (the in-process decision).
        config = cache_for(session).snapshot(session).by_key["banner"]
        counts = Counter(decide(config, f"new-{i}", {}).variant.key for i in range(20_000))
        observed = [counts[arm] for arm in ARMS]
        expected = [20_000 * weights[arm] for arm in ARMS]
        assert sps.chisquare(observed, expected).pvalue > 0.001
    items = client.get("/api/v1/experiments/banner/allocations", headers=admin_headers).json
    assert [item["period"] for item in items["items"]] == [0, 1]
    assert items["items"][1]["p_best"]["c"] > 0.9
    with get_db(app).session() as session:
        analyze_experiment(session, "banner", now=started + timedelta(hours=25))
    report = client.get("/api/v1/experiments/banner/report", headers=admin_headers).json
    assert report["period_weighted"] is True and report["metrics"][0]["period_weighted"] is True
    assert report["p_best"]["c"] > 0.9


def test_a_three_arm_bandit_ends_with_most_traffic_on_the_better_arm(app: Flask) -> None:
    started = start_bandit(app)
    rates = {"control": 0.05, "b": 0.05, "c": 0.15}
    rng, ids = np.random.default_rng(3), itertools.count()
    now = started
    with get_db(app).session() as session:
        for _ in range(5):
            add_traffic(session, now + timedelta(minutes=1), rates, 400, rng, ids)
            now += timedelta(hours=25)
            assert reallocation.reallocate_due(session, now) == {"banner": "period " + str(
                len(bandits.periods_of(session, session.scalar(
                    select(Experiment.id).where(Experiment.key == "banner")))) - 1)}
        config = cache_for(session).snapshot(session).by_key["banner"]
        share = sum(decide(config, f"late-{i}", {}).variant.key == "c"
                    for i in range(5_000)) / 5_000
        assert share >= 0.80
        report = analyze_experiment(session, "banner", now=now)
        body = report.body
    page = logged_in(app, "viewer").get("/admin/experiments/banner").get_data(as_text=True)
    assert "Bandit allocation" in page and 'id="weights-data"' in page
    assert "lifts between arms are biased" in page
    assert page.count("<tr><th scope=\"row\">") >= 6  # periods 0..5 in the allocation table
    assert body["period_weighted"] is True
    assert body["p_best"]["c"] >= 0.95
    assert body["decision"]["outcome"] == "ship" and body["decision"]["winner"] == "c"
    primary = body["metrics"][0]
    estimate = next(v for v in primary["variants"] if v["variant"] == "c")
    # One realisation (1,609 units on c here, estimate 0.173): its 95 % interval may miss the
    # truth, and the arm a bandit favours is estimated a little high (it got its traffic
    # after doing well). The truth stays within 3.3 standard errors (99.9 %).
    se = (estimate["ci"][1] - estimate["ci"][0]) / (2 * 1.959964)
    assert abs(estimate["estimate"] - 0.15) <= 3.3 * se
    assert set(body["expected_units"]) == set(ARMS)
    assert body["srm"]["detected"] is False
    assert not [alert for alert in body["alerts"] if alert["kind"] == "srm"]
    naive = sps.chisquare([body["units"][arm] for arm in ARMS]).pvalue
    assert naive < 0.001  # against the configured 1/3 each, the moved traffic looks broken


def test_period_sums_split_units_by_their_exposure_period(app: Flask) -> None:
    started = start_bandit(app)
    with get_db(app).session() as session:
        experiment = lifecycle.get_experiment(session, "banner")
        session.add(AllocationPeriod(experiment_id=experiment.id, period=1,
                                     started_at=started + timedelta(hours=24),
                                     weights={"control": 0.1, "b": 0.1, "c": 0.8},
                                     p_best={"control": 0, "b": 0, "c": 1}, seed=5))
        for unit, variant, hours, converts in [("a", "control", 1, True), ("b", "b", 2, False),
                                               ("c", "c", 30, True), ("d", "c", 31, False)]:
            session.add(Exposure(experiment_id=experiment.id, unit_id=unit, variant_key=variant,
                                 exposed_at=started + timedelta(hours=hours)))
            if converts:
                for n in range(2):  # two events, still one conversion
                    session.add(Event(event_id=f"e-{unit}-{n}", unit_id=unit, type="conversion",
                                      name="click",
                                      occurred_at=started + timedelta(hours=hours + 1)))
        session.add(Event(event_id="late", unit_id="d", type="conversion", name="click",
                          occurred_at=started + timedelta(hours=31 + 80)))  # out of window
        session.commit()
        sums = bandits.primary_periods(
            session, experiment, bandits.periods_of(session, experiment.id)).sums("click")
    assert {p: {v: (s.n, s.sum, s.sum_squares) for v, s in arms.items()}
            for p, arms in sums.items()} == {
        0: {"control": (1, 1.0, 1.0), "b": (1, 0.0, 0.0)},
        1: {"c": (2, 1.0, 1.0)}}


def test_stats_bandit_calculator_reproduces_the_spec_check(client: FlaskClient,
                                                           client_headers: dict) -> None:
    def arm(key: str, n: int, k: int) -> dict[str, Any]:
        return {"key": key, "n": n, "sum": k, "sum_squares": k}

    body = {"periods": [
        {"weights": {"A": 0.5, "B": 0.5}, "variants": [arm("A", 1000, 100), arm("B", 1000, 120)]},
        {"weights": {"A": 0.2, "B": 0.8}, "variants": [arm("A", 400, 20), arm("B", 1600, 96)]}],
        "min_weight": 0.01, "seed": 1}
    response = client.post("/api/v1/stats/bandit", json=body, headers=client_headers)
    assert response.status_code == 200
    out = response.json
    assert out["estimates"]["A"]["mean"] == pytest.approx(0.075, abs=1e-9)
    assert out["estimates"]["B"]["variance"] == pytest.approx(3.524444e-5, rel=1e-6)
    assert out["p_best"]["B"] == pytest.approx(0.94557, abs=0.01)
    assert out["weights"]["B"] == pytest.approx(0.9367, abs=0.01)
    assert out["expected_units"] == {"A": 1400.0, "B": 2600.0}
    assert client.post("/api/v1/stats/bandit", json=body,
                       headers=client_headers).json == out  # same seed, same draws
    body["periods"][1]["variants"][1]["sum_squares"] = 1
    bad = client.post("/api/v1/stats/bandit", json=body, headers=client_headers)
    assert bad.status_code == 422
    assert bad.json["error"]["details"][0]["field"] == "periods[1].variants[1].sum_squares"
    body["periods"][1]["variants"][1]["sum_squares"] = 96
    body["periods"][1]["weights"] = {"A": 1.0}
    bad = client.post("/api/v1/stats/bandit", json=body, headers=client_headers)
    assert bad.status_code == 422
    assert bad.json["error"]["details"][0]["field"] == "periods[1].weights"


def test_the_units_card_expects_a_bandits_period_weighted_split_not_its_first_weights():
    """The admin Units card compares observed shares with what SRM expects: for a bandit,
    each period's weights applied to its traffic (SPEC §13), not the period-0 weights."""
    from admin.presenters import unit_split

    body = {"units": {"A": 1430, "B": 2570}, "expected_units": {"A": 1400.0, "B": 2600.0}}
    split = unit_split(body, {"A": 0.5, "B": 0.5})
    assert [round(row["expected"], 6) for row in split] == [0.35, 0.65]
    assert [round(row["observed"], 6) for row in split] == [0.3575, 0.6425]
    assert [row["expected"] for row in unit_split({"units": {"A": 1}}, {"A": 1, "B": 3})] \
        == [0.25, 0.75]
