"""Metric caps (SPEC §6): per-unit values winsorised in the database, as numpy would."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.models import Experiment
from experiments.services.analysis import analyze_experiment
from experiments.services.capping import nearest_rank
from experiments.services.pipeline import MetricSpec, aggregate_experiment
from tests.factories import experiment_payload
from tests.test_aggregation import T0, event, expose, hours, make_experiment

CAPPED_METRICS = [
    {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary"},
    {"key": "revenue", "kind": "mean", "event": "purchase",
     "cap": {"type": "percentile", "value": 0.9}},
    {"key": "views", "kind": "count", "event": "page_view",
     "cap": {"type": "absolute", "value": 2}},
    {"key": "revenue-per-session", "kind": "ratio", "numerator": "purchase",
     "denominator": "session", "cap": {"type": "percentile", "value": 0.75}},
]
VARIANTS = ("control", "one-page")
UNITS = 41  # per variant: 82 units, so 0.9 and 0.75 fall between ranks


def seed(db: Session, cuped: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Random per-unit activity (fixed seed) with whales; returns each unit's true values."""
    experiment = make_experiment(db, metrics=CAPPED_METRICS,
                                 analysis={**experiment_payload()["analysis"], "cuped": cuped})
    rng = random.Random(7)
    values: dict[str, dict[str, list[float]]] = {
        v: {"revenue": [], "pre": [], "views": [], "num": [], "den": []} for v in VARIANTS}
    for variant in VARIANTS:
        for index in range(UNITS):
            unit = f"{variant}-{index}"
            expose(db, experiment, unit, variant)
            revenue = pre = num = den = 0.0
            views = 0
            for _ in range(rng.choice([0, 0, 1, 2, 3])):  # about 40 % of units never buy
                amount = round(rng.lognormvariate(3, 1) * (50 if rng.random() < 0.05 else 1), 2)
                event(db, unit, "purchase", hours(rng.uniform(0.1, 70)), value=amount)
                revenue += amount
                num += amount
            if rng.random() < 0.5:  # the pre-period of CUPED: capped by the same cap
                amount = round(rng.lognormvariate(3, 1.5), 2)
                event(db, unit, "purchase", hours(-rng.uniform(1, 70)), value=amount)
                pre += amount
            for _ in range(rng.choice([0, 1, 2, 5, 9])):
                event(db, unit, "page_view", hours(rng.uniform(0.1, 70)), type="step",
                      step="cart")
                views += 1
            for _ in range(rng.choice([0, 1, 1, 2, 7])):
                event(db, unit, "session", hours(rng.uniform(0.1, 70)), type="custom")
                den += 1
            for name, value in (("revenue", revenue), ("pre", pre), ("views", views),
                                ("num", num), ("den", den)):
                values[variant][name].append(value)
    db.commit()
    return {v: {name: np.array(series, dtype=float) for name, series in parts.items()}
            for v, parts in values.items()}


def percentile(values: dict[str, dict[str, np.ndarray]], part: str, fraction: float) -> float:
    """numpy's nearest-rank percentile of every exposed unit's value, pooled over variants."""
    pooled = np.concatenate([values[v][part] for v in VARIANTS])
    threshold = np.percentile(pooled, fraction * 100, method="inverted_cdf")
    assert threshold == np.sort(pooled)[nearest_rank(fraction, len(pooled)) - 1]
    return float(threshold)


def totals(db: Session, key: str, *, cuped: bool = False) -> dict[str, Any]:
    experiment = db.scalars(select(Experiment)).one()
    result = aggregate_experiment(db, experiment.id,
                                  [MetricSpec.of(m) for m in experiment.metrics],
                                  hours=72, cuped=cuped)
    return {"totals": result.metrics[key].totals(), "caps": result.caps}


def test_a_percentile_cap_winsorises_per_unit_values_like_numpy(db):
    values = seed(db)
    threshold = percentile(values, "revenue", 0.9)
    result = totals(db, "revenue")
    assert result["caps"]["revenue"] == {"y": pytest.approx(threshold)}
    for variant in VARIANTS:
        capped = np.minimum(values[variant]["revenue"], threshold)
        sums = result["totals"][variant]
        assert sums["n"] == UNITS
        assert sums["sum"] == pytest.approx(capped.sum())
        assert sums["sum_squares"] == pytest.approx((capped ** 2).sum())
        assert capped.sum() < values[variant]["revenue"].sum()  # the cap did bite


