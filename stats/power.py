"""Sample size for a two-sided test, with statsmodels' power conventions.

A sequential experiment (mixture SPRT, :mod:`stats.sequential`) pays for being valid at
every look with wider intervals: at the fixed-horizon sample its test has far less than
the planned power (a 10 % conversion, +5 %: 34 % instead of 80 %, read once). ``design=
"sequential"`` gives the units at which that test, read once at the end, reaches the
power — a lower bound of its power when it is read every day, as GrowthBook plans it.

statsmodels is imported by the functions that use it, not with this module: it brings
pandas, ~70 MB of RSS and 0.2 s of import in every process that imports :mod:`stats` —
each web worker, every analysis job — where only the sample-size calculator needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from scipy.stats import norm

from stats.records import KINDS, Kind, StatsInputError
from stats.sequential import confidence_sequence_multiplier, mixing_variance

Design = Literal["fixed_horizon", "sequential"]
DESIGNS: tuple[Design, ...] = get_args(Design)

PROPORTION_KINDS = frozenset({"conversion", "friction"})
# Beyond these the answer is not a plan but a sign of a typo (mde 1e-9, power 0.9999999999):
# a 422 naming the field says so, where the solver would fail or return nonsense.
MAX_UNITS_PER_VARIANT = 10**10
MAX_DAYS = 100 * 365
MIN_ALPHA, MAX_POWER = 1e-9, 1.0 - 1e-9
MAX_EFFECT_SIZE = 100.0
MAX_VARIANTS = 10


@dataclass(frozen=True)
class PowerResult:
    """Units each variant needs, in total, and days at the expected traffic."""

    units_per_variant: int
    total_units: int
    days: int | None


def _check_fraction(field: str, value: object) -> float:
    """Accept only numbers strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise StatsInputError(field, "must be between 0 and 1")
    return float(value)


