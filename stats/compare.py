"""One treatment against the control: effects, tests, Bayesian summaries and the verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from stats import bayesian, frequentist, sequential
from stats._numeric import finite, finite_pair
from stats.correction import adjust_p_values
from stats.records import (
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


@dataclass(frozen=True)
class Comparison:
    """A treatment against the control, field names as in the report's "comparisons".

    `direction`, `mde` and `alpha` are kept so verdicts can be recomputed after a correction.
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


def check_options(
    *,
    kind: str | None = None,
    method: str,
    alpha: float,
    direction: str,
    mde: float | None,
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


def decide_verdict(
    *,
    significant: bool,
    absolute_effect: float | None,
    relative_ci: tuple[float, float] | None,
    direction: Direction,
    mde: float | None,
) -> Verdict:
    """better/worse when significant; flat when the relative CI sits inside +-mde."""
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
    """Method-specific outputs before they become a Comparison."""

    p_value: float | None
    statistic: float | None
    absolute_ci: tuple[float, float] | None
    relative_ci: tuple[float, float] | None


def _interval(center: float, half_width: float) -> tuple[float, float] | None:
    """Symmetric interval, None when not finite."""
    return finite_pair(center - half_width, center + half_width)


def _frequentist(kind: str, control: _Arm, treatment: _Arm) -> tuple[float, float, float | None]:
    """Statistic, p-value and df (Welch kinds only) of the difference."""
    diff = treatment.mean - control.mean
    se = math.sqrt(control.se2 + treatment.se2)
    if kind in WELCH_KINDS:
        df = frequentist.welch_df(control.se2, control.n, treatment.se2, treatment.n)
        return (*frequentist.t_test(diff, se, df), df)
    return (*frequentist.z_test(diff, se), None)


def _sequential(
    control: _Arm,
    treatment: _Arm,
    *,
    alpha: float,
    mde: float | None,
    previous_p_value: float | None,
) -> tuple[float, tuple[float, float] | None, tuple[float, float] | None]:
    """Always-valid p-value and confidence sequences for the absolute and relative effect."""
    diff, v = treatment.mean - control.mean, control.se2 + treatment.se2
    mc = control.mean
    tau2 = sequential.mixing_variance(mc, max(control.variance, treatment.variance), mde)
    p = float(sequential.msprt_p_value(diff, v, tau2))
    if previous_p_value is not None:
        p = min(p, previous_p_value)
    absolute_ci = _interval(diff, sequential.confidence_sequence_half_width(v, tau2, alpha))
    relative_ci = None
    if mc != 0:
        rel_se = frequentist.relative_se(mc, control.se2, treatment.mean, treatment.se2)
        half = sequential.confidence_sequence_half_width(rel_se * rel_se, tau2 / (mc * mc), alpha)
        relative_ci = _interval(frequentist.relative_change(treatment.mean, mc), half)
    return p, absolute_ci, relative_ci


def _run_test(
    kind: str,
    control: _Arm,
    treatment: _Arm,
    *,
    method: Method,
    alpha: float,
    mde: float | None,
    previous_p_value: float | None,
) -> _Test:
    """p-value and intervals for the chosen method."""
    statistic, p, df = _frequentist(kind, control, treatment)
    if method == "sequential":
        p, absolute_ci, relative_ci = _sequential(
            control, treatment, alpha=alpha, mde=mde, previous_p_value=previous_p_value
        )
        return _Test(finite(p), finite(statistic), absolute_ci, relative_ci)
    mc, mt = control.mean, treatment.mean
    q = frequentist.critical_value(alpha, df if method == "frequentist" else None)
    absolute_ci = _interval(mt - mc, q * math.sqrt(control.se2 + treatment.se2))
    relative_ci = None
    if mc != 0:
        rel_se = frequentist.relative_se(mc, control.se2, mt, treatment.se2)
        relative_ci = _interval(frequentist.relative_change(mt, mc), q * rel_se)
    return _Test(finite(p), finite(statistic), absolute_ci, relative_ci)


def _bayesian(
    control: ArmSummary, treatment: ArmSummary, direction: Direction, alpha: float
) -> tuple[float | None, float | None, tuple[float, float] | None]:
    """Chance to win, expected loss and credible interval of the difference."""
    z = frequentist.critical_value(alpha)
    if (
        control.successes is not None
        and treatment.successes is not None
        and control.n
        and treatment.n
    ):
        ctw, loss = bayesian.beta_comparison(
            (control.successes, control.n),
            (treatment.successes, treatment.n),
            direction,
        )
        mean_c, var_c = bayesian.beta_posterior_moments(control.successes, control.n)
        mean_t, var_t = bayesian.beta_posterior_moments(treatment.successes, treatment.n)
        return (
            finite(ctw),
            finite(loss),
            _interval(mean_t - mean_c, z * math.sqrt(var_c + var_t)),
        )
    pair = _complete(control, treatment)
    if isinstance(pair, str) or pair[0].se2 + pair[1].se2 == 0:
        return None, None, None
    diff = pair[1].mean - pair[0].mean
    se = math.sqrt(pair[0].se2 + pair[1].se2)
    ctw = bayesian.normal_chance_to_win(diff, se, direction)
    loss = bayesian.normal_expected_loss(diff, se, direction)
    return finite(ctw), finite(loss), _interval(diff, z * se)


def _tested(
    kind: str,
    control: ArmSummary,
    treatment: ArmSummary,
    warnings: list[str],
    method: Method,
    alpha: float,
    mde: float | None,
    previous_p_value: float | None,
) -> _Test:
    """Run the test when the pair allows it, else note why not in `warnings`."""
    pair = _complete(control, treatment)
    if isinstance(pair, str):
        warnings.append(f"{pair}: no test")
        return _Test(None, None, None, None)
    if pair[0].se2 + pair[1].se2 == 0:
        warnings.append("zero variance in both variants: no test")
        return _Test(None, None, None, None)
    return _run_test(
        kind, *pair, method=method, alpha=alpha, mde=mde, previous_p_value=previous_p_value
    )


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
    absolute = relative = None
    if control.mean is not None and treatment.mean is not None:
        absolute = finite(treatment.mean - control.mean)
        if control.mean != 0:
            relative = finite(frequentist.relative_change(treatment.mean, control.mean))
        else:
            warnings.append("control estimate is 0: no relative effect")
    try:
        ctw, loss, credible = _bayesian(control, treatment, direction, alpha)
        test = _tested(kind, control, treatment, warnings, method, alpha, mde, previous_p_value)
    except ArithmeticError:  # overflow on absurd magnitudes: report, never raise
        warnings.append("numeric overflow: no test")
        ctw, loss, credible, test = None, None, None, _Test(None, None, None, None)
    p_value, absolute_ci = test.p_value, test.absolute_ci
    if method == "bayesian":
        p_value = None if ctw is None else finite(2.0 * min(ctw, 1.0 - ctw))
        absolute_ci = credible if test.absolute_ci is not None else None
    significant = p_value is not None and p_value < alpha
    verdict = decide_verdict(
        significant=significant,
        absolute_effect=absolute,
        relative_ci=test.relative_ci,
        direction=direction,
        mde=mde,
    )
    return Comparison(
        variant=variant,
        absolute_effect=absolute,
        absolute_ci=absolute_ci,
        relative_effect=relative,
        relative_ci=test.relative_ci,
        p_value=p_value,
        adjusted_p_value=p_value,
        chance_to_win=ctw,
        expected_loss=loss,
        significant=significant,
        verdict=verdict,
        warnings=tuple(warnings),
        statistic=test.statistic,
        direction=direction,
        mde=mde,
        alpha=alpha,
    )


def apply_correction(
    comparisons: Sequence[Comparison], method: Correction
) -> tuple[Comparison, ...]:
    """Adjust raw p-values jointly (Holm/BH/none) and recompute `significant` and `verdict`."""
    adjusted = adjust_p_values([c.p_value for c in comparisons], method)
    out = []
    for comparison, p in zip(comparisons, adjusted, strict=True):
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
