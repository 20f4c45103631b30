"""Quantile metrics from a few order statistics (Deng, Knoblich & Yu 2018 outer interval).

The database sorts each variant's values and returns only the order statistics of the
ranks `needed_ranks` names (point, lower, upper) — never every value. Event-level
quantiles also pass the per-unit sums of (Sᵢ, Nᵢ) as a `RatioStats` (Sᵢ = the unit's events
at or below the quantile, Nᵢ = its events) for the clustering correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stats import bayesian, frequentist
from stats._numeric import finite, finite_pair
from stats.analyze import AnalysisResult, VariantResult
from stats.compare import (
    Comparison,
    apply_correction,
    bayesian_significant,
    check_options,
    clipped,
    decide_verdict,
    point_effects,
)
from stats.records import (
    Correction,
    Direction,
    Method,
    RatioStats,
    StatsInputError,
    check_count,
    check_real,
)
from stats.srm import srm_test
from stats.summary import summarize_ratio

MIN_QUANTILE, MAX_QUANTILE = 0.01, 0.99
# Below this many values per variant the outer interval is too coarse: estimate only.
MIN_INFERENCE_N = 100
# n·ν is a float: 10,000 × 0.9 must give rank 9000, not 9001.
_RANK_SLACK = 1e-9


def check_quantile(quantile: float) -> None:
    """Reject a quantile level outside [0.01, 0.99]."""
    if (
        isinstance(quantile, bool)
        or not isinstance(quantile, (int, float))
        or not MIN_QUANTILE <= quantile <= MAX_QUANTILE
    ):
        raise StatsInputError("quantile", "must be between 0.01 and 0.99")


def _rank(n: int, level: float) -> int:
    """r(level) = ⌈n·level⌉ clamped to 1..n."""
    return min(max(math.ceil(n * level - _RANK_SLACK), 1), n)


@dataclass(frozen=True)
class QuantileRanks:
    """1-based ranks of the order statistics a variant's quantile needs."""

    point: int
    lower: int
    upper: int


def needed_ranks(n: int, *, quantile: float, alpha: float = 0.05) -> QuantileRanks | None:
    """Which ranks the database must return for n sorted values: r(ν), r(ν−h), r(ν+h)."""
    check_count("n", n)
    check_quantile(quantile)
    check_options(method="frequentist", alpha=alpha, direction="increase", mde=None)
    if n == 0:
        return None
    h = frequentist.critical_value(alpha) * math.sqrt(quantile * (1.0 - quantile) / n)
    return QuantileRanks(
        _rank(n, quantile), _rank(n, quantile - h), _rank(n, quantile + h)
    )


def outer_spread(*, quantile: float, alpha: float = 0.05) -> float:
    """z²·ν(1−ν): times n, the squared distance (n·h)² from the point rank n·ν to the outer
    interval's ranks n·(ν ± h) — what the database needs to keep only the rows near them."""
    check_quantile(quantile)
    check_options(method="frequentist", alpha=alpha, direction="increase", mde=None)
    return frequentist.critical_value(alpha) ** 2 * quantile * (1.0 - quantile)


@dataclass(frozen=True)
class QuantileStats:
    """What the database returns per variant: n and the order statistics at `needed_ranks`.

    `clusters` (event level only) holds per-unit sums with Sᵢ as numerator and Nᵢ as
    denominator: n = units, num_sum = ΣSᵢ, num_sum_squares = ΣSᵢ², den_sum = ΣNᵢ,
    den_sum_squares = ΣNᵢ², num_den_sum = ΣSᵢNᵢ.
    """

    n: int
    estimate: float | None
    lower: float | None
    upper: float | None
    clusters: RatioStats | None = None

    def __post_init__(self) -> None:
        check_count("n", self.n)
        for name in ("estimate", "lower", "upper"):
            value = getattr(self, name)
            if self.n > 0 and value is None:
                raise StatsInputError(name, "is required when n > 0")
            if value is not None:
                check_real(name, value)
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise StatsInputError("upper", "must be >= lower")
        if self.clusters is not None and not isinstance(self.clusters, RatioStats):
            raise StatsInputError("clusters", "must be a RatioStats of (Sᵢ, Nᵢ)")


