"""A bandit's report from the pipeline grouped by weight period (SPEC §13, issue #23 phase 2),
on SQLite and PostgreSQL: SPEC's reference numbers from stored exposures and events, every
per-unit-mean metric period-weighted, one aggregation round."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from scipy import stats as sps
from sqlalchemy import insert, select

from experiments.db import get_db
from experiments.models import AllocationPeriod, Event, Exposure
from experiments.services import bandits, lifecycle
from experiments.services import pipeline as pipeline_module
from experiments.services.analysis import analyze_experiment
from experiments.services.pipeline import MetricSpec, table_sources
from experiments.services.warehouses import routing
from tests.test_bandits import start_bandit

Z = 1.959963984540054
# SPEC §13's check: (units, conversions) per period and arm; each conversion also buys
# once at the period's price, so revenue per unit differs between periods.
SPEC_DATA = {0: {"control": (1000, 100), "b": (1000, 120)},
             1: {"control": (400, 20), "b": (1600, 96)}}
PRICE = {0: {"control": 10.0, "b": 10.0}, 1: {"control": 40.0, "b": 20.0}}
METRICS = [{"key": "click", "kind": "conversion", "event": "click", "role": "primary"},
           {"key": "revenue", "kind": "mean", "event": "purchase", "role": "secondary"},
           {"key": "per-click", "kind": "ratio", "numerator": "purchase",
            "denominator": "click", "role": "secondary"}]
VARIANTS = [{"key": "control", "name": "control", "weight": 0.5, "is_control": True,
             "payload": {}},
            {"key": "b", "name": "b", "weight": 0.5, "is_control": False, "payload": {}}]


def spec_bandit(app: Flask) -> datetime:
    """Two arms, period 1 from 24 h at 0.2/0.8, and SPEC §13's units and conversions."""
    started = start_bandit(app, metrics=METRICS, variants=VARIANTS)
    with get_db(app).session() as session:
        experiment = lifecycle.get_experiment(session, "banner")
        session.add(AllocationPeriod(experiment_id=experiment.id, period=1,
                                     started_at=started + timedelta(hours=24),
                                     weights={"control": 0.2, "b": 0.8},
                                     p_best={"control": 0.1, "b": 0.9}, seed=7))
        exposures: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for period, arms in SPEC_DATA.items():
            # the first unit of period 1 exactly at its start: it belongs to period 1
            at = started + timedelta(hours=24 * period + (0 if period else 1))
            for arm, (units, conversions) in arms.items():
                for i in range(units):
                    unit = f"p{period}-{arm}-{i}"
                    exposures.append({"experiment_id": experiment.id, "unit_id": unit,
                                      "variant_key": arm, "exposed_at": at})
                    if i < conversions:
                        for name, value in (("click", None), ("purchase", PRICE[period][arm])):
                            events.append({"event_id": f"{name}-{unit}", "unit_id": unit,
                                           "type": "conversion", "name": name, "value": value,
                                           "occurred_at": at + timedelta(minutes=5)})
        session.execute(insert(Exposure), exposures)
        session.execute(insert(Event), events)
        session.commit()
    return started


def weighted(arm: str, value: float, converts_only: bool = True) -> tuple[float, float]:
    """SPEC §13's m and V by hand, for 0/1 (value 1) or priced conversions per unit."""
    total = sum(n for arms in SPEC_DATA.values() for n, _ in arms.values())
    m = v = 0.0
    for period, arms in SPEC_DATA.items():
        n, k = arms[arm]
        y = value if converts_only else PRICE[period][arm]
        w = sum(units for units, _ in arms.values()) / total
        s, ss = k * y, k * y * y
        m += w * s / n
        v += w * w * (ss - s * s / n) / (n - 1) / n
    return m, v


