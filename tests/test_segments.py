"""Segments from hand-made per-level aggregates (SPEC §11): levels, tests, BH, heterogeneity."""

from __future__ import annotations

import pytest

from experiments.models import Experiment, Metric, Variant
from experiments.schemas import AnalysisSettings
from experiments.services.pipeline import JourneyCounts
from experiments.services.segments import (
    NULL,
    OTHER,
    SLICE_WARNING,
    LevelAggregates,
    merge_levels,
    segments_section,
)
from stats import adjust_p_values
from stats.heterogeneity import level_vs_rest
from stats.quantile import stats_from_sorted


def experiment(*metrics: Metric, method: str = "frequentist") -> Experiment:
    return Experiment(
        key="checkout", journey=["cart", "payment"],
        variants=[Variant(key="control", weight=0.5, is_control=True),
                  Variant(key="one-page", weight=0.5, is_control=False)],
        metrics=list(metrics) or [Metric(key="purchase", kind="conversion", role="primary",
                                         direction="increase", event="purchase")],
        analysis={"method": method})


def conversion_level(level: str, n: int, control: float, treatment: float,
                     treatment_n: int | None = None) -> LevelAggregates:
    t_n = n if treatment_n is None else treatment_n
    return LevelAggregates(
        level, {"control": n, "one-page": t_n},
        {"purchase": {"control": {"n": n, "sum": round(n * control)},
                      "one-page": {"n": t_n, "sum": round(t_n * treatment)}}})


def section(levels, exp: Experiment | None = None, **settings):
    exp = exp or experiment()
    [body] = segments_section(exp, AnalysisSettings(method="frequentist", **settings),
                              {"country": levels})
    return body


def level(body, name):
    return next(entry for entry in body["levels"] if entry["level"] == name)


def test_only_the_level_where_the_treatment_helps_is_flagged():
    levels = [conversion_level("FR", 5_000, 0.10, 0.13),
              *(conversion_level(c, 5_000, 0.10, 0.10) for c in ("DE", "ES", "IT", "BE"))]
    body = section(levels)
    assert body["dimension"] == "country" and body["merged_levels"] == 0
    assert body["warnings"] == [SLICE_WARNING]
    fr = level(body, "FR")
    assert fr["heterogeneity"][0]["detected"] is True
    assert fr["heterogeneity"][0]["effect"] == pytest.approx(0.03)
    assert fr["heterogeneity"][0]["rest_effect"] == pytest.approx(0.0)
    assert fr["metrics"][0]["comparisons"][0]["verdict"] == "better"
    flagged = [e["level"] for e in body["levels"] if e["heterogeneity"][0]["detected"]]
    assert flagged == ["FR"]


def test_heterogeneity_is_the_spec_z_test_with_bonferroni_over_the_dimension():
    levels = [conversion_level("FR", 5_000, 0.10, 0.13),
              conversion_level("DE", 20_000, 0.10, 0.105)]
    body = section(levels)
    fr = level(body, "FR")["heterogeneity"][0]
    expected = level_vs_rest(effect=0.03, variance=0.1 * 0.9 / 5000 + 0.13 * 0.87 / 5000,
                             rest_effect=0.005,
                             rest_variance=0.1 * 0.9 / 20000 + 0.105 * 0.895 / 20000)
    assert fr["p_value"] == pytest.approx(3.97166e-4, abs=1e-6)
    assert fr["p_value"] == pytest.approx(expected.p_value, rel=1e-9)
    assert fr["adjusted_p_value"] == pytest.approx(2 * fr["p_value"])  # 2 tests: FR and DE
    assert fr["detected"] is True and level(body, "DE")["heterogeneity"][0]["detected"] is True


