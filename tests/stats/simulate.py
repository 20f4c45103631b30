"""Factories for sufficient statistics: random inputs and vectorised simulated experiments."""

from __future__ import annotations

import numpy as np

from stats import MeanStats, ProportionStats, RatioStats, VariantInput


def mean_stats(values: np.ndarray) -> MeanStats:
    """Sufficient statistics of raw values."""
    return MeanStats(len(values), float(values.sum()), float((values**2).sum()))


def ratio_stats(num: np.ndarray, den: np.ndarray) -> RatioStats:
    """Sufficient statistics of raw numerator/denominator pairs."""
    return RatioStats(
        len(num),
        float(num.sum()),
        float((num**2).sum()),
        float(den.sum()),
        float((den**2).sum()),
        float((num * den).sum()),
    )


def two_arms(control: object, treatment: object) -> list[VariantInput]:
    """A control and one treatment."""
    return [
        VariantInput("control", True, control),  # type: ignore[arg-type]
        VariantInput("treatment", False, treatment),  # type: ignore[arg-type]
    ]


def random_proportions(seed: int, count: int) -> list[tuple[int, int, int, int]]:
    """Varied (control n, successes, treatment n, successes) tuples."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        n_c, n_t = rng.integers(30, 200_000, size=2)
        base = rng.uniform(0.005, 0.95)
        lift = rng.uniform(0.7, 1.3)
        p_t = min(base * lift, 0.99)
        cases.append(
            (int(n_c), int(rng.binomial(n_c, base)), int(n_t), int(rng.binomial(n_t, p_t)))
        )
    return cases


def simulate_normal_stats(
    rng: np.random.Generator, n: int, mean: float, sd: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sums and sums of squares of `size` samples of n normal values, without drawing rows."""
    sums = rng.normal(n * mean, sd * np.sqrt(n), size)
    scatter = sd**2 * rng.chisquare(n - 1, size)
    return sums, scatter + sums**2 / n


def simulate_bivariate(
    rng: np.random.Generator, n: int, means: tuple[float, float], cov: np.ndarray, size: int
) -> dict[str, np.ndarray]:
    """Pre (x) and post (y) sufficient statistics of n bivariate normal units, `size` times."""
    from scipy import stats as sps

    sums = rng.multivariate_normal(np.asarray(means) * n, cov * n, size)
    scatter = sps.wishart(df=n - 1, scale=cov).rvs(size=size, random_state=rng)
    x, y = sums[:, 0], sums[:, 1]
    return {
        "pre_sum": x,
        "pre_sum_squares": scatter[:, 0, 0] + x**2 / n,
        "sum": y,
        "sum_squares": scatter[:, 1, 1] + y**2 / n,
        "cross_sum": scatter[:, 0, 1] + x * y / n,
    }


def proportion(n: int, successes: int) -> ProportionStats:
    """Shorthand for tests."""
    return ProportionStats(n, successes)
