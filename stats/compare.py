"""One treatment against the control: effects, tests, Bayesian summaries and the verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from stats import bayesian, frequentist, sequential
from stats._numeric import finite, finite_pair
from stats.correction import adjust_p_values
from stats.fieller import fieller_interval
from stats.records import (
    CORRECTIONS,
    DIRECTIONS,
    KINDS,
    METHODS,
    Correction,
    Direction,
    Kind,
    Method,
    StatsInputError,
    Verdict,
)
from stats.summary import ArmSummary

WELCH_KINDS: frozenset[str] = frozenset({"mean", "count", "time_to_convert"})
# Effects in points, not in percent of a score that can be negative or 0 (SPEC §6).
POINTS_KINDS: frozenset[str] = frozenset({"nps"})
# The differences a metric can take at all: two rates differ by at most 1, two NPS by at
# most 200 points (each is in [-100, 100]).
ABSOLUTE_RANGE: dict[str, tuple[float, float]] = {
    "conversion": (-1.0, 1.0), "friction": (-1.0, 1.0), "nps": (-200.0, 200.0)}
# Metrics whose per-unit values are never negative: the treatment's mean cannot fall by more
# than 100 % of the control's.
RELATIVE_FLOOR_KINDS: frozenset[str] = frozenset(
    {"conversion", "friction", "count", "time_to_convert"})


@dataclass(frozen=True)
class Comparison:
    """A treatment against the control, field names as in the report's "comparisons".

    `direction`, `mde`, `alpha` and `method` are kept so verdicts can be recomputed after a
    correction (which leaves Bayesian comparisons alone: they carry no p-value).
    """

    variant: str
    absolute_effect: float | None
    absolute_ci: tuple[float, float] | None
    relative_effect: float | None
    relative_ci: tuple[float, float] | None
    p_value: float | None
    adjusted_p_value: float | None
    chance_to_win: float | None
    expected_loss: float | None
    significant: bool
    verdict: Verdict
    warnings: tuple[str, ...] = ()
    statistic: float | None = None
    direction: Direction = "increase"
    mde: float | None = None
    alpha: float = 0.05
    method: Method = "frequentist"


def check_options(
    *,
    kind: str | None = None,
    method: str,
    alpha: float,
    direction: str,
    mde: float | None,
    correction: str | None = None,
) -> None:
    """Validate shared keyword options, naming the offending one."""
    if kind is not None and kind not in KINDS:
        raise StatsInputError("kind", f"must be one of {', '.join(KINDS)}")
    if method not in METHODS:
        raise StatsInputError("method", f"must be one of {', '.join(METHODS)}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise StatsInputError("alpha", "must be between 0 and 1")
    if direction not in DIRECTIONS:
        raise StatsInputError("direction", "must be increase or decrease")
    if mde is not None and (
        isinstance(mde, bool) or not isinstance(mde, (int, float)) or not 0.0 < mde < math.inf
    ):
        raise StatsInputError("mde", "must be a positive relative effect")
    if correction is not None and correction not in CORRECTIONS:
        raise StatsInputError("correction", f"must be one of {', '.join(CORRECTIONS)}")


def decide_verdict(
    *,
    significant: bool,
    absolute_effect: float | None,
    relative_ci: tuple[float, float] | None,
    direction: Direction,
    mde: float | None,
    chance_to_win: float | None = None,
) -> Verdict:
    """better/worse when significant; flat when the relative CI sits inside +-mde.

    With a chance to win (Bayesian) its side decides better or worse: it already respects
    the metric's direction.
    """
    if significant and chance_to_win is not None:
        return "better" if chance_to_win >= 0.5 else "worse"
    if significant and absolute_effect is not None and absolute_effect != 0:
        good = (absolute_effect > 0) == (direction == "increase")
        return "better" if good else "worse"
    inside = (
        relative_ci is not None
        and mde is not None
        and -mde <= relative_ci[0]
        and relative_ci[1] <= mde
    )
    if not significant and inside:
        return "flat"
    return "inconclusive"


@dataclass(frozen=True)
class _Arm:
    """An arm with everything a test needs (n, estimate and per-unit variance)."""

    n: int
    mean: float
    variance: float

    @property
    def se2(self) -> float:
        """Squared standard error of the estimate."""
        return self.variance / self.n


def _complete(control: ArmSummary, treatment: ArmSummary) -> tuple[_Arm, _Arm] | str:
    """Both arms ready for a test, or the reason why not."""
    arms = []
    for role, arm in (("control", control), ("treatment", treatment)):
        if arm.n == 0:
            return f"{role} has no units"
        if arm.mean is None:
            return f"{role} estimate is undefined (zero denominator or overflow)"
        if arm.variance is None and arm.n < 2:
            return f"{role} has fewer than 2 units"
        if arm.variance is None:
            return f"{role} variance is undefined (overflow)"
        arms.append(_Arm(arm.n, arm.mean, arm.variance))
    return arms[0], arms[1]


@dataclass(frozen=True)
class _Test:
    """Framework-specific outputs before they become a Comparison.

    A frequentist or sequential test fills the p-value; a Bayesian one the chance to win
    and expected loss; never both (SPEC §6: one framework per report).
    """

    p_value: float | None = None
    statistic: float | None = None
    absolute_ci: tuple[float, float] | None = None
    relative_ci: tuple[float, float] | None = None
    chance_to_win: float | None = None
    expected_loss: float | None = None


UNBOUNDED_RATIO = "the control's interval includes 0: no relative interval (the ratio is unbounded)"


def _interval(center: float, half_width: float) -> tuple[float, float] | None:
    """Symmetric interval, None when not finite."""
    return finite_pair(center - half_width, center + half_width)


def _relative_interval(
    control: _Arm, treatment: _Arm, critical: float, warnings: list[str]
) -> tuple[float, float] | None:
    """Fieller interval at the absolute interval's critical value, noting when it is unbounded."""
    interval = fieller_interval(
        control.mean, control.se2, treatment.mean, treatment.se2, critical=critical
    )
    if interval is None:
        warnings.append(UNBOUNDED_RATIO)
        return None
    return finite_pair(*interval)