def test_adjusted_p_values_are_bh_over_levels_metrics_and_treatments():
    exp = experiment(Metric(key="purchase", kind="conversion", role="primary",
                            direction="increase", event="purchase"),
                     Metric(key="revenue", kind="mean", role="secondary", direction="increase",
                            event="purchase"))
    levels = []
    for name, rate, mean in (("FR", 0.13, 12.0), ("DE", 0.11, 10.2), ("ES", 0.10, 10.0)):
        base = conversion_level(name, 2_000, 0.10, rate)
        levels.append(LevelAggregates(name, base.units, {
            **base.metrics,
            "revenue": {"control": {"n": 2000, "sum": 20_000.0, "sum_squares": 2000 * 125.0},
                        "one-page": {"n": 2000, "sum": 2000 * mean,
                                     "sum_squares": 2000 * (25.0 + mean * mean)}}}))
    body = section(levels, exp)
    comparisons = [m["comparisons"][0] for e in body["levels"] for m in e["metrics"]]
    assert len(comparisons) == 6
    expected = adjust_p_values([c["p_value"] for c in comparisons], "bh")
    assert [c["adjusted_p_value"] for c in comparisons] == pytest.approx(list(expected))
    assert all(e["srm"]["detected"] is False for e in body["levels"])
    assert len(body["levels"][0]["heterogeneity"]) == 2  # purchase and revenue, one treatment


def test_a_level_with_60_units_has_estimates_null_tests_and_a_warning():
    levels = [conversion_level("FR", 5_000, 0.10, 0.12), conversion_level("LU", 60, 0.10, 0.50)]
    lu = level(section(levels), "LU")
    comparison = lu["metrics"][0]["comparisons"][0]
    assert lu["units"] == {"control": 60, "one-page": 60}
    assert [v["estimate"] for v in lu["metrics"][0]["variants"]] == pytest.approx([0.1, 0.5])
    assert comparison["absolute_effect"] == pytest.approx(0.4)
    assert comparison["p_value"] is None and comparison["adjusted_p_value"] is None
    assert comparison["absolute_ci"] is None and comparison["verdict"] == "inconclusive"
    assert lu["heterogeneity"][0]["p_value"] is None
    assert lu["heterogeneity"][0]["detected"] is False
    assert any("fewer than 100" in warning for warning in lu["warnings"])
    assert lu["friction_points"] == []


def test_25_levels_keep_the_20_largest_and_merge_5_into_other():
    levels = [conversion_level(f"C{i:02d}", 1_000 + 10 * i, 0.1, 0.1) for i in range(25)]
    levels.append(conversion_level(NULL, 400, 0.1, 0.1))
    body = section(levels)
    names = [entry["level"] for entry in body["levels"]]
    assert names == [f"C{i:02d}" for i in range(24, 4, -1)] + [OTHER, NULL]
    assert body["merged_levels"] == 5
    other = level(body, OTHER)
    assert other["units"]["control"] == sum(1_000 + 10 * i for i in range(5))
    estimate = other["metrics"][0]["variants"][0]
    assert estimate["units"] == other["units"]["control"]
    assert estimate["conversions"] == sum(round((1_000 + 10 * i) * 0.1) for i in range(5))


def test_merge_levels_adds_friction_counts_and_keeps_few_levels_as_they_are():
    one = LevelAggregates("a", {"control": 1}, journey=JourneyCounts(
        reached={("control", "cart"): 1}, friction={("control", "cart", "error"): 1}))
    two = LevelAggregates("b", {"control": 2}, journey=JourneyCounts(
        reached={("control", "cart"): 2}, friction={("control", "cart", "error"): 2}))
    kept, merged = merge_levels([one, two], limit=1)
    assert [k.level for k in kept] == ["b", OTHER] and merged == 1
    assert kept[1].journey.friction == {("control", "cart", "error"): 1}
    assert merge_levels([one, two])[1] == 0


def test_per_level_srm_and_friction_points():
    friction = JourneyCounts(friction={("control", "payment", "error"): 100,
                                       ("one-page", "payment", "error"): 20})
    skewed = conversion_level("FR", 1_000, 0.1, 0.1, treatment_n=1_300)
    levels = [LevelAggregates("FR", skewed.units, skewed.metrics, friction),
              conversion_level("DE", 1_000, 0.1, 0.1)]
    body = section(levels)
    fr, de = level(body, "FR"), level(body, "DE")
    assert fr["srm"]["detected"] is True and de["srm"]["detected"] is False
    assert [(p["step"], p["friction_kind"], p["variant"]) for p in fr["friction_points"]] == [
        ("payment", "error", "one-page")]
    assert fr["friction_points"][0]["rate"] == pytest.approx(20 / 1300)


