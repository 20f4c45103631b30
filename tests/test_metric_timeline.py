"""The report's counts and ``metric_timeline`` (daily and cumulative effects) on both backends."""

from __future__ import annotations

from datetime import timedelta

import pytest
from statsmodels.stats.proportion import confint_proportions_2indep

from experiments.services.analysis import analyze_experiment
from tests.test_aggregation import T0, seed_traffic
from tests.test_analysis import metric, running

NOW = T0 + timedelta(days=4)


def timeline_of(body: dict, key: str) -> list[dict]:
    return next(m for m in body["metric_timeline"] if m["metric"] == key)["points"]


def wald(counts: list[tuple[int, int]]) -> tuple[float, float]:
    """statsmodels' unpooled Wald interval of treatment − control (SPEC §6)."""
    (c_hits, c_n), (t_hits, t_n) = counts
    return confint_proportions_2indep(t_hits, t_n, c_hits, c_n, method="wald", compare="diff")


def test_conversion_variants_carry_their_counts_and_the_wald_interval_matches(db):
    experiment = running(db, method="frequentist", cuped=False)
    seed_traffic(db, experiment, units={"control": 900, "one-page": 900},
                 conversion={"control": 0.10, "one-page": 0.16}, days=3, seed=5)
    body = analyze_experiment(db, "checkout", now=NOW).body
    purchase = metric(body, "purchase")
    variants = {v["variant"]: v for v in purchase["variants"]}
    for entry in variants.values():
        assert entry["estimate"] == pytest.approx(entry["conversions"] / entry["units"])
    assert variants["control"]["units"] == 900 and 60 < variants["control"]["conversions"] < 120
    revenue = {v["variant"]: v for v in metric(body, "revenue")["variants"]}
    assert revenue["one-page"]["estimate"] == pytest.approx(
        revenue["one-page"]["sum"] / revenue["one-page"]["units"])
    low, high = wald([(variants[k]["conversions"], variants[k]["units"])
                      for k in ("control", "one-page")])
    last = timeline_of(body, "purchase")[-1]["cumulative"]
    assert last["absolute_ci"] == pytest.approx([low, high], abs=1e-9)
    assert last["absolute_effect"] == pytest.approx(
        purchase["comparisons"][0]["absolute_effect"], abs=1e-12)


def test_metric_timeline_has_daily_cohorts_and_running_totals_for_every_metric(db):
    experiment = running(db, method="frequentist", cuped=False)
    seed_traffic(db, experiment, units={"control": 900, "one-page": 900},
                 conversion={"control": 0.10, "one-page": 0.16}, days=3, seed=5)
    body = analyze_experiment(db, "checkout", now=NOW).body
    assert [m["metric"] for m in body["metric_timeline"]] == [
        "purchase", "revenue", "payment-errors"]
    points = timeline_of(body, "purchase")
    assert [p["date"] for p in points] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert {p["variant"] for p in points} == {"one-page"}
    assert [p["daily"]["units"] for p in points] == [300, 300, 300]
    assert [p["cumulative"]["units"] for p in points] == [300, 600, 900]
    assert [p["cumulative"]["control_units"] for p in points] == [300, 600, 900]
    first = points[0]
    assert first["daily"] == first["cumulative"]  # day one: the cohort is everything so far
    for point in points:  # the running total's interval narrows as units accrue
        low, high = point["cumulative"]["absolute_ci"]
        assert low < point["cumulative"]["absolute_effect"] < high
    widths = [p["cumulative"]["absolute_ci"][1] - p["cumulative"]["absolute_ci"][0]
              for p in points]
    assert widths == sorted(widths, reverse=True)
    # The cumulative effect of the last day is the report's own (no CUPED, same framework).
    revenue = timeline_of(body, "revenue")[-1]["cumulative"]
    assert revenue["absolute_ci"] == pytest.approx(
        metric(body, "revenue")["comparisons"][0]["absolute_ci"], rel=1e-9)


def test_metric_timeline_is_empty_without_units(db):
    running(db)
    body = analyze_experiment(db, "checkout", now=NOW).body
    assert body["metric_timeline"] == []
