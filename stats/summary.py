"""Per-variant estimate and per-unit variance: the one shape every test consumes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from stats._numeric import finite
from stats.records import (
    CupedStats,
    MeanStats,
    NpsStats,
    ProportionStats,
    RatioStats,
    Stats,
)

# NPS is reported in points (-100..100), so the per-unit scores are -100, 0 and 100.
NPS_SCALE = 100.0


@dataclass(frozen=True)
class ArmSummary:
    """Estimate and per-unit variance of one variant (standard error = sqrt(variance / n)).

    `successes` is kept for unadjusted proportions so the Beta posterior can be used.
    """

    n: int
    mean: float | None
    variance: float | None
    successes: int | None = None

    @property
    def se2(self) -> float | None:
        """Squared standard error of the estimate."""
        if self.variance is None or self.n == 0:
            return None
        return self.variance / self.n


def _sample_variance(n: int, total: float, square_sum: float) -> float | None:
    """Unbiased variance from sums; None below two units."""
    if n < 2:
        return None
    variance = (square_sum - total * total / n) / (n - 1)
    return max(variance, 0.0) if math.isfinite(variance) else math.nan


def _sample_covariance(n: int, x: float, y: float, xy: float) -> float | None:
    """Unbiased covariance from sums; None below two units."""
    if n < 2:
        return None
    return (xy - x * y / n) / (n - 1)


def summarize_proportion(stats: ProportionStats) -> ArmSummary:
    """Rate and Bernoulli variance p(1-p), as the unpooled Wald test uses."""
    if stats.n == 0:
        return ArmSummary(0, None, None, 0)
    p = stats.successes / stats.n
    return ArmSummary(stats.n, p, p * (1.0 - p), stats.successes)


def summarize_mean(stats: MeanStats) -> ArmSummary:
    """Sample mean and unbiased variance, as Welch's test uses."""
    if stats.n == 0:
        return ArmSummary(0, None, None)
    return ArmSummary(
        stats.n,
        stats.sum / stats.n,
        _sample_variance(stats.n, stats.sum, stats.sum_squares),
    )


def summarize_ratio(stats: RatioStats) -> ArmSummary:
    """Ratio of sums with its delta-method per-unit variance."""
    n = stats.n
    mx, my = (stats.num_sum / n, stats.den_sum / n) if n else (0.0, 0.0)
    if my == 0:
        return ArmSummary(n, None, None)
    ratio = mx / my
    var_x = _sample_variance(n, stats.num_sum, stats.num_sum_squares)
    var_y = _sample_variance(n, stats.den_sum, stats.den_sum_squares)
    cov = _sample_covariance(n, stats.num_sum, stats.den_sum, stats.num_den_sum)
    if var_x is None or var_y is None or cov is None:
        return ArmSummary(n, ratio, None)
    variance = (var_x - 2.0 * ratio * cov + ratio * ratio * var_y) / my / my
    return ArmSummary(n, ratio, max(variance, 0.0))


def summarize_nps(stats: NpsStats) -> ArmSummary:
    """NPS in points with the multinomial variance (p + d - (p - d)^2) per respondent."""
    if stats.n == 0:
        return ArmSummary(0, None, None)
    p, d = stats.promoters / stats.n, stats.detractors / stats.n
    variance = max(p + d - (p - d) * (p - d), 0.0) * NPS_SCALE * NPS_SCALE
    return ArmSummary(stats.n, (p - d) * NPS_SCALE, variance)


def per_unit_sd(stats: Stats) -> float | None:
    """Observed standard deviation of the per-unit values (ddof=1), for planning power.

    Reports carry it so a power calculation can use the metric's real spread: the sample
    SD for means, counts and times to convert; the delta-method SD of the ratio for ratios;
    the SD of the +100 / 0 / -100 scores, in points, for NPS. None for proportions (their
    SD follows from the rate) and below two units.
    """
    if isinstance(stats, MeanStats):
        variance = _sample_variance(stats.n, stats.sum, stats.sum_squares)
    elif isinstance(stats, RatioStats):
        variance = summarize_ratio(stats).variance
    elif isinstance(stats, NpsStats):
        score_sum = (stats.promoters - stats.detractors) * NPS_SCALE
        square_sum = (stats.promoters + stats.detractors) * NPS_SCALE * NPS_SCALE
        variance = _sample_variance(stats.n, score_sum, square_sum)
    else:
        return None
    variance = finite(variance)
    return None if variance is None else math.sqrt(variance)


def _clean(summary: ArmSummary) -> ArmSummary:
    """Drop an estimate or variance that overflowed, so tests report it instead of NaN."""
    return replace(summary, mean=finite(summary.mean), variance=finite(summary.variance))


def summarize(stats: Stats) -> ArmSummary:
    """Dispatch a record to its estimate and variance."""
    if isinstance(stats, ProportionStats):
        return summarize_proportion(stats)
    if isinstance(stats, MeanStats):
        return _clean(summarize_mean(stats))
    if isinstance(stats, RatioStats):
        return _clean(summarize_ratio(stats))
    return summarize_nps(stats)


@dataclass(frozen=True)
class CupedFit:
    """CUPED slope and the grand covariate mean the variants are centred on."""

    theta: float
    pre_mean: float


def cuped_fit(
    arms: Sequence[tuple[ProportionStats | MeanStats, CupedStats]],
) -> CupedFit | None:
    """Pooled within-variant slope cov(Y, X) / var(X); None when X has no variance."""
    cross = var = 0.0
    total_n, total_x = 0, 0.0
    for post, pre in arms:
        total_n += post.n
        total_x += pre.pre_sum
        if post.n > 0:
            cross += pre.cross_sum - pre.pre_sum * post.sum / post.n
            var += pre.pre_sum_squares - pre.pre_sum * pre.pre_sum / post.n
    if total_n == 0 or var <= 0.0:
        return None
    return CupedFit(cross / var, total_x / total_n)


def cuped_adjust(post: ProportionStats | MeanStats, pre: CupedStats, fit: CupedFit) -> ArmSummary:
    """Mean of Y - theta (X - grand mean X) and its per-unit variance."""
    n = post.n
    if n == 0:
        return ArmSummary(0, None, None)
    mean = post.sum / n - fit.theta * (pre.pre_sum / n - fit.pre_mean)
    var_y = _sample_variance(n, post.sum, post.sum_squares)
    var_x = _sample_variance(n, pre.pre_sum, pre.pre_sum_squares)
    cov = _sample_covariance(n, pre.pre_sum, post.sum, pre.cross_sum)
    if var_y is None or var_x is None or cov is None:
        return ArmSummary(n, mean, None)
    variance = var_y - 2.0 * fit.theta * cov + fit.theta * fit.theta * var_x
    return _clean(ArmSummary(n, mean, max(variance, 0.0)))