def _frequentist(kind: str, control: _Arm, treatment: _Arm) -> tuple[float, float, float | None]:
    """Statistic, p-value and df (Welch kinds only) of the difference."""
    diff = treatment.mean - control.mean
    se = math.sqrt(control.se2 + treatment.se2)
    if kind in WELCH_KINDS:
        df = frequentist.welch_df(control.se2, control.n, treatment.se2, treatment.n)
        return (*frequentist.t_test(diff, se, df), df)
    return (*frequentist.z_test(diff, se), None)


def _sequential_test(
    control: _Arm,
    treatment: _Arm,
    warnings: list[str],
    *,
    alpha: float,
    mde: float | None,
    previous_p_value: float | None,
) -> _Test:
    """Always-valid p-value and confidence sequences (one multiplier for both intervals)."""
    diff, v = treatment.mean - control.mean, control.se2 + treatment.se2
    tau2 = sequential.mixing_variance(control.mean, max(control.variance, treatment.variance), mde)
    p = float(sequential.msprt_p_value(diff, v, tau2))
    if previous_p_value is not None:
        p = min(p, previous_p_value)
    multiplier = sequential.confidence_sequence_multiplier(v, tau2, alpha)
    return _Test(
        p_value=finite(p),
        statistic=finite(diff / math.sqrt(v)),
        absolute_ci=_interval(diff, multiplier * math.sqrt(v)),
        relative_ci=_relative_interval(control, treatment, multiplier, warnings),
    )


def _frequentist_test(
    kind: str, control: _Arm, treatment: _Arm, warnings: list[str], *, alpha: float
) -> _Test:
    """Wald z or Welch t: p-value and intervals at the same critical value."""
    statistic, p, df = _frequentist(kind, control, treatment)
    q = frequentist.critical_value(alpha, df)
    return _Test(
        p_value=finite(p),
        statistic=finite(statistic),
        absolute_ci=_interval(
            treatment.mean - control.mean, q * math.sqrt(control.se2 + treatment.se2)
        ),
        relative_ci=_relative_interval(control, treatment, q, warnings),
    )


