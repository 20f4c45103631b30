"""Quantile metrics end to end (SPEC §11) on SQLite and PostgreSQL: the report's numbers
equal ``stats.quantile`` computed from the raw values in numpy; step durations on a
hand-made journey, to the exact second, in the metric and the funnel's time on step;
the event-level clustering correction widens the interval when units have many events."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from experiments.models import Event, Exposure
from experiments.services.analysis import analyze_experiment
from experiments.services.pipeline import QuantileSpec, own_sources, quantile_stats
from experiments.services.pipeline.quantiles import order_statistics, order_statistics_query
from experiments.services.report import TIMELINE_NOTE
from stats.quantile import (
    QuantileStats,
    QuantileVariantInput,
    analyze_quantiles,
    clustering_factor,
    estimate_quantile,
    needed_ranks,
    stats_from_sorted,
)
from stats.records import RatioStats
from tests.test_aggregation import T0, make_experiment

JOURNEY = ["landing", "cart", "checkout", "payment", "confirmation"]
ANALYSIS = {"method": "frequentist", "alpha": 0.05, "power": 0.8, "mde": 0.05,
            "correction": "holm", "min_units_per_variant": 1000, "min_days": 7,
            "max_days": 28, "conversion_window_hours": 72, "cuped": False,
            "auto_decide": False, "auto_conclude": False}
QUANTILE_METRICS = [
    {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary",
     "direction": "increase"},
    {"key": "basket-p90", "kind": "quantile", "quantile": 0.9, "event": "purchase",
     "source": "unit_value", "role": "secondary", "direction": "increase"},
    {"key": "order-p50", "kind": "quantile", "quantile": 0.5, "event": "purchase",
     "source": "event_value", "role": "secondary", "direction": "increase"},
    {"key": "cart-time-p50", "kind": "quantile", "quantile": 0.5, "step": "cart",
     "source": "step_duration", "role": "secondary", "direction": "decrease"},
]


def _insert(db: Session, experiment_id: int, exposures: list[tuple[str, str]],
            events: list[dict[str, Any]]) -> None:
    db.execute(Exposure.__table__.insert(), [
        {"experiment_id": experiment_id, "unit_id": unit, "variant_key": variant,
         "exposed_at": T0, "is_override": False} for unit, variant in exposures])
    db.execute(Event.__table__.insert(), [
        {"event_id": f"e{number}", "type": "conversion", "step": None, "friction_kind": None,
         "value": None, "received_at": row["occurred_at"], "properties": {}, **row}
        for number, row in enumerate(events)])
    db.commit()


def _purchases(rng: random.Random) -> tuple[list[tuple[str, str]], list[dict[str, Any]],
                                             dict[str, list[list[float]]]]:
    """150 units per arm, 1 to 4 purchases each (log-normal values, treatment +20 %), a
    purchase after the window and one before the exposure (both left out)."""
    exposures, events, values = [], [], defaultdict(list)
    for variant, lift in (("control", 1.0), ("one-page", 1.2)):
        for index in range(150):
            unit = f"{variant}-{index}"
            exposures.append((unit, variant))
            mine = [round(lift * rng.lognormvariate(4, 0.6), 2)
                    for _ in range(rng.randrange(1, 5))]
            values[variant].append(mine)
            events += [{"unit_id": unit, "name": "purchase", "value": value,
                        "occurred_at": T0 + timedelta(hours=rng.uniform(0, 70))}
                       for value in mine]
            events += [{"unit_id": unit, "name": "purchase", "value": 1e4,
                        "occurred_at": T0 + timedelta(hours=80)},
                       {"unit_id": unit, "name": "purchase", "value": 1e4,
                        "occurred_at": T0 - timedelta(hours=1)}]
    return exposures, events, values


def _expected(values: dict[str, list[list[float]]], *, quantile: float,
              event_level: bool) -> Any:
    inputs = []
    for variant, units in values.items():
        flat = np.sort([v for unit in units for v in unit] if event_level
                       else [sum(unit) for unit in units])
        stats = stats_from_sorted(flat, quantile=quantile)
        if event_level:
            s = np.array([sum(v <= stats.estimate for v in unit) for unit in units], float)
            n = np.array([len(unit) for unit in units], float)
            stats = QuantileStats(stats.n, stats.estimate, stats.lower, stats.upper, RatioStats(
                len(units), s.sum(), (s * s).sum(), n.sum(), (n * n).sum(), (s * n).sum()))
        inputs.append(QuantileVariantInput(variant, variant == "control", stats))
    return analyze_quantiles(inputs, quantile=quantile, correction="none")


def test_a_quantile_metric_report_equals_stats_on_the_raw_values(db: Session) -> None:
    experiment = make_experiment(db, metrics=QUANTILE_METRICS, analysis=ANALYSIS)
    exposures, events, values = _purchases(random.Random(3))
    _insert(db, experiment.id, exposures, events)
    body = analyze_experiment(db, "checkout", now=T0 + timedelta(days=4)).body
    metrics = {m["key"]: m for m in body["metrics"]}
    for key, quantile, event_level in (("basket-p90", 0.9, False), ("order-p50", 0.5, True)):
        expected = _expected(values, quantile=quantile, event_level=event_level)
        entry = metrics[key]
        assert (entry["quantile"], entry["kind"]) == (quantile, "quantile")
        assert [(v["variant"], v["units"]) for v in entry["variants"]] == [
            (v.variant, v.units) for v in expected.variants]
        for got, want in zip(entry["variants"], expected.variants, strict=True):
            assert got["estimate"] == pytest.approx(want.estimate, rel=1e-12)
            assert got["ci"] == pytest.approx(list(want.ci), rel=1e-12)
        (got,), (want,) = entry["comparisons"], expected.comparisons
        assert got["absolute_effect"] == pytest.approx(want.absolute_effect, rel=1e-9)
        assert got["absolute_ci"] == pytest.approx(list(want.absolute_ci), rel=1e-9)
        assert got["relative_ci"] == pytest.approx(list(want.relative_ci), rel=1e-9)
        assert got["p_value"] == pytest.approx(want.p_value, rel=1e-9)
        assert got["adjusted_p_value"] >= got["p_value"]  # in the report's Holm family
    assert metrics["basket-p90"]["variants"][0]["units"] == 150  # units with a purchase
    assert metrics["order-p50"]["variants"][0]["units"] == sum(map(len, values["control"]))
    assert body["timeline"] and TIMELINE_NOTE in body["warnings"]
    assert {m["metric"] for m in body["metric_timeline"]} == {"purchase"}
    assert not any("not computed" in warning for warning in body["warnings"])


def test_a_sequential_report_says_once_per_metric_that_quantiles_are_fixed_horizon(
        db: Session) -> None:
    experiment = make_experiment(db, metrics=QUANTILE_METRICS[:2],
                                 analysis={**ANALYSIS, "method": "sequential"})
    exposures, events, _ = _purchases(random.Random(4))
    _insert(db, experiment.id, exposures, events)
    body = analyze_experiment(db, "checkout", now=T0 + timedelta(days=4)).body
    notes = [w for w in body["warnings"] if "fixed-horizon" in w]
    assert notes == ["basket-p90: quantile metrics use a fixed-horizon test, not a sequential one"]


def test_step_durations_to_the_second_in_the_metric_and_the_funnel(db: Session) -> None:
    experiment = make_experiment(db, metrics=QUANTILE_METRICS,
                                 analysis={**ANALYSIS, "time_on_step": True})
    at = lambda seconds: T0 + timedelta(hours=1, seconds=seconds)  # noqa: E731
    steps = {  # unit -> [(step, seconds after exposure + 1 h)]
        "a": [("landing", 0), ("cart", 30), ("checkout", 130.25), ("payment", 190.25)],
        "b": [("cart", 10), ("cart", 50), ("payment", 70)],  # the FIRST cart counts; skips
        "c": [("checkout", 5), ("cart", 20), ("confirmation", 3620)],  # back to cart, leaves
        "d": [("cart", 0), ("landing", 40)],  # goes back only: never leaves cart
        "e": [("landing", -7200), ("cart", 100), ("checkout", 103)],  # landing before exposure
        "f": [("cart", 0), ("checkout", 72 * 3600)],  # leaves after the window: left out
    }
    events = [{"unit_id": unit, "type": "step", "name": "view", "step": step,
               "occurred_at": at(seconds)} for unit, rows in steps.items()
              for step, seconds in rows]
    events.append({"unit_id": "a", "type": "friction", "name": "error", "step": "payment",
                   "friction_kind": "error", "occurred_at": at(10)})  # not a step event
    _insert(db, experiment.id, [(unit, "control") for unit in steps] + [("t", "one-page")],
            events)
    body = analyze_experiment(db, "checkout", now=T0 + timedelta(days=4)).body
    control = {entry["step"]: entry["variants"]["control"]["time_on_step"]
               for entry in body["funnel"]}
    # cart: a 100.25 s, b 60 s, c 3600 s, e 3 s → sorted 3, 60, 100.25, 3600
    assert control["cart"] == {"p50": 60.0, "p90": 3600.0, "n": 4}
    assert control["landing"] == {"p50": 30.0, "p90": 30.0, "n": 1}  # a only (e: before)
    assert control["checkout"] == {"p50": 60.0, "p90": 3615.0, "n": 2}  # a 60 s, c 3615 s
    assert control["payment"] == control["confirmation"] == {"p50": None, "p90": None, "n": 0}
    assert body["funnel"][1]["variants"]["one-page"]["time_on_step"]["n"] == 0
    metric = next(m for m in body["metrics"] if m["key"] == "cart-time-p50")
    assert (metric["source"], metric["step"]) == ("step_duration", "cart")
    assert [(v["variant"], v["units"], v["estimate"]) for v in metric["variants"]] == [
        ("control", 4, 60.0), ("one-page", 0, None)]
    assert any("cart-time-p50" in warning and "fewer than 100" in warning
               for warning in body["warnings"])


def test_many_events_per_unit_widen_the_event_level_interval(db: Session) -> None:
    """Each unit's purchases cluster around its own level: the clustering factor is well
    above 1 and multiplies the i.i.d. standard error."""
    experiment = make_experiment(db, metrics=QUANTILE_METRICS, analysis=ANALYSIS)
    rng = random.Random(8)
    events = []
    for index in range(120):
        level = rng.lognormvariate(4, 1)
        events += [{"unit_id": f"u{index}", "name": "purchase",
                    "value": round(level * rng.uniform(0.95, 1.05), 3),
                    "occurred_at": T0 + timedelta(minutes=rng.randrange(1, 4000))}
                   for _ in range(10)]
    _insert(db, experiment.id, [(f"u{index}", "control") for index in range(120)], events)
    spec = QuantileSpec("order-p50", "event_value", 0.5, event="purchase")
    stats = quantile_stats(db, own_sources(experiment.id), spec, journey=JOURNEY,
                           hours=72)[("control",)]
    assert stats.n == 1200 and stats.clusters is not None
    assert (stats.clusters.n, stats.clusters.den_sum) == (120, 1200)
    factor = clustering_factor(stats.clusters, n=stats.n, quantile=0.5)
    assert factor is not None and factor > 5  # ~10 events per unit, nearly identical
    clustered = estimate_quantile(stats, quantile=0.5)
    plain = estimate_quantile(QuantileStats(stats.n, stats.estimate, stats.lower, stats.upper),
                              quantile=0.5)
    assert clustered.se == pytest.approx(plain.se * np.sqrt(factor), rel=1e-12)


def test_the_one_statement_keeps_every_rank_the_estimator_needs(db: Session) -> None:
    """n from 1 to 300 shuffled values 0..n-1 (the value at rank r is r - 1): for every n,
    level and alpha the statement keeps the point and outer-interval ranks (clamps
    included), and only a few rows around them."""
    table = sa.Table("ranked_check", sa.MetaData(), sa.Column("variant_key", sa.Integer),
                     sa.Column("value", sa.Float), prefixes=["TEMPORARY"])
    table.create(db.connection())
    rng = random.Random(7)
    db.execute(table.insert(), [{"variant_key": n, "value": float(value)}
                                for n in range(1, 301)
                                for value in rng.sample(range(n), n)])
    levels = [0.01, 0.25, 0.5, 0.9, 0.99]
    for alpha in (0.05, 0.2):
        found = order_statistics(db, table, ["variant_key"], levels, alpha=alpha)
        assert set(found) == {(n,) for n in range(1, 301)}
        for (n,), (count, values) in found.items():
            ranks = [needed_ranks(n, quantile=level, alpha=alpha) for level in levels]
            assert count == n
            assert values == {r: r - 1.0 for q in ranks for r in (q.point, q.lower, q.upper)}
        kept = db.execute(order_statistics_query(table, ["variant_key"], levels, alpha=alpha)
                          ).all()
        per_partition = Counter(row.variant_key for row in kept)
        assert max(per_partition.values()) <= 2 + 13 * len(levels)  # of up to 300 values
        assert per_partition[300] < 300 / 4


def test_a_time_on_step_quantile_never_falls_by_more_than_all_of_it(db: Session) -> None:
    """Heavy-tailed times on ``cart`` (log-normal, σ = 2), the treatment's p90 about half
    the control's on 100 units each: the delta method's relative interval reaches below
    −100 %, which a duration cannot; the report cuts it there (``nonnegative``)."""
    experiment = make_experiment(db, metrics=[QUANTILE_METRICS[0],
                                              {**QUANTILE_METRICS[3], "quantile": 0.9}],
                                 analysis=ANALYSIS)
    rng = np.random.default_rng(2)
    times = {"control": rng.lognormal(0.0, 2.0, size=100),
             "one-page": rng.lognormal(-0.7, 2.0, size=100)}
    at = lambda seconds: T0 + timedelta(hours=1, seconds=float(seconds))  # noqa: E731
    exposures, events = [], []
    for variant, seconds in times.items():
        for number, duration in enumerate(seconds):
            unit = f"{variant}-{number}"
            exposures.append((unit, variant))
            events += [{"unit_id": unit, "type": "step", "name": "view", "step": step,
                        "occurred_at": at(offset)}
                       for step, offset in (("cart", 0), ("checkout", round(duration, 3)))]
    _insert(db, experiment.id, exposures, events)
    body = analyze_experiment(db, "checkout", now=T0 + timedelta(days=4)).body
    metric = next(m for m in body["metrics"] if m["key"] == "cart-time-p50")
    comparison = metric["comparisons"][0]
    assert comparison["relative_effect"] == pytest.approx(-0.55, abs=0.1)
    assert comparison["relative_ci"][0] == -1.0 < comparison["relative_ci"][1]
