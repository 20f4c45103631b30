"""Calibration by simulating sufficient statistics: error rates, coverage, peeking, CUPED."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from stats import (
    Comparison,
    CupedStats,
    MeanStats,
    ProportionStats,
    VariantInput,
    analyze_variants,
    compare,
    summarize,
    summarize_variants,
)
from stats.sequential import mixing_variance, msprt_p_value
from tests.stats.simulate import simulate_bivariate, simulate_normal_stats, two_arms

EXPERIMENTS = 4000


def _mean_comparisons(sums_c, ss_c, sums_t, ss_t, n, **options):  # type: ignore[no-untyped-def]
    """Comparisons for simulated mean experiments through the public entry point."""
    return [
        compare(
            "mean",
            summarize(MeanStats(n, float(a), float(b))),
            summarize(MeanStats(n, float(c), float(d))),
            **options,
        )
        for a, b, c, d in zip(sums_c, ss_c, sums_t, ss_t, strict=True)
    ]


def test_aa_false_positive_rate_is_alpha_for_means() -> None:
    rng = np.random.default_rng(20)
    n = 300
    control = simulate_normal_stats(rng, n, 10.0, 4.0, EXPERIMENTS)
    treatment = simulate_normal_stats(rng, n, 10.0, 4.0, EXPERIMENTS)
    comparisons = _mean_comparisons(*control, *treatment, n)
    rate = np.mean([c.significant for c in comparisons])
    assert rate == pytest.approx(0.05, abs=0.01)


def test_aa_false_positive_rate_is_alpha_for_conversions() -> None:
    rng = np.random.default_rng(21)
    n = 2000
    successes = rng.binomial(n, 0.1, (EXPERIMENTS, 2))
    significant = [
        compare(
            "conversion",
            summarize(ProportionStats(n, int(c))),
            summarize(ProportionStats(n, int(t))),
        ).significant
        for c, t in successes
    ]
    assert np.mean(significant) == pytest.approx(0.05, abs=0.01)


def test_confidence_intervals_cover_the_true_difference() -> None:
    rng = np.random.default_rng(22)
    n, effect = 200, 0.7
    control = simulate_normal_stats(rng, n, 10.0, 4.0, EXPERIMENTS)
    treatment = simulate_normal_stats(rng, n, 10.0 + effect, 6.0, EXPERIMENTS)
    comparisons = _mean_comparisons(*control, *treatment, n)
    covered = np.mean([c.absolute_ci[0] <= effect <= c.absolute_ci[1] for c in comparisons])
    assert covered == pytest.approx(0.95, abs=0.015)


def _cumulative_looks(rng: np.random.Generator, looks: int, per_look: int, mean: float, sd: float):  # type: ignore[no-untyped-def]
    """Cumulative (n, sum, sum_squares) per look for EXPERIMENTS experiments."""
    sums, squares = simulate_normal_stats(rng, per_look, mean, sd, EXPERIMENTS * looks)
    shape = (EXPERIMENTS, looks)
    n = per_look * np.arange(1, looks + 1)
    return n, sums.reshape(shape).cumsum(axis=1), squares.reshape(shape).cumsum(axis=1)


def _peeking(seed: int, effect: float, mde: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-look naive z p-values and always-valid p-values over 20 looks."""
    rng = np.random.default_rng(seed)
    looks, per_look = 20, 200
    n, sum_c, ss_c = _cumulative_looks(rng, looks, per_look, 10.0, 5.0)
    _, sum_t, ss_t = _cumulative_looks(rng, looks, per_look, 10.0 + effect, 5.0)
    mean_c, mean_t = sum_c / n, sum_t / n
    var_c = (ss_c - sum_c**2 / n) / (n - 1)
    var_t = (ss_t - sum_t**2 / n) / (n - 1)
    diff, v = mean_t - mean_c, (var_c + var_t) / n
    naive = 2 * sps.norm.sf(np.abs(diff) / np.sqrt(v))
    tau2 = np.vectorize(mixing_variance)(mean_c, np.maximum(var_c, var_t), mde)
    always_valid = np.minimum.accumulate(np.vectorize(msprt_p_value)(diff, v, tau2), axis=1)
    return naive, always_valid


def test_sequential_keeps_false_positives_under_alpha_when_peeking() -> None:
    naive, always_valid = _peeking(seed=23, effect=0.0, mde=None)
    naive_rate = np.mean((naive < 0.05).any(axis=1))
    sequential_rate = np.mean((always_valid < 0.05).any(axis=1))
    print(f"\nA/A, 20 looks: naive z {naive_rate:.3f}, mixture SPRT {sequential_rate:.3f}")
    assert naive_rate > 0.12
    assert sequential_rate <= 0.05


def test_sequential_has_power_under_a_true_effect() -> None:
    naive, always_valid = _peeking(seed=24, effect=0.4, mde=0.04)
    fixed_power = np.mean(naive[:, -1] < 0.05)
    sequential_power = np.mean((always_valid < 0.05).any(axis=1))
    print(f"\n4% lift, 20 looks: power fixed {fixed_power:.3f}, sequential {sequential_power:.3f}")
    assert sequential_power > 0.6