def _beta_test(
    control: ArmSummary, treatment: ArmSummary, direction: Direction, alpha: float
) -> _Test:
    """Exact Beta(1, 1)-binomial posterior: chance to win, loss and credible intervals."""
    c = (int(control.successes or 0), control.n)
    t = (int(treatment.successes or 0), treatment.n)
    ctw, loss = bayesian.beta_comparison(c, t, direction)
    absolute_ci, relative_ci = bayesian.beta_credible_intervals(c, t, alpha=alpha)
    return _Test(
        absolute_ci=finite_pair(*absolute_ci),
        relative_ci=None if relative_ci is None else finite_pair(*relative_ci),
        chance_to_win=finite(ctw),
        expected_loss=finite(loss),
    )


def _normal_test(
    control: _Arm, treatment: _Arm, warnings: list[str], direction: Direction, alpha: float
) -> _Test:
    """Normal posteriors N(mean, se²) per arm (flat prior): the difference's quantiles are
    exact, and the ratio's are Fieller's at z (exact up to the control's mass below 0)."""
    diff = treatment.mean - control.mean
    se = math.sqrt(control.se2 + treatment.se2)
    z = frequentist.critical_value(alpha)
    return _Test(
        absolute_ci=_interval(diff, z * se),
        relative_ci=_relative_interval(control, treatment, z, warnings),
        chance_to_win=finite(bayesian.normal_chance_to_win(diff, se, direction)),
        expected_loss=finite(bayesian.normal_expected_loss(diff, se, direction)),
    )


def clipped(
    interval: tuple[float, float] | None, low: float, high: float
) -> tuple[float, float] | None:
    """The interval cut to [low, high] (None when nothing of it is left)."""
    if interval is None:
        return None
    cut = (max(interval[0], low), min(interval[1], high))
    return cut if cut[0] <= cut[1] else None


def _within_possible_effects(kind: str, test: _Test) -> _Test:
    """The intervals cut to the effects the metric can take (:data:`ABSOLUTE_RANGE`,
    :data:`RELATIVE_FLOOR_KINDS`).

    A normal interval or a confidence sequence on few units reaches past them (a day-one
    sequence for a conversion rate can read ±300 points). The true effect always lies within
    them, so the cut interval covers it exactly as often; and 0 is always within them, so no
    verdict changes."""
    low, high = ABSOLUTE_RANGE.get(kind, (-math.inf, math.inf))
    floor = -1.0 if kind in RELATIVE_FLOOR_KINDS else -math.inf
    return replace(test, absolute_ci=clipped(test.absolute_ci, low, high),
                   relative_ci=clipped(test.relative_ci, floor, math.inf))


def _tested(
    kind: str,
    control: ArmSummary,
    treatment: ArmSummary,
    warnings: list[str],
    *,
    method: Method,
    alpha: float,
    direction: Direction,
    mde: float | None,
    previous_p_value: float | None,
) -> _Test:
    """Run the report's framework when the pair allows it, else note why not in `warnings`."""
    exact_beta = control.successes is not None and treatment.successes is not None
    if method == "bayesian" and exact_beta and control.n and treatment.n:
        return _beta_test(control, treatment, direction, alpha)
    pair = _complete(control, treatment)
    if isinstance(pair, str):
        warnings.append(f"{pair}: no test")
        return _Test()
    if pair[0].se2 + pair[1].se2 == 0:
        warnings.append("zero variance in both variants: no test")
        return _Test()
    if method == "bayesian":
        return _normal_test(*pair, warnings, direction, alpha)
    if method == "sequential":
        return _sequential_test(
            *pair, warnings, alpha=alpha, mde=mde, previous_p_value=previous_p_value
        )
    return _frequentist_test(kind, *pair, warnings, alpha=alpha)


