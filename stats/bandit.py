"""Bandit allocation (SPEC §13): period-weighted estimates, chance of being best, new weights.

Under adaptive allocation an arm's units are not a random sample of the traffic over
time: an arm that got most traffic late is measured mostly on late traffic. Pooling all
its units (the naive mean) mixes periods in different proportions per arm (Simpson's
paradox). Here each period's arm mean is weighted by the period's share of *all* units,
wₚ = Nₚ/N, the same for every arm, so every arm is estimated on the same traffic mix:

    m = Σₚ wₚ·ȳₚ        V = Σₚ wₚ²·s²ₚ/nₚ   (s² the sample variance, ddof = 1)

Inside one period the allocation was fixed, so ȳₚ is unbiased and m is too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stats._numeric import finite
from stats.records import DIRECTIONS, Direction, MeanStats, StatsInputError
from stats.srm import SrmResult, srm_test

DRAWS = 10_000


@dataclass(frozen=True)
class Period:
    """One allocation period: the weights new units got and each arm's sufficient sums."""

    weights: Mapping[str, float]
    arms: Mapping[str, MeanStats]

    def __post_init__(self) -> None:
        if set(self.weights) != set(self.arms):
            raise StatsInputError("weights", "must name exactly the period's variants")
        for key, weight in self.weights.items():
            if (isinstance(weight, bool) or not isinstance(weight, (int, float))
                    or not math.isfinite(weight) or weight < 0):
                raise StatsInputError(f"weights.{key}", "must be a finite number >= 0")

    @property
    def units(self) -> int:
        """Nₚ: every unit first exposed in this period, all arms together."""
        return sum(arm.n for arm in self.arms.values())


@dataclass(frozen=True)
class ArmEstimate:
    """An arm's period-weighted mean and the variance of that mean (not per unit)."""

    n: int
    mean: float | None
    variance: float | None


@dataclass(frozen=True)
class BanditResult:
    """Everything a reallocation or a bandit report needs, JSON-safe."""

    estimates: dict[str, ArmEstimate]
    p_best: dict[str, float] | None
    weights: dict[str, float] | None
    expected_units: dict[str, float]
    srm: SrmResult
    seed: int
    warnings: tuple[str, ...] = ()


def _arms(periods: Sequence[Period]) -> list[str]:
    """Every arm named in any period, in first-seen order."""
    return list(dict.fromkeys(key for period in periods for key in period.arms))


def period_weighted(periods: Sequence[Period]) -> tuple[dict[str, ArmEstimate], list[str]]:
    """Per arm m = Σ wₚ·ȳₚ and V = Σ wₚ²·s²ₚ/nₚ with wₚ = Nₚ/N (plus warnings).

    An arm with no unit in some period is estimated over the periods where it has units,
    their weights renormalised (a warning says so); one unit in a period adds no variance.
    """
    total = sum(period.units for period in periods)
    warnings: list[str] = []
    estimates: dict[str, ArmEstimate] = {}
    for key in _arms(periods):
        n, shares, means, variances = 0, [], [], []
        for period in periods:
            arm = period.arms.get(key)
            if arm is None or arm.n == 0:
                if period.units:
                    warnings.append(f"{key}: no units in a period with traffic; "
                                    "estimated over the other periods")
                continue
            n += arm.n
            shares.append(period.units / total)
            means.append(arm.sum / arm.n)
            s2 = (arm.sum_squares - arm.sum * arm.sum / arm.n) / (arm.n - 1) if arm.n > 1 else 0.0
            variances.append(max(s2, 0.0) / arm.n)
        if n == 0:
            estimates[key] = ArmEstimate(0, None, None)
            continue
        w = np.asarray(shares) / sum(shares)
        estimates[key] = ArmEstimate(n, finite(float(w @ np.asarray(means))),
                                     finite(float((w * w) @ np.asarray(variances))))
    return estimates, list(dict.fromkeys(warnings))


def probability_best(estimates: Mapping[str, ArmEstimate], *, seed: int,
                     direction: Direction = "increase", draws: int = DRAWS
                     ) -> dict[str, float] | None:
    """Share of ``draws`` joint N(mᵥ, Vᵥ) draws in which each arm is best (None if any arm
    has no estimate). The same seed gives exactly the same shares (numpy ``Generator``)."""
    if direction not in DIRECTIONS:
        raise StatsInputError("direction", f"must be one of {', '.join(DIRECTIONS)}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise StatsInputError("draws", "must be a positive integer")
    keys = list(estimates)
    if not keys or any(estimates[k].mean is None or estimates[k].variance is None for k in keys):
        return None
    means = np.array([estimates[k].mean for k in keys], dtype=float)
    sds = np.sqrt(np.array([estimates[k].variance for k in keys], dtype=float))
    sample = np.random.default_rng(seed).standard_normal((draws, len(keys))) * sds + means
    best = sample.argmax(axis=1) if direction == "increase" else sample.argmin(axis=1)
    counts = np.bincount(best, minlength=len(keys))
    return {key: float(count) / draws for key, count in zip(keys, counts, strict=True)}


def floored_weights(p_best: Mapping[str, float], *, min_weight: float) -> dict[str, float]:
    """pᵥ = f + (1 − K·f)·p_bestᵥ: every arm keeps at least f; uniform when K·f ≥ 1."""
    if isinstance(min_weight, bool) or not isinstance(min_weight, (int, float)) \
            or not math.isfinite(min_weight) or not 0 <= min_weight <= 1:
        raise StatsInputError("min_weight", "must be a number between 0 and 1")
    k = len(p_best)
    if k == 0:
        return {}
    if k * min_weight >= 1:
        return {key: 1.0 / k for key in p_best}
    return {key: min_weight + (1.0 - k * min_weight) * p for key, p in p_best.items()}


def expected_units(periods: Sequence[Period]) -> dict[str, float]:
    """Σₚ Nₚ·wₚ,ᵥ: the units each arm should have got under the weights of each period."""
    expected = dict.fromkeys(_arms(periods), 0.0)
    for period in periods:
        total_weight = sum(period.weights.values())
        if total_weight <= 0:
            continue
        for key, weight in period.weights.items():
            expected[key] += period.units * weight / total_weight
    return expected


def bandit_srm(periods: Sequence[Period]) -> tuple[SrmResult, dict[str, float]]:
    """Chi-square of each arm's units against the counts the period weights predict."""
    expected = expected_units(periods)
    observed = [sum(p.arms[k].n for p in periods if k in p.arms) for k in expected]
    if sum(expected.values()) <= 0:
        return SrmResult(None, False), expected
    return srm_test(observed, list(expected.values())), expected


def analyze_bandit(periods: Sequence[Period], *, min_weight: float, seed: int,
                   direction: Direction = "increase", draws: int = DRAWS) -> BanditResult:
    """Period-weighted estimates, p_best, the next period's weights and the SRM check."""
    if not periods:
        raise StatsInputError("periods", "must list at least one period")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise StatsInputError("seed", "must be an integer >= 0")
    estimates, warnings = period_weighted(periods)
    p_best = probability_best(estimates, seed=seed, direction=direction, draws=draws)
    if p_best is None:
        warnings.append("an arm has no units: no p_best and no new weights")
    weights = None if p_best is None else floored_weights(p_best, min_weight=min_weight)
    srm, expected = bandit_srm(periods)
    return BanditResult(estimates, p_best, weights, expected, srm, seed, tuple(warnings))