def test_sequential_entry_point_matches_the_vectorised_kernel() -> None:
    rng = np.random.default_rng(25)
    n, sum_c, ss_c = _cumulative_looks(rng, 20, 100, 10.0, 5.0)
    _, sum_t, ss_t = _cumulative_looks(rng, 20, 100, 10.3, 5.0)
    for experiment in range(50):
        previous: dict[str, float | None] = {}
        best = 1.0
        for look in range(20):
            stats = [
                MeanStats(int(n[look]), float(s[experiment, look]), float(q[experiment, look]))
                for s, q in ((sum_c, ss_c), (sum_t, ss_t))
            ]
            result = analyze_variants(
                "mean", two_arms(*stats), method="sequential", previous_p_values=previous
            )
            (comparison,) = result.comparisons
            control, treatment = (summarize(s) for s in stats)
            tau2 = mixing_variance(control.mean, max(control.variance, treatment.variance), None)
            best = min(
                best,
                msprt_p_value(treatment.mean - control.mean, control.se2 + treatment.se2, tau2),
            )
            assert comparison.p_value == pytest.approx(best, rel=1e-12)
            earlier = previous.get("treatment")
            assert earlier is None or comparison.p_value <= earlier
            previous = {"treatment": comparison.p_value}


def _cuped_variants(
    arms: list[dict[str, np.ndarray]], i: int, n: int, cuped: bool
) -> list[VariantInput]:
    """Two variants of simulated experiment i, with or without the covariate."""
    variants = []
    for key, arm in zip(("control", "treatment"), arms, strict=True):
        post = MeanStats(n, float(arm["sum"][i]), float(arm["sum_squares"][i]))
        pre = CupedStats(
            float(arm["pre_sum"][i]), float(arm["pre_sum_squares"][i]), float(arm["cross_sum"][i])
        )
        variants.append(VariantInput(key, key == "control", post, pre if cuped else None))
    return variants


def _first_comparison(variants: list[VariantInput]) -> Comparison:
    """Control vs treatment via the pipeline's building blocks (cheaper than an analysis)."""
    (control, treatment), _ = summarize_variants(variants)
    return compare("mean", control, treatment)


def test_cuped_halves_the_variance_and_keeps_coverage() -> None:
    rng = np.random.default_rng(26)
    n, effect, rho = 400, 0.1, 0.8
    cov = np.array([[1.0, rho], [rho, 1.0]])
    arms = [
        simulate_bivariate(rng, n, (5.0, 5.0), cov, EXPERIMENTS),
        simulate_bivariate(rng, n, (5.0, 5.0 + effect), cov, EXPERIMENTS),
    ]
    plain, adjusted, covered = [], [], 0
    for i in range(EXPERIMENTS):
        raw, cup = (
            _first_comparison(_cuped_variants(arms, i, n, cuped)) for cuped in (False, True)
        )
        plain.append(raw.absolute_effect)
        adjusted.append(cup.absolute_effect)
        covered += cup.absolute_ci[0] <= effect <= cup.absolute_ci[1]
    ratio = np.var(adjusted) / np.var(plain)
    print(f"\nCUPED rho=0.8: variance ratio {ratio:.3f} (theory {1 - rho**2:.2f})")
    assert ratio <= 0.5
    assert np.mean(adjusted) == pytest.approx(effect, abs=0.005)
    assert covered / EXPERIMENTS == pytest.approx(0.95, abs=0.015)


def test_confidence_sequence_inverts_the_mixture_likelihood_ratio() -> None:
    from stats.sequential import confidence_sequence_half_width

    for variance, tau2, alpha in [(0.01, 0.04, 0.05), (2.0, 0.1, 0.01), (1e-6, 1e-4, 0.2)]:
        half = confidence_sequence_half_width(variance, tau2, alpha)
        # At the boundary the always-valid p-value of theta - theta0 is exactly alpha.
        assert msprt_p_value(half, variance, tau2) == pytest.approx(alpha, rel=1e-9)
        ratio = np.sqrt(variance / (variance + tau2)) * np.exp(
            half**2 * tau2 / (2 * variance * (variance + tau2))
        )
        assert 1 / ratio == pytest.approx(alpha, rel=1e-9)


def test_confidence_sequence_covers_at_every_look() -> None:
    from stats.sequential import confidence_sequence_half_width

    rng = np.random.default_rng(27)
    looks, per_look, effect = 20, 200, 0.3
    n, sum_c, ss_c = _cumulative_looks(rng, looks, per_look, 10.0, 5.0)
    _, sum_t, ss_t = _cumulative_looks(rng, looks, per_look, 10.0 + effect, 5.0)
    mean_c, mean_t = sum_c / n, sum_t / n
    var_c = (ss_c - sum_c**2 / n) / (n - 1)
    var_t = (ss_t - sum_t**2 / n) / (n - 1)
    v = (var_c + var_t) / n
    tau2 = np.vectorize(mixing_variance)(mean_c, np.maximum(var_c, var_t), 0.03)
    half = np.vectorize(confidence_sequence_half_width)(v, tau2, 0.05)
    inside = np.abs(mean_t - mean_c - effect) <= half
    always = np.mean(inside.all(axis=1))
    print(f"\nconfidence sequence, 20 looks: covered at every look {always:.3f}")
    assert always >= 0.95
