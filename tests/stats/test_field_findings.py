"""Findings from real reports: rare events under the sequential test, negative controls."""

from __future__ import annotations

import pytest

from stats import ProportionStats, VariantInput, analyze_variants
from stats.sequential import TUNING_UNITS_PER_ARM, mixing_variance


def test_mixing_variance_never_falls_below_the_tuning_standard_error():
    unit_variance = 0.02 * 0.98
    assert mixing_variance(0.02, unit_variance, 0.05) == 2 * unit_variance / TUNING_UNITS_PER_ARM
    assert mixing_variance(10.0, 4.0, 0.05) == (0.05 * 10.0) ** 2


def test_a_sixfold_rise_of_a_rare_friction_is_detected_sequentially():
    variants = [
        VariantInput("control", True, ProportionStats(n=3000, successes=60)),
        VariantInput("one-page", False, ProportionStats(n=3000, successes=360)),
    ]
    result = analyze_variants(
        "friction", variants, method="sequential", mde=0.05, direction="decrease"
    )
    comparison = result.comparisons[0]
    assert comparison.p_value is not None and comparison.p_value < 1e-6
    assert comparison.verdict == "worse"
    assert comparison.relative_ci is not None and comparison.relative_ci[0] > 1.0


def test_nps_effects_are_in_points_without_a_relative_effect():
    from stats import NpsStats

    variants = [
        VariantInput("control", True, NpsStats(n=1000, promoters=250, detractors=337)),
        VariantInput("one-page", False, NpsStats(n=1000, promoters=280, detractors=330)),
    ]
    for method in ("frequentist", "sequential", "bayesian"):
        comparison = analyze_variants("nps", variants, method=method).comparisons[0]
        assert comparison.absolute_effect == pytest.approx(3.7)
        assert comparison.absolute_ci[0] < 3.7 < comparison.absolute_ci[1]
        assert comparison.relative_effect is None and comparison.relative_ci is None


def test_relative_interval_keeps_its_sign_when_the_control_is_negative():
    from stats import MeanStats

    variants = [
        VariantInput("control", True, MeanStats(400, -4000.0, 80000.0)),
        VariantInput("treatment", False, MeanStats(400, -3000.0, 62500.0)),
    ]
    comparison = analyze_variants("mean", variants).comparisons[0]
    assert comparison.relative_effect == pytest.approx(0.25)
    low, high = comparison.relative_ci
    assert low < 0.25 < high and (low > 0) == (comparison.absolute_ci[0] > 0)
