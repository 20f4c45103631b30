"""Quantile metrics: SPEC §11 reference, numpy reference, clustering and A/A coverage."""

from __future__ import annotations

import numpy as np
import pytest

from stats import RatioStats, StatsInputError
from stats.quantile import (
    QuantileStats,
    QuantileVariantInput,
    analyze_quantiles,
    clustering_factor,
    compare_quantiles,
    estimate_quantile,
    needed_ranks,
    stats_from_sorted,
)

SPEC_VALUES = np.arange(1, 10_001, dtype=float)


def _spec_pair() -> tuple[QuantileStats, QuantileStats]:
    return (stats_from_sorted(SPEC_VALUES, quantile=0.9),
            stats_from_sorted(SPEC_VALUES + 50, quantile=0.9))


def test_spec_reference_case_to_1e_6() -> None:
    ranks = needed_ranks(10_000, quantile=0.9)
    assert ranks is not None and (ranks.point, ranks.lower, ranks.upper) == (9000, 8942, 9059)
    control, treatment = (estimate_quantile(s, quantile=0.9) for s in _spec_pair())
    assert control.estimate == 9000 and treatment.estimate == 9050
    assert control.se == pytest.approx(29.847487, abs=1e-6)
    assert treatment.se == pytest.approx(29.847487, abs=1e-6)
    comparison = compare_quantiles(control, treatment, variant="t")
    assert comparison.absolute_effect == 50
    assert comparison.statistic is not None
    assert 50 / comparison.statistic == pytest.approx(42.210721, abs=1e-6)
    assert comparison.absolute_ci == pytest.approx((-32.731493, 132.731493), abs=1e-6)
    assert comparison.p_value == pytest.approx(0.236202, abs=1e-6)
    assert comparison.verdict == "inconclusive"


def test_relative_effect_uses_the_delta_method() -> None:
    control, treatment = (estimate_quantile(s, quantile=0.9) for s in _spec_pair())
    comparison = compare_quantiles(control, treatment)
    se = np.sqrt(29.84748723**2 / 9000**2 + 9050**2 * 29.84748723**2 / 9000**4)
    assert comparison.relative_effect == pytest.approx(50 / 9000, rel=1e-12)
    assert comparison.relative_ci == pytest.approx(
        (50 / 9000 - 1.959963985 * se, 50 / 9000 + 1.959963985 * se), abs=1e-8)


@pytest.mark.parametrize("quantile", [0.01, 0.1, 0.5, 0.73, 0.9, 0.99])
@pytest.mark.parametrize("n", [1, 7, 100, 1_001])
def test_point_estimate_is_numpy_inverted_cdf(n: int, quantile: float) -> None:
    values = np.sort(np.random.default_rng(n).lognormal(size=n))
    result = stats_from_sorted(values, quantile=quantile)
    assert result.estimate == np.quantile(values, quantile, method="inverted_cdf")
    h = 1.959963984540054 * np.sqrt(quantile * (1 - quantile) / n)
    lower = np.quantile(values, max(quantile - h, 0.0), method="inverted_cdf")
    upper = np.quantile(values, min(quantile + h, 1.0), method="inverted_cdf")
    assert (result.lower, result.upper) == (lower, upper)


def test_ranks_are_clamped_to_the_sample() -> None:
    ranks = needed_ranks(3, quantile=0.5)  # ν ± h = 0.5 ± 0.566: ranks 0 and 4 clamped
    assert ranks is not None and (ranks.point, ranks.lower, ranks.upper) == (2, 1, 3)
    assert needed_ranks(0, quantile=0.5) is None


def test_fewer_than_100_values_give_an_estimate_and_no_test() -> None:
    small = stats_from_sorted(np.arange(99.0), quantile=0.5)
    estimate = estimate_quantile(small, quantile=0.5)
    assert (estimate.estimate, estimate.se, estimate.ci) == (49.0, None, None)
    assert "fewer than 100" in estimate.warnings[0]
    big = estimate_quantile(stats_from_sorted(np.arange(1000.0), quantile=0.5), quantile=0.5)
    comparison = compare_quantiles(estimate, big)
    assert comparison.absolute_effect == 450.0
    assert comparison.p_value is None and comparison.absolute_ci is None
    assert comparison.verdict == "inconclusive"


def test_clustering_factor_is_one_for_one_event_per_unit_and_two_for_duplicates() -> None:
    n, quantile = 1000, 0.9
    below = 900  # units whose single event is at or below the quantile
    single = RatioStats(n, below, below, n, n, below)
    assert clustering_factor(single, n=n, quantile=quantile) == pytest.approx(n / (n - 1))
    # every unit sends its value twice: 2n events, each unit's S is 0 or 2, N = 2
    double = RatioStats(n, 2 * below, 4 * below, 2 * n, 4 * n, 4 * below)
    assert clustering_factor(double, n=2 * n, quantile=quantile) == pytest.approx(
        2 * n / (n - 1))