def stats_from_sorted(
    values: Sequence[float] | np.ndarray,
    *,
    quantile: float,
    alpha: float = 0.05,
    clusters: RatioStats | None = None,
) -> QuantileStats:
    """The database's job done on a small sorted array (calculator, tests, reference)."""
    array = np.asarray(values, dtype=float)
    ranks = needed_ranks(len(array), quantile=quantile, alpha=alpha)
    if ranks is None:
        return QuantileStats(0, None, None, None, clusters)
    point, lower, upper = (float(array[r - 1]) for r in (ranks.point, ranks.lower, ranks.upper))
    return QuantileStats(len(array), point, lower, upper, clusters)


def clustering_factor(clusters: RatioStats, *, n: int, quantile: float) -> float | None:
    """σ²_cluster / (ν(1−ν)/n): the delta-method variance of ΣSᵢ/ΣNᵢ over the i.i.d. one."""
    variance = summarize_ratio(clusters).se2
    if variance is None or n == 0:
        return None
    return finite(variance / (quantile * (1.0 - quantile) / n))


@dataclass(frozen=True)
class QuantileEstimate:
    """One variant's quantile, its standard error and its outer confidence interval."""

    n: int
    estimate: float | None
    se: float | None
    ci: tuple[float, float] | None
    warnings: tuple[str, ...] = ()


def estimate_quantile(
    stats: QuantileStats, *, quantile: float, alpha: float = 0.05
) -> QuantileEstimate:
    """SE = (Y₍r(ν+h)₎ − Y₍r(ν−h)₎) / (2z), times √(clustering factor) at the event level."""
    check_quantile(quantile)
    if stats.n == 0:
        return QuantileEstimate(0, None, None, None, ("no values: no estimate",))
    if stats.n < MIN_INFERENCE_N:
        warning = f"fewer than {MIN_INFERENCE_N} values ({stats.n}): estimate only, no test"
        return QuantileEstimate(stats.n, stats.estimate, None, None, (warning,))
    assert stats.lower is not None and stats.upper is not None  # checked on construction
    z = frequentist.critical_value(alpha)
    ci = finite_pair(stats.lower, stats.upper)
    se = (stats.upper - stats.lower) / (2.0 * z)
    if stats.clusters is None:
        return QuantileEstimate(stats.n, stats.estimate, finite(se), ci)
    factor = clustering_factor(stats.clusters, n=stats.n, quantile=quantile)
    if factor is None:
        return QuantileEstimate(
            stats.n, stats.estimate, None, ci, ("clustering factor undefined: no test",)
        )
    return QuantileEstimate(stats.n, stats.estimate, finite(se * math.sqrt(factor)), ci)


