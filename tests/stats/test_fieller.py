"""Fieller relative intervals: SPEC §6 reference values, the 0-exclusion property, Bayesian
credible intervals against Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats import proportion as sm_proportion

from stats import (
    MeanStats,
    ProportionStats,
    analyze_variants,
    compare,
    summarize,
)
from stats.bayesian import beta_credible_intervals
from stats.fieller import fieller_interval
from stats.sequential import confidence_sequence_half_width, confidence_sequence_multiplier
from tests.stats.simulate import mean_stats, ratio_stats, two_arms

Z = float(sps.norm.isf(0.025))


def _conversion(control: tuple[int, int], treatment: tuple[int, int], **options):  # type: ignore[no-untyped-def]
    """The comparison of two (successes, n) arms."""
    arms = [summarize(ProportionStats(n, s)) for s, n in (control, treatment)]
    return compare("conversion", *arms, **options)


def test_rare_control_gives_the_spec_reference_interval() -> None:
    comparison = _conversion((10, 1600), (54, 1700))
    assert comparison.absolute_effect == pytest.approx(0.025515, abs=1e-6)
    assert comparison.absolute_ci == pytest.approx((0.016327, 0.034702), abs=1e-6)
    assert comparison.relative_effect == pytest.approx(4.082353, abs=1e-6)
    assert comparison.relative_ci == pytest.approx((1.865612, 12.575347), abs=1e-6)


def test_borderline_result_gives_the_spec_reference_interval() -> None:
    comparison = _conversion((500, 5000), (560, 5000))
    assert comparison.relative_ci == pytest.approx((-0.000612, 0.256209), abs=1e-6)
    assert comparison.p_value == pytest.approx(0.0512, abs=1e-4)
    reference = sm_proportion.test_proportions_2indep(
        560, 5000, 500, 5000, method="wald", compare="diff"
    )
    assert comparison.p_value == pytest.approx(reference.pvalue, abs=1e-9)


def test_control_interval_through_zero_has_no_relative_interval() -> None:
    assert fieller_interval(0.001, 0.001**2, 0.05, 0.0001, critical=Z) is None
    comparison = compare(
        "mean", summarize(MeanStats(10, 1.0, 50.0)), summarize(MeanStats(10, 30.0, 200.0))
    )
    assert comparison.relative_effect == pytest.approx(29.0)
    assert comparison.relative_ci is None
    assert any("no relative interval" in note for note in comparison.warnings)


def test_negative_control_reads_up_as_up() -> None:
    up = fieller_interval(-10.0, 1.0, -8.0, 1.0, critical=Z)
    assert up is not None and up[0] < 0.2 < up[1]
    mirrored = fieller_interval(10.0, 1.0, 8.0, 1.0, critical=Z)
    assert up == pytest.approx((-mirrored[1], -mirrored[0]))


def test_sequential_multiplier_is_the_half_width_per_standard_error() -> None:
    multiplier = confidence_sequence_multiplier(0.04, 0.01, 0.05)
    assert multiplier * 0.2 == pytest.approx(confidence_sequence_half_width(0.04, 0.01, 0.05))
    assert multiplier > Z


def _random_variants(kind: str, rng: np.random.Generator) -> list:  # type: ignore[type-arg]
    """Two arms of random sufficient statistics, small and large effects mixed."""
    n_c, n_t = (int(n) for n in rng.integers(20, 5000, 2))
    if kind == "conversion":
        p = rng.uniform(0.005, 0.5)
        lift = rng.choice([1.0, rng.uniform(0.5, 2.0)])
        records = [
            ProportionStats(n_c, int(rng.binomial(n_c, p))),
            ProportionStats(n_t, int(rng.binomial(n_t, min(p * lift, 1.0)))),
        ]
    elif kind in ("mean", "count"):
        draw = (
            (lambda n, s: rng.poisson(s, n))
            if kind == "count"
            else (lambda n, s: rng.gamma(2.0, s / 2.0, n))
        )
        scale = rng.uniform(0.05, 20.0)
        lift = rng.choice([1.0, rng.uniform(0.7, 1.5)])
        records = [
            mean_stats(draw(n_c, scale).astype(float)),
            mean_stats(draw(n_t, scale * lift).astype(float)),
        ]
    else:
        arms = []
        for n, lift in ((n_c, 1.0), (n_t, rng.choice([1.0, rng.uniform(0.7, 1.5)]))):
            den = rng.poisson(2.0, n).astype(float) + 1.0
            arms.append(ratio_stats(rng.gamma(2.0, lift, n) * den, den))
        records = arms
    return two_arms(*records)


@pytest.mark.parametrize("method", ["frequentist", "sequential"])
@pytest.mark.parametrize("kind", ["conversion", "mean", "count", "ratio"])
def test_relative_interval_excludes_zero_exactly_when_the_absolute_one_does(
    kind: str, method: str
) -> None:
    rng = np.random.default_rng(sum(map(ord, kind + method)))
    checked = excluding = 0
    for _ in range(300):
        comparison = analyze_variants(kind, _random_variants(kind, rng), method=method).comparisons[
            0
        ]  # type: ignore[arg-type]
        if comparison.absolute_ci is None or comparison.relative_ci is None:
            assert comparison.relative_ci is None
            continue
        absolute_excludes = not comparison.absolute_ci[0] <= 0.0 <= comparison.absolute_ci[1]
        relative_excludes = not comparison.relative_ci[0] <= 0.0 <= comparison.relative_ci[1]
        assert absolute_excludes == relative_excludes
        assert (comparison.p_value < comparison.alpha) == absolute_excludes
        checked += 1
        excluding += absolute_excludes
    assert checked > 250 and 20 < excluding < checked - 20


@pytest.mark.parametrize(
    "control,treatment",
    [
        ((10, 1600), (54, 1700)),
        ((500, 5000), (560, 5000)),
        ((3, 40), (9, 35)),
        ((45, 50), (40, 52)),
    ],
)
def test_beta_credible_intervals_match_monte_carlo(
    control: tuple[int, int], treatment: tuple[int, int]
) -> None:
    rng = np.random.default_rng(17)
    draws_c = rng.beta(1 + control[0], 1 + control[1] - control[0], 1_000_000)
    draws_t = rng.beta(1 + treatment[0], 1 + treatment[1] - treatment[0], 1_000_000)
    absolute, relative = beta_credible_intervals(control, treatment, alpha=0.05)
    mc_absolute = np.quantile(draws_t - draws_c, [0.025, 0.975])
    mc_relative = np.quantile(draws_t / draws_c - 1.0, [0.025, 0.975])
    assert absolute == pytest.approx(mc_absolute, rel=0.01, abs=2e-4)
    assert relative == pytest.approx(mc_relative, rel=0.01, abs=2e-3)


def test_normal_posterior_intervals_match_monte_carlo() -> None:
    variants = two_arms(MeanStats(400, 4000.0, 80000.0), MeanStats(380, 4180.0, 85000.0))
    (comparison,) = analyze_variants("mean", variants, method="bayesian").comparisons
    control, treatment = (summarize(v.stats) for v in variants)
    rng = np.random.default_rng(23)
    draws_c = rng.normal(control.mean, np.sqrt(control.se2), 1_000_000)
    draws_t = rng.normal(treatment.mean, np.sqrt(treatment.se2), 1_000_000)
    assert comparison.absolute_ci == pytest.approx(
        np.quantile(draws_t - draws_c, [0.025, 0.975]), rel=0.01
    )
    assert comparison.relative_ci == pytest.approx(
        np.quantile(draws_t / draws_c - 1.0, [0.025, 0.975]), rel=0.01
    )
    assert comparison.chance_to_win == pytest.approx(np.mean(draws_t > draws_c), abs=2e-3)


def test_bayesian_verdict_follows_the_chance_to_win_and_the_direction() -> None:
    up = _conversion((500, 5000), (600, 5000), method="bayesian")
    down = _conversion((500, 5000), (600, 5000), method="bayesian", direction="decrease")
    assert up.chance_to_win >= 0.95 and up.verdict == "better" and up.p_value is None
    assert down.chance_to_win <= 0.05 and down.verdict == "worse"
    unsure = _conversion((500, 5000), (520, 5000), method="bayesian")
    assert 0.05 < unsure.chance_to_win < 0.95 and unsure.verdict == "inconclusive"


@pytest.mark.parametrize("method", ["frequentist", "sequential"])
def test_frequentist_frameworks_carry_no_chance_to_win(method: str) -> None:
    comparison = _conversion((500, 5000), (600, 5000), method=method)
    assert comparison.chance_to_win is None and comparison.expected_loss is None
    assert comparison.p_value is not None


def test_holm_leaves_bayesian_verdicts_alone() -> None:
    variants = two_arms(ProportionStats(5000, 500), ProportionStats(5000, 600))
    (comparison,) = analyze_variants(
        "conversion", variants, method="bayesian", correction="holm"
    ).comparisons
    assert comparison.adjusted_p_value is None and comparison.verdict == "better"