def test_an_absolute_cap_on_a_count_metric(db):
    values = seed(db)
    sums = totals(db, "views")["totals"]
    for variant in VARIANTS:
        capped = np.minimum(values[variant]["views"], 2)
        assert sums[variant]["sum"] == pytest.approx(capped.sum())
        assert sums[variant]["sum_squares"] == pytest.approx((capped ** 2).sum())


def test_a_ratio_caps_numerator_and_denominator_separately(db):
    values = seed(db)
    num_cap, den_cap = percentile(values, "num", 0.75), percentile(values, "den", 0.75)
    result = totals(db, "revenue-per-session")
    assert result["caps"]["revenue-per-session"] == {"num": pytest.approx(num_cap),
                                                     "den": pytest.approx(den_cap)}
    for variant in VARIANTS:
        num = np.minimum(values[variant]["num"], num_cap)
        den = np.minimum(values[variant]["den"], den_cap)
        sums = result["totals"][variant]
        assert sums["num_sum"] == pytest.approx(num.sum())
        assert sums["num_sum_squares"] == pytest.approx((num ** 2).sum())
        assert sums["den_sum"] == pytest.approx(den.sum())
        assert sums["den_sum_squares"] == pytest.approx((den ** 2).sum())
        assert sums["num_den_sum"] == pytest.approx((num * den).sum())


def test_cuped_pre_period_values_are_capped_by_the_same_cap(db):
    values = seed(db, cuped=True)
    threshold = percentile(values, "revenue", 0.9)
    sums = totals(db, "revenue", cuped=True)["totals"]
    for variant in VARIANTS:
        post = np.minimum(values[variant]["revenue"], threshold)
        pre = np.minimum(values[variant]["pre"], threshold)
        assert sums[variant]["pre_sum"] == pytest.approx(pre.sum())
        assert sums[variant]["pre_sum_squares"] == pytest.approx((pre ** 2).sum())
        assert sums[variant]["cross_sum"] == pytest.approx((pre * post).sum())


def test_the_report_echoes_each_cap_with_the_threshold_used(db):
    values = seed(db)
    report = analyze_experiment(db, "checkout", now=T0 + timedelta(days=3)).body
    metrics = {m["key"]: m for m in report["metrics"]}
    threshold = percentile(values, "revenue", 0.9)
    assert metrics["revenue"]["cap"] == {"type": "percentile", "value": 0.9,
                                         "capped_at": pytest.approx(threshold)}
    assert metrics["views"]["cap"] == {"type": "absolute", "value": 2, "capped_at": 2}
    assert metrics["revenue-per-session"]["cap"]["denominator_capped_at"] == \
        pytest.approx(percentile(values, "den", 0.75))
    assert "cap" not in metrics["purchase"]
    estimates = {v["variant"]: v["estimate"] for v in metrics["revenue"]["variants"]}
    assert estimates == {v: pytest.approx(np.minimum(values[v]["revenue"], threshold).mean())
                         for v in VARIANTS}


def test_the_analyze_endpoint_serialises_caps(client, admin_headers, db):
    seed(db)
    response = client.post("/api/v1/experiments/checkout/analyze", headers=admin_headers)
    assert response.status_code == 200
    caps = {m["key"]: m.get("cap") for m in response.get_json()["metrics"]}
    assert caps["views"]["capped_at"] == 2
    assert caps["purchase"] is None