def compare_quantiles(
    control: QuantileEstimate,
    treatment: QuantileEstimate,
    *,
    variant: str = "treatment",
    method: Method = "frequentist",
    alpha: float = 0.05,
    direction: Direction = "increase",
    mde: float | None = None,
    nonnegative: bool = False,
) -> Comparison:
    """Δ = q_T − q_C with a normal CI and p; relative effect Δ/q_C by the delta method.

    ``nonnegative``: the values are never negative (durations), so the treatment's quantile
    cannot fall by more than 100 % of the control's; the relative interval is cut there, as
    ``compare`` cuts a rate's (its coverage is unchanged and 0 stays inside)."""
    check_options(method=method, alpha=alpha, direction=direction, mde=mde)
    warnings: list[str] = []
    absolute: float | None = None
    relative: float | None = None
    if control.estimate is not None and treatment.estimate is not None:
        absolute, relative = point_effects(control.estimate, treatment.estimate, warnings)
    if method == "sequential":
        warnings.append("quantile metrics use a fixed-horizon test, not a sequential one")
    p = statistic = ctw = loss = None
    absolute_ci = relative_ci = None
    if control.se is None or treatment.se is None or absolute is None:
        warnings.append("no standard error in some variant: no test")
    elif control.se == 0 and treatment.se == 0:
        warnings.append("zero variance in both variants: no test")
    else:
        se = math.hypot(control.se, treatment.se)
        z = frequentist.critical_value(alpha)
        absolute_ci = finite_pair(absolute - z * se, absolute + z * se)
        if relative is not None:
            assert control.estimate is not None and treatment.estimate is not None
            c, t = abs(control.estimate), treatment.estimate
            rel_se = math.sqrt(treatment.se**2 / c**2 + t**2 * control.se**2 / c**4)
            relative_ci = finite_pair(relative - z * rel_se, relative + z * rel_se)
            if nonnegative:
                relative_ci = clipped(relative_ci, -1.0, math.inf)
        if method == "bayesian":
            ctw = finite(bayesian.normal_chance_to_win(absolute, se, direction))
            loss = finite(bayesian.normal_expected_loss(absolute, se, direction))
        else:
            raw_statistic, raw_p = frequentist.z_test(absolute, se)
            statistic, p = finite(raw_statistic), finite(raw_p)
    if method == "bayesian":
        significant = bayesian_significant(ctw, alpha)
    else:
        significant = p is not None and p < alpha
    verdict = decide_verdict(
        significant=significant,
        absolute_effect=absolute,
        relative_ci=relative_ci,
        direction=direction,
        mde=mde,
        chance_to_win=ctw,
    )
    return Comparison(
        variant=variant,
        absolute_effect=absolute,
        absolute_ci=absolute_ci,
        relative_effect=relative,
        relative_ci=relative_ci,
        p_value=p,
        adjusted_p_value=p,
        chance_to_win=ctw,
        expected_loss=loss,
        significant=significant,
        verdict=verdict,
        warnings=tuple(dict.fromkeys(warnings)),
        statistic=statistic,
        direction=direction,
        mde=mde,
        alpha=alpha,
        # The test is fixed-horizon whatever the report's method (SPEC §11).
        method="bayesian" if method == "bayesian" else "frequentist",
    )


@dataclass(frozen=True)
class QuantileVariantInput:
    """One variant's order statistics, as handed to `analyze_quantiles`."""

    key: str
    is_control: bool
    stats: QuantileStats


def analyze_quantiles(
    variants: Sequence[QuantileVariantInput],
    *,
    quantile: float,
    method: Method = "frequentist",
    alpha: float = 0.05,
    correction: Correction = "holm",
    direction: Direction = "increase",
    mde: float | None = None,
    weights: Sequence[float] | None = None,
    nonnegative: bool = False,
) -> AnalysisResult:
    """Every treatment's quantile against the control's, corrected across treatments
    (``nonnegative``: see :func:`compare_quantiles`)."""
    check_quantile(quantile)
    check_options(
        method=method, alpha=alpha, direction=direction, mde=mde, correction=correction
    )
    if not variants:
        raise StatsInputError("variants", "must be a non-empty list")
    controls = [v for v in variants if v.is_control]
    if len(controls) != 1:
        raise StatsInputError("variants", "exactly one variant must have is_control true")
    if len({v.key for v in variants}) != len(variants):
        raise StatsInputError("variants", "duplicate variant key")
    estimates = {
        v.key: estimate_quantile(v.stats, quantile=quantile, alpha=alpha) for v in variants
    }
    control = estimates[controls[0].key]
    comparisons = [
        compare_quantiles(
            control, estimates[v.key], variant=v.key, method=method, alpha=alpha,
            direction=direction, mde=mde, nonnegative=nonnegative,
        )
        for v in variants
        if not v.is_control
    ]
    notes = [
        f"{key}: {warning}" for key, estimate in estimates.items() for warning in estimate.warnings
    ]
    if method == "sequential":
        notes.append("quantile metrics use a fixed-horizon test, not a sequential one")
    srm = None
    if weights is not None:
        srm = srm_test([v.stats.n for v in variants], weights)
    return AnalysisResult(
        kind="quantile",
        method=method,
        variants=tuple(
            VariantResult(key, e.n, finite(e.estimate), e.ci) for key, e in estimates.items()
        ),
        comparisons=apply_correction(comparisons, correction),
        srm=srm,
        warnings=tuple(notes),
    )