def test_quantile_metrics_in_segments_use_the_order_statistics():
    exp = experiment(Metric(key="purchase", kind="conversion", role="primary",
                            direction="increase", event="purchase"),
                     Metric(key="order-p90", kind="quantile", role="secondary",
                            direction="increase", event="purchase", quantile=0.9,
                            source="unit_value"))
    values = list(range(1, 10_001))
    base = conversion_level("FR", 10_000, 0.1, 0.1)
    fr = LevelAggregates("FR", base.units, base.metrics, quantiles={"order-p90": {
        "control": stats_from_sorted(values, quantile=0.9),
        "one-page": stats_from_sorted([v + 50 for v in values], quantile=0.9)}})
    body = section([fr, conversion_level("DE", 500, 0.1, 0.1)], exp)
    metric = level(body, "FR")["metrics"][1]
    assert [v["estimate"] for v in metric["variants"]] == [9000.0, 9050.0]
    assert metric["comparisons"][0]["p_value"] == pytest.approx(0.236202, abs=1e-6)
    assert [h["metric"] for h in level(body, "FR")["heterogeneity"]] == ["purchase"]
    empty = level(body, "DE")  # no order statistics for this level: no values, no test
    assert [v["estimate"] for v in empty["metrics"][1]["variants"]] == [None, None]
    assert empty["metrics"][1]["comparisons"][0]["p_value"] is None
    assert any("order-p90" in warning and "no values" in warning
               for warning in empty["warnings"])


def test_heterogeneity_is_bonferroni_adjusted_over_all_dimensions_of_the_report():
    country = [conversion_level("FR", 5_000, 0.10, 0.13),
               conversion_level("DE", 20_000, 0.10, 0.105)]
    device = [conversion_level(name, 5_000, 0.10, 0.11) for name in ("mobile", "desktop")]
    by_country, by_device = segments_section(
        experiment(), AnalysisSettings(method="frequentist"),
        {"country": country, "device": device})
    assert [by_country["dimension"], by_device["dimension"]] == ["country", "device"]
    fr = level(by_country, "FR")["heterogeneity"][0]
    assert fr["adjusted_p_value"] == pytest.approx(4 * fr["p_value"])  # 2 + 2 tests
    assert fr["detected"] is True
    assert level(by_device, "mobile")["heterogeneity"][0]["detected"] is False


def test_export_rows_add_one_row_per_level_metric_and_variant():
    from experiments.schemas.reports import ExportRow, SegmentOut
    from experiments.services.analysis import EXPORT_COLUMNS, export_csv_lines, export_rows

    segments = segments_section(experiment(), AnalysisSettings(method="frequentist"), {
        "country": [conversion_level("FR", 5_000, 0.10, 0.13),
                    conversion_level("DE", 20_000, 0.10, 0.105)]})
    body = {"metrics": [], "segments": segments}
    rows = export_rows(body)
    assert [(r["dimension"], r["level"], r["variant"]) for r in rows] == [
        ("country", "DE", "control"), ("country", "DE", "one-page"),
        ("country", "FR", "control"), ("country", "FR", "one-page")]
    fr = rows[3]
    assert fr["heterogeneity_detected"] is True and rows[0]["heterogeneity_detected"] is None
    assert fr["absolute_effect"] == pytest.approx(0.03)
    assert [ExportRow.model_validate(row).level for row in rows] == ["DE", "DE", "FR", "FR"]
    header = next(iter(export_csv_lines(rows)))
    assert header.strip().split(",")[-4:] == list(EXPORT_COLUMNS[-4:]) == [
        "dimension", "level", "heterogeneity_adjusted_p_value", "heterogeneity_detected"]
    shaped = SegmentOut.model_validate(segments[0]).model_dump()
    assert shaped["levels"][1]["heterogeneity"][0]["detected"] is True
    assert shaped["levels"][1]["metrics"][0]["variants"][1]["conversions"] == 650


def test_an_other_level_merged_by_the_database_keeps_its_count_and_order_statistics():
    other = LevelAggregates(OTHER, {"control": 10}, merged_levels=7,
                            quantiles={"p": {"control": stats_from_sorted([1.0], quantile=0.5)}})
    kept, merged = merge_levels([LevelAggregates("FR", {"control": 50}), other])
    assert [k.level for k in kept] == ["FR", OTHER] and merged == 7
    assert kept[1].quantiles == other.quantiles