def test_period_sums_come_from_the_report_pipeline(app: Flask,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec_bandit(app)
    passes: list[tuple[str, ...]] = []
    original = pipeline_module.run.aggregate_grouped

    def counted(*args: Any, **kwargs: Any) -> Any:
        passes.append(kwargs["sources"].grouping)
        return original(*args, **kwargs)

    def second_pass(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a bandit report aggregates once, grouped by period")

    monkeypatch.setattr(bandits, "aggregate_grouped", counted)
    monkeypatch.setattr(routing, "aggregate_experiment", second_pass)
    with get_db(app).session() as session:
        experiment = lifecycle.get_experiment(session, "banner")
        data = bandits.primary_periods(session, experiment, bandits.periods_of(
            session, experiment.id))
        assert {p: {arm: (s.n, s.sum, s.sum_squares) for arm, s in arms.items()}
                for p, arms in data.sums("click").items()} == {
            p: {arm: (n, float(k), float(k)) for arm, (n, k) in arms.items()}
            for p, arms in SPEC_DATA.items()}
        result = data.result(seed=1, settings=bandits.bandit_settings(experiment))
        body = analyze_experiment(session, "banner").body
    assert result.estimates["control"].mean == pytest.approx(0.075, abs=1e-12)
    assert result.estimates["b"].mean == pytest.approx(0.09, abs=1e-12)
    assert result.estimates["control"].variance == pytest.approx(5.228443e-5, rel=1e-6)
    assert result.estimates["b"].variance == pytest.approx(3.524444e-5, rel=1e-6)
    assert result.p_best["b"] == pytest.approx(0.94557, abs=0.01)
    assert result.weights["b"] == pytest.approx(0.9367, abs=0.01)
    assert passes == [("period",), ("period",)]  # reallocation's pass, then the report's one

    assert body["period_weighted"] is True
    assert body["units"] == {"control": 1400, "b": 2600}
    assert body["expected_units"] == {"control": pytest.approx(1400), "b": pytest.approx(2600)}
    assert body["srm"]["p_value"] == pytest.approx(1.0)
    assert body["p_best"]["b"] == pytest.approx(0.94557, abs=0.01)
    click = body["metrics"][0]
    for arm in ("control", "b"):
        m, v = weighted(arm, 1.0)
        entry = next(e for e in click["variants"] if e["variant"] == arm)
        assert entry["estimate"] == pytest.approx(m, abs=1e-12)
        assert entry["ci"] == pytest.approx([m - Z * math.sqrt(v), m + Z * math.sqrt(v)],
                                            rel=1e-9)
    (lift,) = click["comparisons"]
    assert lift["absolute_effect"] == pytest.approx(0.015, abs=1e-12)
    assert lift["p_value"] == pytest.approx(2 * sps.norm.sf(1.603303), rel=1e-5)
    assert click["period_weighted"] is True
    assert any("biased under adaptive allocation" in w for w in click["warnings"])


def test_a_bandits_timelines_are_period_weighted_as_its_table_is(app: Flask) -> None:
    """Pooled, SPEC §13's data reads −0.26 points (120/1,400 vs 216/2,600) where the
    table's weighted lift reads +1.5: the charts' last cumulative points said the opposite
    of the table. Every timeline of a per-unit mean now weighs periods as the table does."""
    spec_bandit(app)
    with get_db(app).session() as session:
        body = analyze_experiment(session, "banner").body
    (lift,) = body["metrics"][0]["comparisons"]
    last = body["timeline"][-1]
    assert (last["variant"], last["units"]) == ("b", 2600)
    assert last["absolute_effect"] == pytest.approx(lift["absolute_effect"], abs=1e-12)
    assert last["absolute_ci"] == pytest.approx(lift["absolute_ci"], abs=1e-12)
    assert last["relative_ci"] == pytest.approx(lift["relative_ci"], abs=1e-12)
    assert lift["absolute_effect"] == pytest.approx(0.015, abs=1e-12)
    for key in ("click", "revenue"):
        metric = next(m for m in body["metrics"] if m["key"] == key)
        cumulative = next(t for t in body["metric_timeline"] if t["metric"] == key)[
            "points"][-1]["cumulative"]
        assert cumulative["absolute_effect"] == pytest.approx(
            metric["comparisons"][0]["absolute_effect"], abs=1e-12)
        assert cumulative["units"] == 2600 and cumulative["control_units"] == 1400
    # A ratio is pooled in its table, so in its chart too.
    ratio = next(t for t in body["metric_timeline"] if t["metric"] == "per-click")
    table = next(m for m in body["metrics"] if m["key"] == "per-click")["comparisons"][0]
    assert ratio["points"][-1]["cumulative"]["absolute_effect"] == pytest.approx(
        table["absolute_effect"], abs=1e-12)


def test_a_bandit_reports_secondary_metrics_period_weighted(app: Flask) -> None:
    spec_bandit(app)
    with get_db(app).session() as session:
        body = analyze_experiment(session, "banner").body
    _, revenue, ratio = body["metrics"]
    assert revenue["period_weighted"] is True
    estimates = {e["variant"]: e for e in revenue["variants"]}
    for arm, expected_mean in (("control", 1.5), ("b", 1.2)):
        m, v = weighted(arm, 0.0, converts_only=False)
        assert m == pytest.approx(expected_mean)
        assert estimates[arm]["estimate"] == pytest.approx(m, rel=1e-12)
        assert estimates[arm]["ci"] == pytest.approx(
            [m - Z * math.sqrt(v), m + Z * math.sqrt(v)], rel=1e-9)
        assert estimates[arm]["units"] == sum(arms[arm][0] for arms in SPEC_DATA.values())
    # pooled, the control would look like 1,800 / 1,400 = 1.2857: Simpson's paradox avoided
    (lift,) = revenue["comparisons"]
    (m_c, v_c), (m_b, v_b) = weighted("control", 0, False), weighted("b", 0, False)
    assert lift["absolute_effect"] == pytest.approx(m_b - m_c, rel=1e-12)
    p_revenue = 2 * sps.norm.sf(abs(m_b - m_c) / math.sqrt(v_c + v_b))
    assert lift["p_value"] == pytest.approx(p_revenue, abs=1e-3)  # Welch t, large df
    # corrected with the primary in the decision family (Holm over click, revenue, ratio)
    raw = sorted(m["comparisons"][0]["p_value"] for m in body["metrics"])
    holm = [min(1.0, max((3 - i) * p for i, p in enumerate(raw[:j + 1]))) for j in range(3)]
    assert lift["adjusted_p_value"] == pytest.approx(holm[raw.index(lift["p_value"])])
    # a ratio is not a per-unit mean: pooled, flagged and warned about
    assert ratio["period_weighted"] is False
    assert not any(e.get("period_weighted") for e in ratio["variants"])
    assert any("per-click: not period-weighted" in w for w in ratio["warnings"])
    assert any("per-click: not period-weighted" in w for w in body["warnings"])


def test_period_aggregates_read_any_pipeline_sources(app: Flask) -> None:
    """The same per-period sums from table sources (how a warehouse's copies are read)."""
    spec_bandit(app)
    with get_db(app).session() as session:
        experiment = lifecycle.get_experiment(session, "banner")
        periods = bandits.periods_of(session, experiment.id)
        copy = select(Exposure.id.label("exposure_id"), Exposure.unit_id, Exposure.variant_key,
                      Exposure.exposed_at, Exposure.experiment_id).subquery("copy")
        sources = table_sources(copy, Event.__table__, experiment=experiment.id)
        spec = [MetricSpec.of(experiment.metrics[0])]
        own = bandits.period_aggregates(session, experiment, periods, spec, hours=72,
                                        cuped=False)
        copied = bandits.period_aggregates(session, experiment, periods, spec, hours=72,
                                           cuped=False, sources=sources)
    assert copied.sums("click") == own.sums("click")
    assert copied.sums("click")[1]["b"].n == 1600
