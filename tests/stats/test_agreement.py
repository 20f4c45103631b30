"""Agreement with statsmodels/scipy and with direct computations on raw arrays."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats import proportion as sm_proportion

from stats import (
    MeanStats,
    NpsStats,
    ProportionStats,
    analyze_variants,
    compare,
    summarize,
)
from tests.stats.simulate import mean_stats, random_proportions, ratio_stats, two_arms

TOL = 1e-6
ALPHAS = (0.05, 0.01, 0.1, 0.2)


def only(result):  # type: ignore[no-untyped-def]
    """The single comparison of a two-arm analysis."""
    (comparison,) = result.comparisons
    return comparison


@pytest.mark.parametrize("kind", ["conversion", "friction"])
@pytest.mark.parametrize("case", random_proportions(seed=11, count=24))
def test_proportions_match_statsmodels_wald(kind: str, case: tuple[int, int, int, int]) -> None:
    n_c, c_c, n_t, c_t = case
    alpha = ALPHAS[(n_c + n_t) % len(ALPHAS)]
    result = analyze_variants(
        kind,  # type: ignore[arg-type]
        two_arms(ProportionStats(n_c, c_c), ProportionStats(n_t, c_t)),
        alpha=alpha,
        correction="none",
    )
    comparison = only(result)
    reference = sm_proportion.test_proportions_2indep(
        c_t, n_t, c_c, n_c, method="wald", compare="diff"
    )
    low, high = sm_proportion.confint_proportions_2indep(
        c_t, n_t, c_c, n_c, method="wald", compare="diff", alpha=alpha
    )
    assert comparison.statistic == pytest.approx(reference.statistic, abs=TOL)
    assert comparison.p_value == pytest.approx(reference.pvalue, abs=TOL)
    assert comparison.absolute_effect == pytest.approx(c_t / n_t - c_c / n_c, abs=1e-12)
    assert comparison.absolute_ci == pytest.approx((low, high), abs=TOL)
    assert result.variants[0].estimate == pytest.approx(c_c / n_c)


def _mean_cases(seed: int, count: int) -> list[tuple[str, int]]:
    """(distribution, seed) pairs covering normal, skewed and count data."""
    kinds = ("normal", "lognormal", "poisson", "exponential")
    return [(kinds[i % len(kinds)], seed + i) for i in range(count)]


def _draw(distribution: str, rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    """Raw values for one arm."""
    if distribution == "normal":
        return rng.normal(10 + shift, rng.uniform(0.5, 5), n)
    if distribution == "lognormal":
        return rng.lognormal(1 + shift / 10, rng.uniform(0.3, 1.5), n)
    if distribution == "poisson":
        return rng.poisson(3 + shift, n).astype(float)
    return rng.exponential(5 + shift, n)


@pytest.mark.parametrize("kind", ["mean", "count", "time_to_convert"])
@pytest.mark.parametrize("distribution,seed", _mean_cases(100, 24))
def test_means_match_scipy_welch(kind: str, distribution: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    alpha = ALPHAS[seed % len(ALPHAS)]
    control = _draw(distribution, rng, int(rng.integers(5, 3000)), 0.0)
    treatment = _draw(distribution, rng, int(rng.integers(5, 3000)), rng.uniform(-0.5, 0.5))
    result = analyze_variants(
        kind,  # type: ignore[arg-type]
        two_arms(mean_stats(control), mean_stats(treatment)),
        alpha=alpha,
        correction="none",
    )
    comparison = only(result)
    reference = sps.ttest_ind_from_stats(
        treatment.mean(),
        treatment.std(ddof=1),
        len(treatment),
        control.mean(),
        control.std(ddof=1),
        len(control),
        equal_var=False,
    )
    raw = sps.ttest_ind(treatment, control, equal_var=False)
    ci = raw.confidence_interval(confidence_level=1 - alpha)
    assert comparison.statistic == pytest.approx(reference.statistic, abs=TOL)
    assert comparison.p_value == pytest.approx(reference.pvalue, abs=TOL)
    assert comparison.absolute_ci == pytest.approx((ci.low, ci.high), abs=TOL)


def _delta_ratio_reference(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """Ratio of means and its delta-method variance, straight from raw arrays."""
    cov = np.cov(np.vstack([num, den]), ddof=1)
    mx, my = num.mean(), den.mean()
    gradient = np.array([1 / my, -mx / my**2])
    return mx / my, float(gradient @ cov @ gradient) / len(num)


@pytest.mark.parametrize("seed", range(24))
def test_ratio_matches_delta_method_on_raw_arrays(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    arms = []
    for shift in (0.0, rng.uniform(-0.3, 0.3)):
        n = int(rng.integers(20, 5000))
        den = rng.poisson(rng.uniform(1, 8), n).astype(float) + 1
        num = rng.gamma(2.0, 10 * (1 + shift), n) * den / 3
        arms.append((num, den))
    alpha = ALPHAS[seed % len(ALPHAS)]
    result = analyze_variants(
        "ratio", two_arms(*(ratio_stats(*arm) for arm in arms)), alpha=alpha, correction="none"
    )
    comparison = only(result)
    (r_c, v_c), (r_t, v_t) = (_delta_ratio_reference(*arm) for arm in arms)
    z = (r_t - r_c) / np.sqrt(v_c + v_t)
    half = sps.norm.isf(alpha / 2) * np.sqrt(v_c + v_t)
    assert result.variants[0].estimate == pytest.approx(r_c, rel=1e-12)
    assert comparison.statistic == pytest.approx(z, abs=TOL)
    assert comparison.p_value == pytest.approx(2 * sps.norm.sf(abs(z)), abs=TOL)
    assert comparison.absolute_ci == pytest.approx((r_t - r_c - half, r_t - r_c + half), abs=TOL)


def test_ratio_delta_variance_matches_simulated_spread() -> None:
    rng = np.random.default_rng(7)
    n, experiments = 400, 3000
    den = rng.poisson(3.0, (experiments, n)).astype(float) + 1
    num = rng.gamma(2.0, 5.0, (experiments, n)) * den
    ratios = num.sum(axis=1) / den.sum(axis=1)
    predicted = [summarize(ratio_stats(num[i], den[i])).se2 for i in range(0, experiments, 100)]
    assert np.sqrt(np.mean(predicted)) == pytest.approx(ratios.std(ddof=1), rel=0.05)


@pytest.mark.parametrize("seed", range(24))
def test_nps_matches_raw_scores(seed: int) -> None:
    rng = np.random.default_rng(2000 + seed)
    arms = []
    for _ in range(2):
        n = int(rng.integers(10, 4000))
        probabilities = rng.dirichlet([2, 1, 2])
        arms.append(rng.choice([100.0, 0.0, -100.0], size=n, p=probabilities))
    records = [NpsStats(len(s), int((s == 100).sum()), int((s == -100).sum())) for s in arms]
    alpha = ALPHAS[seed % len(ALPHAS)]
    comparison = only(analyze_variants("nps", two_arms(*records), alpha=alpha, correction="none"))
    control, treatment = arms
    se = np.sqrt(control.var() / len(control) + treatment.var() / len(treatment))
    diff = treatment.mean() - control.mean()
    assert summarize(records[0]).mean == pytest.approx(control.mean(), abs=1e-9)
    assert summarize(records[0]).variance == pytest.approx(control.var(), rel=1e-9)
    assert comparison.statistic == pytest.approx(diff / se, abs=TOL)
    half = sps.norm.isf(alpha / 2) * se
    assert comparison.absolute_ci == pytest.approx((diff - half, diff + half), abs=TOL)


@pytest.mark.parametrize("seed", range(20))
def test_relative_ci_solves_fiellers_equation(seed: int) -> None:
    rng = np.random.default_rng(3000 + seed)
    control = summarize(MeanStats(*_moments(rng)))
    treatment = summarize(MeanStats(*_moments(rng)))
    comparison = compare("ratio", control, treatment, alpha=0.05)
    # Each end rho - 1 solves (mt - rho mc)^2 = z^2 (vt + rho^2 vc), the test of mt = rho mc.
    mc, mt, z = control.mean, treatment.mean, sps.norm.isf(0.025)
    assert comparison.relative_effect == pytest.approx(mt / mc - 1, abs=1e-12)
    for end in comparison.relative_ci:
        rho = end + 1
        lhs = (mt - rho * mc) ** 2
        rhs = z**2 * (treatment.se2 + rho**2 * control.se2)
        assert lhs == pytest.approx(rhs, rel=1e-9)
    assert comparison.relative_ci[0] < comparison.relative_effect < comparison.relative_ci[1]


def _moments(rng: np.random.Generator) -> tuple[int, float, float]:
    """Random consistent (n, sum, sum_squares) with a positive mean."""
    values = rng.gamma(rng.uniform(1, 5), rng.uniform(1, 20), int(rng.integers(50, 3000)))
    return len(values), float(values.sum()), float((values**2).sum())


def test_relative_ci_covers_the_true_lift() -> None:
    rng = np.random.default_rng(5)
    n, experiments, p_c, p_t = 3000, 4000, 0.10, 0.12
    c = rng.binomial(n, p_c, experiments)
    t = rng.binomial(n, p_t, experiments)
    covered = 0
    for successes_c, successes_t in zip(c, t, strict=True):
        ci = compare(
            "conversion",
            summarize(ProportionStats(n, int(successes_c))),
            summarize(ProportionStats(n, int(successes_t))),
        ).relative_ci
        assert ci is not None
        covered += ci[0] <= p_t / p_c - 1 <= ci[1]
    assert covered / experiments == pytest.approx(0.95, abs=0.015)
