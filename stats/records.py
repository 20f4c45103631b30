"""Sufficient-statistics records: what the database aggregates, checked on construction."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

Kind = Literal[
    "conversion", "mean", "count", "ratio", "nps", "friction", "time_to_convert", "quantile"
]
Method = Literal["frequentist", "bayesian", "sequential"]
Correction = Literal["holm", "bh", "none"]
Direction = Literal["increase", "decrease"]
Verdict = Literal["better", "worse", "flat", "inconclusive"]

KINDS: tuple[Kind, ...] = (
    "conversion",
    "mean",
    "count",
    "ratio",
    "nps",
    "friction",
    "time_to_convert",
)
METHODS: tuple[Method, ...] = ("frequentist", "bayesian", "sequential")
CORRECTIONS: tuple[Correction, ...] = ("holm", "bh", "none")
DIRECTIONS: tuple[Direction, ...] = ("increase", "decrease")

# Relative slack for "sum of squares >= sum^2 / n" checks: aggregates come from SQL floats.
_TOLERANCE = 1e-9


class StatsInputError(ValueError):
    """Invalid input whose `field` the API turns into a 422 detail path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def within(self, prefix: str) -> StatsInputError:
        """Return the same error located under `prefix` (e.g. "variants[1]")."""
        return StatsInputError(f"{prefix}.{self.field}", self.message)


def check_count(field: str, value: object) -> None:
    """Reject counts that are not non-negative integers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise StatsInputError(field, "must be an integer")
    if value < 0:
        raise StatsInputError(field, "must be >= 0")


def check_real(field: str, value: object) -> None:
    """Reject sums that are not finite real numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise StatsInputError(field, "must be a finite number")


def check_square_sum(field: str, n: int, total: float, square_sum: float) -> None:
    """Reject a sum of squares smaller than Cauchy-Schwarz allows (n * sum_squares >= sum^2)."""
    lhs, rhs = n * square_sum, total * total
    if lhs < rhs - _TOLERANCE * max(abs(lhs), rhs, 1.0):
        raise StatsInputError(field, "inconsistent with sum and n (n * sum_squares < sum^2)")


def check_cross_sum(field: str, n: int, sums: tuple[float, float, float, float, float]) -> None:
    """Reject a cross-product sum implying a correlation outside [-1, 1]."""
    x, xx, y, yy, xy = sums
    cov, var_x, var_y = n * xy - x * y, n * xx - x * x, n * yy - y * y
    bound = max(var_x, 0.0) * max(var_y, 0.0)
    scale = n * abs(xy) + abs(x * y)
    if cov * cov > bound + _TOLERANCE * max(scale * scale, 1.0):
        raise StatsInputError(field, "inconsistent with the sums (correlation outside [-1, 1])")


@dataclass(frozen=True)
class ProportionStats:
    """Units and converted units, for conversion and friction rates."""

    n: int
    successes: int

    def __post_init__(self) -> None:
        check_count("n", self.n)
        check_count("successes", self.successes)
        if self.successes > self.n:
            raise StatsInputError("successes", "must be <= n")

    @property
    def sum(self) -> float:
        """Sum of the 0/1 outcomes, so proportions read like means."""
        return float(self.successes)

    @property
    def sum_squares(self) -> float:
        """Sum of squared 0/1 outcomes, equal to the successes."""
        return float(self.successes)


@dataclass(frozen=True)
class MeanStats:
    """Units, sum and sum of squares, for means, counts and times to convert."""

    n: int
    sum: float
    sum_squares: float

    def __post_init__(self) -> None:
        check_count("n", self.n)
        check_real("sum", self.sum)
        check_real("sum_squares", self.sum_squares)
        check_square_sum("sum_squares", self.n, self.sum, self.sum_squares)


@dataclass(frozen=True)
class RatioStats:
    """Per-unit numerator and denominator moments, for ratio metrics (delta method)."""

    n: int
    num_sum: float
    num_sum_squares: float
    den_sum: float
    den_sum_squares: float
    num_den_sum: float

    def __post_init__(self) -> None:
        check_count("n", self.n)
        for name in (
            "num_sum",
            "num_sum_squares",
            "den_sum",
            "den_sum_squares",
            "num_den_sum",
        ):
            check_real(name, getattr(self, name))
        check_square_sum("num_sum_squares", self.n, self.num_sum, self.num_sum_squares)
        check_square_sum("den_sum_squares", self.n, self.den_sum, self.den_sum_squares)
        sums = (
            self.num_sum,
            self.num_sum_squares,
            self.den_sum,
            self.den_sum_squares,
            self.num_den_sum,
        )
        check_cross_sum("num_den_sum", self.n, sums)


@dataclass(frozen=True)
class NpsStats:
    """Respondents, promoters (9-10) and detractors (0-6), for net promoter score."""

    n: int
    promoters: int
    detractors: int

    def __post_init__(self) -> None:
        check_count("n", self.n)
        check_count("promoters", self.promoters)
        check_count("detractors", self.detractors)
        if self.promoters > self.n:
            raise StatsInputError("promoters", "must be <= n")
        if self.promoters + self.detractors > self.n:
            raise StatsInputError("detractors", "promoters + detractors must be <= n")


@dataclass(frozen=True)
class CupedStats:
    """Pre-exposure covariate moments of the same units, for CUPED variance reduction."""

    pre_sum: float
    pre_sum_squares: float
    cross_sum: float

    def __post_init__(self) -> None:
        for name in ("pre_sum", "pre_sum_squares", "cross_sum"):
            check_real(name, getattr(self, name))

    def check_against(self, post: ProportionStats | MeanStats) -> None:
        """Check the covariate moments are consistent with the post-period record."""
        check_square_sum("pre_sum_squares", post.n, self.pre_sum, self.pre_sum_squares)
        sums = (
            self.pre_sum,
            self.pre_sum_squares,
            post.sum,
            post.sum_squares,
            self.cross_sum,
        )
        check_cross_sum("cross_sum", post.n, sums)


Stats = ProportionStats | MeanStats | RatioStats | NpsStats

STATS_FOR_KIND: dict[str, type] = {
    "conversion": ProportionStats,
    "friction": ProportionStats,
    "mean": MeanStats,
    "count": MeanStats,
    "time_to_convert": MeanStats,
    "ratio": RatioStats,
    "nps": NpsStats,
}


@dataclass(frozen=True)
class VariantInput:
    """One variant's sufficient statistics, as handed to `analyze_variants`."""

    key: str
    is_control: bool
    stats: Stats
    cuped: CupedStats | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise StatsInputError("key", "must be a non-empty string")
        if self.cuped is not None:
            if not isinstance(self.stats, (ProportionStats, MeanStats)):
                raise StatsInputError(
                    "cuped",
                    "only conversion, friction and mean-like metrics support CUPED",
                )
            self.cuped.check_against(self.stats)