def test_a_percentile_below_zero_is_floored_at_zero(db):
    experiment = make_experiment(db, metrics=[
        {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary"},
        {"key": "refunds", "kind": "mean", "event": "refund",
         "cap": {"type": "percentile", "value": 0.5}}])
    for index in range(4):
        expose(db, experiment, f"u{index}", VARIANTS[index % 2])
        event(db, f"u{index}", "refund", hours(1), value=-10.0 * (index + 1))
    db.commit()
    result = totals(db, "refunds")
    assert result["caps"]["refunds"] == {"y": 0.0}
    assert {v: s["sum"] for v, s in result["totals"].items()} == {"control": -40.0,
                                                                  "one-page": -60.0}


CREATE = "/api/v1/experiments"


def with_metric(metric: dict[str, Any]) -> dict[str, Any]:
    return experiment_payload(metrics=[
        {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary"},
        metric])


@pytest.mark.parametrize("metric", [
    {"key": "m", "kind": "mean", "event": "purchase", "cap": {"type": "percentile", "value": 1}},
    {"key": "m", "kind": "mean", "event": "purchase", "cap": {"type": "percentile", "value": 0}},
    {"key": "m", "kind": "mean", "event": "purchase", "cap": {"type": "absolute", "value": -5}},
    {"key": "m", "kind": "mean", "event": "purchase", "cap": {"type": "absolute", "value": 0}},
    {"key": "m", "kind": "mean", "event": "purchase", "cap": {"type": "absolute", "value": 1e13}},
    {"key": "m", "kind": "mean", "event": "purchase", "cap": {"type": "median", "value": 0.5}},
    {"key": "m", "kind": "mean", "event": "purchase", "cap": {"type": "absolute"}},
    {"key": "m", "kind": "mean", "event": "purchase", "cap": {"type": "absolute", "value": "9"}},
    {"key": "m", "kind": "conversion", "event": "purchase",
     "cap": {"type": "absolute", "value": 1}},
    {"key": "m", "kind": "nps", "cap": {"type": "percentile", "value": 0.9}},
    {"key": "m", "kind": "friction", "friction_kind": "error",
     "cap": {"type": "absolute", "value": 1}},
])
def test_bad_caps_are_422_naming_the_metric(client, admin_headers, metric):
    response = client.post(CREATE, json=with_metric(metric), headers=admin_headers)
    assert response.status_code == 422, response.get_json()
    fields = [d["field"] for d in response.get_json()["error"]["details"]]
    assert any(field.startswith("metrics[1]") for field in fields), fields


def test_a_cap_is_stored_and_echoed(client, admin_headers):
    cap = {"type": "percentile", "value": 0.99}
    body = with_metric({"key": "revenue", "kind": "mean", "event": "purchase", "cap": cap})
    assert client.post(CREATE, json=body, headers=admin_headers).status_code == 201
    stored = client.get(f"{CREATE}/checkout-redesign", headers=admin_headers).get_json()
    assert [m.get("cap") for m in stored["metrics"]] == [None, cap]



def test_caps_on_the_folded_rollup_equal_caps_on_the_full_pass(db):
    from experiments.models import RollupState
    from tests.test_rollup import _close, aggregated

    values = seed(db, cuped=True)
    experiment = db.scalars(select(Experiment)).one()
    for _ in range(3):  # observe, then fold (PostgreSQL), then read rollup ⊕ live part
        rolled = aggregated(db, experiment, rollup=True)
    full = aggregated(db, experiment, rollup=False)
    if db.get_bind().dialect.name == "postgresql":
        assert db.get(RollupState, experiment.id).events_through > 0
    assert _close(rolled["metrics"], full["metrics"])
    threshold = percentile(values, "revenue", 0.9)
    expected = sum(np.minimum(values[v]["revenue"], threshold).sum() for v in VARIANTS)
    assert sum(sums["sum"] for sums in rolled["metrics"]["revenue"].values()) == \
        pytest.approx(expected)


def test_the_admin_form_keeps_a_metrics_cap_both_ways():
    from werkzeug.datastructures import MultiDict

    from admin.forms import parse_form, state_from_experiment

    cap = {"type": "percentile", "value": 0.99}
    state = state_from_experiment({"metrics": [
        {"key": "revenue", "kind": "mean", "event": "purchase", "cap": cap},
        {"key": "purchase", "kind": "conversion", "event": "purchase", "cap": None}]})
    assert [(m["cap_type"], m["cap_value"]) for m in state["metrics"]] == [
        ("percentile", "0.99"), ("", "")]
    form = MultiDict([("metric_key", "revenue"), ("metric_kind", "mean"),
                      ("metric_event", "purchase"), ("metric_cap_type", "percentile"),
                      ("metric_cap_value", "0.99"), ("metric_key", "purchase"),
                      ("metric_kind", "conversion"), ("metric_event", "purchase"),
                      ("metric_cap_type", ""), ("metric_cap_value", "")])
    _, data, _ = parse_form(form)
    assert [m.get("cap") for m in data["metrics"]] == [cap, None]