def _effects(
    kind: str, control: ArmSummary, treatment: ArmSummary, warnings: list[str]
) -> tuple[float | None, float | None]:
    """Absolute and relative point effects; NPS is in points, so it has no relative effect."""
    if control.mean is None or treatment.mean is None:
        return None, None
    if kind in POINTS_KINDS:
        return finite(treatment.mean - control.mean), None
    return point_effects(control.mean, treatment.mean, warnings)


def point_effects(
    control: float, treatment: float, warnings: list[str]
) -> tuple[float | None, float | None]:
    """Δ = treatment − control and Δ/|control|; a zero control has no relative effect."""
    absolute = finite(treatment - control)
    if control == 0:
        warnings.append("control estimate is 0: no relative effect")
        return absolute, None
    return absolute, finite(frequentist.relative_change(treatment, control))


def bayesian_significant(chance_to_win: float | None, alpha: float) -> bool:
    """A Bayesian result is decisive when the chance to win is >= 1 − alpha or <= alpha."""
    return chance_to_win is not None and (chance_to_win >= 1.0 - alpha or chance_to_win <= alpha)


def compare(
    kind: Kind,
    control: ArmSummary,
    treatment: ArmSummary,
    *,
    variant: str = "treatment",
    method: Method = "frequentist",
    alpha: float = 0.05,
    direction: Direction = "increase",
    mde: float | None = None,
    previous_p_value: float | None = None,
) -> Comparison:
    """Compare one treatment summary with the control summary; never raises on degenerate data."""
    check_options(kind=kind, method=method, alpha=alpha, direction=direction, mde=mde)
    warnings: list[str] = []
    absolute, relative = _effects(kind, control, treatment, warnings)
    try:
        test = _tested(
            kind,
            control,
            treatment,
            warnings,
            method=method,
            alpha=alpha,
            direction=direction,
            mde=mde,
            previous_p_value=previous_p_value,
        )
    except ArithmeticError:  # overflow on absurd magnitudes: report, never raise
        warnings.append("numeric overflow: no test")
        test = _Test()
    test = _within_possible_effects(kind, test)
    relative_ci = test.relative_ci if relative is not None else None
    if relative is None:  # no ratio was asked for (NPS in points, or a zero control)
        warnings = [warning for warning in warnings if warning != UNBOUNDED_RATIO]
    if method == "bayesian":
        significant = bayesian_significant(test.chance_to_win, alpha)
    else:
        significant = test.p_value is not None and test.p_value < alpha
    verdict = decide_verdict(
        significant=significant,
        absolute_effect=absolute,
        relative_ci=relative_ci,
        direction=direction,
        mde=mde,
        chance_to_win=test.chance_to_win,
    )
    return Comparison(
        variant=variant,
        absolute_effect=absolute,
        absolute_ci=test.absolute_ci,
        relative_effect=relative,
        relative_ci=relative_ci,
        p_value=test.p_value,
        adjusted_p_value=test.p_value,
        chance_to_win=test.chance_to_win,
        expected_loss=test.expected_loss,
        significant=significant,
        verdict=verdict,
        warnings=tuple(dict.fromkeys(warnings)),
        statistic=test.statistic,
        direction=direction,
        mde=mde,
        alpha=alpha,
        method=method,
    )


def apply_correction(
    comparisons: Sequence[Comparison], method: Correction
) -> tuple[Comparison, ...]:
    """Adjust raw p-values jointly (Holm/BH/none) and recompute `significant` and `verdict`."""
    adjusted = adjust_p_values([c.p_value for c in comparisons], method)
    out = []
    for comparison, p in zip(comparisons, adjusted, strict=True):
        if comparison.method == "bayesian":  # no p-values: the chance to win decides alone
            out.append(comparison)
            continue
        significant = p is not None and p < comparison.alpha
        verdict = decide_verdict(
            significant=significant,
            absolute_effect=comparison.absolute_effect,
            relative_ci=comparison.relative_ci,
            direction=comparison.direction,
            mde=comparison.mde,
        )
        out.append(
            replace(comparison, adjusted_p_value=p, significant=significant, verdict=verdict)
        )
    return tuple(out)