def _check_positive(field: str, value: object) -> float:
    """Accept only finite numbers above 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < math.inf:
        raise StatsInputError(field, "must be a positive number")
    return float(value)


def _effect_size(kind: Kind, baseline: float, mde: float, baseline_sd: float | None) -> float:
    """Cohen's h for proportions, Cohen's d (baseline * mde / sd) otherwise."""
    if kind in PROPORTION_KINDS:
        from statsmodels.stats.proportion import proportion_effectsize

        _check_fraction("baseline", baseline)
        target = baseline * (1.0 + mde)
        if not 0.0 < target < 1.0:
            raise StatsInputError("mde", "baseline * (1 + mde) must stay between 0 and 1")
        return abs(float(proportion_effectsize(target, baseline)))
    if (
        not isinstance(baseline, (int, float))
        or isinstance(baseline, bool)
        or not math.isfinite(baseline)
    ):
        raise StatsInputError("baseline", "must be a finite number")
    if baseline == 0:
        raise StatsInputError("baseline", "must not be 0 for a relative mde")
    if baseline_sd is None and kind == "count":
        baseline_sd = math.sqrt(abs(baseline))  # Poisson counts: sd = sqrt(mean)
    if baseline_sd is None:
        raise StatsInputError("baseline_sd", f"is required for kind {kind}")
    sd = _check_positive("baseline_sd", baseline_sd)
    return abs(baseline * mde) / sd


def sample_size(
    kind: Kind,
    *,
    baseline: float,
    mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
    variants: int = 2,
    daily_units: float | None = None,
    baseline_sd: float | None = None,
    design: Design = "fixed_horizon",
) -> PowerResult:
    """Units per variant to detect a relative `mde` on `baseline` (two-sided, equal split),
    with a fixed-horizon test or the sequential one (module docstring)."""
    if design not in DESIGNS:
        raise StatsInputError("design", f"must be one of {', '.join(DESIGNS)}")
    if kind not in KINDS:
        raise StatsInputError("kind", f"must be one of {', '.join(KINDS)}")
    if (
        isinstance(mde, bool)
        or not isinstance(mde, (int, float))
        or mde == 0
        or not math.isfinite(mde)
    ):
        raise StatsInputError("mde", "must be a non-zero relative effect")
    alpha = _check_fraction("alpha", alpha)
    power = _check_fraction("power", power)
    if alpha < MIN_ALPHA:
        raise StatsInputError("alpha", f"must be at least {MIN_ALPHA:g}")
    if power > MAX_POWER:
        raise StatsInputError("power", f"must be at most {MAX_POWER:.9f}")
    if isinstance(variants, bool) or not isinstance(variants, int) or not (
            2 <= variants <= MAX_VARIANTS):
        raise StatsInputError("variants", f"must be an integer from 2 to {MAX_VARIANTS}")
    if daily_units is not None:
        _check_positive("daily_units", daily_units)
    effect = _effect_size(kind, baseline, mde, baseline_sd)
    per_variant = _units_per_variant(kind, effect, alpha, power)
    if design == "sequential":
        per_variant = sequential_units_per_variant(
            abs(baseline * mde), _unit_variances(kind, baseline, mde, baseline_sd),
            mixing_mde=mde, baseline=baseline, alpha=alpha, power=power, start=per_variant)
    total = per_variant * variants
    days = None if daily_units is None else math.ceil(total / daily_units)
    if days is not None and days > MAX_DAYS:
        raise StatsInputError("daily_units", f"too low: the test would take {days:.3g} days")
    return PowerResult(per_variant, total, days)


def _units_per_variant(kind: Kind, effect: float, alpha: float, power: float) -> int:
    """statsmodels' sample size, or a StatsInputError on ``mde`` when it is degenerate.

    The normal approximation bounds the answer first: statsmodels' root finder fails
    (or returns NaN) on effects this tiny or this large.
    """
    if not math.isfinite(effect) or effect > MAX_EFFECT_SIZE:
        raise StatsInputError("mde", f"is more than {MAX_EFFECT_SIZE:g} standard deviations: "
                                     "check baseline_sd")
    z_total = float(norm.isf(alpha / 2) + norm.ppf(power))
    if effect == 0 or z_total / effect > math.sqrt(MAX_UNITS_PER_VARIANT):  # n ≈ (z / effect)²
        raise StatsInputError("mde", "is too small to detect: it would need more than "
                                     f"{MAX_UNITS_PER_VARIANT:,} units per variant")
    from statsmodels.stats.power import NormalIndPower, TTestIndPower

    solver = NormalIndPower() if kind in PROPORTION_KINDS else TTestIndPower()
    try:
        nobs = float(solver.solve_power(
            effect_size=effect, alpha=alpha, power=power, ratio=1.0, alternative="two-sided"))
    except ValueError:
        nobs = math.nan
    if not math.isfinite(nobs) or nobs <= 0:
        raise StatsInputError("mde", "gives no usable sample size with this baseline")
    return math.ceil(nobs)


def _unit_variances(kind: Kind, baseline: float, mde: float,
                    baseline_sd: float | None) -> tuple[float, float]:
    """Per-unit variances of control and treatment under the planned effect (a rate's
    p(1 - p); a count without a spread, Poisson's mean; otherwise the baseline's sd²)."""
    if kind in PROPORTION_KINDS:
        treated = baseline * (1.0 + mde)
        return baseline * (1.0 - baseline), treated * (1.0 - treated)
    if baseline_sd is None:  # a count: _effect_size accepted it
        return abs(baseline), abs(baseline * (1.0 + mde))
    return baseline_sd * baseline_sd, baseline_sd * baseline_sd


def sequential_units_per_variant(effect: float, variances: tuple[float, float], *,
                                 mixing_mde: float, baseline: float, alpha: float,
                                 power: float, start: int = 1) -> int:
    """The fewest units per variant at which the mixture SPRT, read once, rejects an
    absolute ``effect`` with probability ``power``: effect / se − c(se²) ≥ z(power), with
    c the confidence sequence's multiplier and its mixing variance as the analysis sets
    it (:func:`stats.compare` ``_sequential_test``). ``start``: a sample known too small
    (the fixed-horizon one: c is always above the fixed-horizon z)."""
    tau2 = mixing_variance(baseline, max(variances), mixing_mde)
    z_power = float(norm.ppf(power))

    def reaches(units: int) -> bool:
        variance = sum(variances) / units
        return (effect / math.sqrt(variance)
                - confidence_sequence_multiplier(variance, tau2, alpha)) >= z_power

    low, high = max(1, start), max(2, 2 * start)
    while not reaches(high):
        if high > MAX_UNITS_PER_VARIANT:
            raise StatsInputError("mde", "is too small to detect with a sequential test: it "
                                         f"would need more than {MAX_UNITS_PER_VARIANT:,} "
                                         "units per variant")
        low, high = high, 2 * high
    while high - low > 1:  # reaches(high); the answer lies in (low, high]
        middle = (low + high) // 2
        low, high = (low, middle) if reaches(middle) else (middle, high)
    return high if not reaches(low) else low