def test_event_level_se_is_inflated_by_the_clustering_factor() -> None:
    values = np.repeat(SPEC_VALUES, 2)
    sums = RatioStats(10_000, 2 * 9000, 4 * 9000, 20_000, 40_000, 4 * 9000)
    plain = estimate_quantile(stats_from_sorted(values, quantile=0.9), quantile=0.9)
    clustered = estimate_quantile(
        stats_from_sorted(values, quantile=0.9, clusters=sums), quantile=0.9)
    factor = clustering_factor(sums, n=20_000, quantile=0.9)
    assert factor == pytest.approx(20_000 / 9_999)
    assert plain.se is not None and clustered.se is not None
    assert clustered.se == pytest.approx(plain.se * np.sqrt(factor))


def test_analyze_quantiles_gives_the_report_shape_and_sequential_warning() -> None:
    control, treatment = _spec_pair()
    result = analyze_quantiles(
        [QuantileVariantInput("c", True, control), QuantileVariantInput("t", False, treatment)],
        quantile=0.9, method="sequential", weights=[0.5, 0.5])
    assert result.kind == "quantile"
    assert [v.estimate for v in result.variants] == [9000.0, 9050.0]
    assert result.variants[0].ci == (8942.0, 9059.0)
    assert result.comparisons[0].adjusted_p_value == pytest.approx(0.236202, abs=1e-6)
    assert result.srm is not None and not result.srm.detected
    assert any("fixed-horizon" in w for w in result.warnings)


def test_bayesian_quantiles_carry_chance_to_win_and_no_p_value() -> None:
    control, treatment = (estimate_quantile(s, quantile=0.9) for s in _spec_pair())
    comparison = compare_quantiles(control, treatment, method="bayesian", direction="decrease")
    assert comparison.p_value is None
    assert comparison.chance_to_win == pytest.approx(1 - 0.881897, abs=1e-5)


@pytest.mark.parametrize("bad", [0.0, 0.005, 0.995, 1.0, True])
def test_quantile_level_outside_range_is_rejected(bad: float) -> None:
    with pytest.raises(StatsInputError) as error:
        needed_ranks(100, quantile=bad)
    assert error.value.field == "quantile"


def test_order_statistics_must_be_present_and_ordered() -> None:
    with pytest.raises(StatsInputError) as error:
        QuantileStats(10, 1.0, None, 2.0)
    assert error.value.field == "lower"
    with pytest.raises(StatsInputError) as error:
        QuantileStats(10, 1.0, 3.0, 2.0)
    assert error.value.field == "upper"


def test_aa_coverage_of_the_95_percent_interval_is_nominal() -> None:
    """2,000 seeded A/A experiments with log-normal durations: 93–97 % of CIs cover 0."""
    rng = np.random.default_rng(20261204)
    experiments, n, quantile = 2_000, 1_000, 0.9
    values = np.sort(rng.lognormal(mean=3.0, sigma=1.0, size=(experiments, 2, n)), axis=2)
    ranks = needed_ranks(n, quantile=quantile)
    assert ranks is not None
    picked = values[:, :, [ranks.point - 1, ranks.lower - 1, ranks.upper - 1]]
    covered = 0
    for arms in picked:
        control, treatment = (
            estimate_quantile(QuantileStats(n, *map(float, arm)), quantile=quantile)
            for arm in arms)
        ci = compare_quantiles(control, treatment).absolute_ci
        assert ci is not None
        covered += ci[0] <= 0.0 <= ci[1]
    assert 0.93 <= covered / experiments <= 0.97


def _wide_drop() -> tuple[QuantileStats, QuantileStats]:
    """Heavy-tailed durations (log-normal, σ = 2, as time on a step is) on 100 units each,
    the treatment's p90 about half the control's: the delta method's relative interval
    reaches below −100 %."""
    rng = np.random.default_rng(2)
    control = np.sort(rng.lognormal(0.0, 2.0, size=100))
    treatment = np.sort(rng.lognormal(-0.7, 2.0, size=100))
    return (stats_from_sorted(control, quantile=0.9),
            stats_from_sorted(treatment, quantile=0.9))


def test_a_duration_quantile_cannot_fall_by_more_than_all_of_it() -> None:
    control, treatment = (estimate_quantile(s, quantile=0.9) for s in _wide_drop())
    uncut = compare_quantiles(control, treatment)
    cut = compare_quantiles(control, treatment, nonnegative=True)
    assert uncut.relative_ci is not None and uncut.relative_ci[0] < -1.0
    assert cut.relative_ci == (-1.0, uncut.relative_ci[1])
    assert (cut.absolute_ci, cut.p_value, cut.verdict) == (
        uncut.absolute_ci, uncut.p_value, uncut.verdict)


def test_analyze_quantiles_passes_nonnegative_to_every_comparison() -> None:
    control, treatment = _wide_drop()
    result = analyze_quantiles(
        [QuantileVariantInput("a", True, control), QuantileVariantInput("b", False, treatment)],
        quantile=0.9, nonnegative=True)
    assert result.comparisons[0].relative_ci is not None
    assert result.comparisons[0].relative_ci[0] == -1.0
