"""Chance to win and expected loss: Beta(1, 1) posteriors for proportions, normal otherwise.

Everything is closed form or fixed-node quadrature, so the same input always gives
the same output (no sampling).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special
from scipy import stats as sps

from stats.records import Direction

# Breakpoints at the posterior mean +- k sd of both arms; Gauss-Legendre nodes between them.
_SPREAD = np.linspace(-12.0, 12.0, 25)
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(6)


def normal_chance_to_win(diff: float, se: float, direction: Direction) -> float:
    """P(treatment beats control) when the difference is N(diff, se^2)."""
    good = diff if direction == "increase" else -diff
    return float(sps.norm.cdf(good / se))


def normal_expected_loss(diff: float, se: float, direction: Direction) -> float:
    """E[max(-good difference, 0)]: what choosing treatment costs if it is worse."""
    good = diff if direction == "increase" else -diff
    z = good / se
    return float(se * sps.norm.pdf(z) - good * sps.norm.cdf(-z))


def _beta_sd(a: float, b: float) -> float:
    """Standard deviation of Beta(a, b)."""
    return float(np.sqrt(a * b / ((a + b) * (a + b) * (a + b + 1.0))))


def _breakpoints(a: float, b: float) -> np.ndarray:
    """Points at the posterior mean +- k standard deviations."""
    return a / (a + b) + _SPREAD * _beta_sd(a, b)


def _quadrature_grid(
    weighting: tuple[float, float], other: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1], refined where the weighting posterior lives.

    The other posterior's breakpoints are kept only inside that range, where its CDF can bend.
    """
    own = np.clip(_breakpoints(*weighting), 0.0, 1.0)
    theirs = _breakpoints(*other)
    inside = theirs[(theirs > own[0]) & (theirs < own[-1])]
    edges = np.unique(np.concatenate(([0.0, 1.0], own, inside)))
    lo, hi = edges[:-1, None], edges[1:, None]
    half = (hi - lo) / 2.0
    nodes = (lo + half * (_NODES[None, :] + 1.0)).ravel()
    weights = (half * _WEIGHTS[None, :]).ravel()
    return nodes, weights


def _beta_pdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Beta density on interior points, without scipy.stats' per-call overhead."""
    log_pdf = (a - 1.0) * np.log(x) + (b - 1.0) * np.log1p(-x) - special.betaln(a, b)
    return np.exp(log_pdf)  # type: ignore[no-any-return]


def beta_comparison(
    control: tuple[int, int], treatment: tuple[int, int], direction: Direction
) -> tuple[float, float]:
    """Chance to win and expected loss for (successes, n) pairs under Beta(1, 1) priors."""
    a_c, b_c = 1.0 + control[0], 1.0 + control[1] - control[0]
    a_t, b_t = 1.0 + treatment[0], 1.0 + treatment[1] - treatment[0]
    x, w = _quadrature_grid((a_t, b_t), (a_c, b_c))
    weight = w * _beta_pdf(x, a_t, b_t)
    mean_c, mean_t = a_c / (a_c + b_c), a_t / (a_t + b_t)
    # P(T > C) = E_T[F_C(T)] and E[max(C - T, 0)] = E_T[g(T)] with, for Q = P(C > x),
    # g(x) = E[max(C - x, 0)] = (mean_c - x) Q + x (1 - x) pdf_C(x) / (a_c + b_c).
    survival_c = special.betaincc(a_c, b_c, x)
    upper_tail = (mean_c - x) * survival_c + x * (1.0 - x) * _beta_pdf(x, a_c, b_c) / (a_c + b_c)
    p_t_greater = min(max(float(np.sum(weight * (1.0 - survival_c))), 0.0), 1.0)
    loss_c_greater = float(np.sum(weight * upper_tail))
    if direction == "increase":
        return p_t_greater, max(loss_c_greater, 0.0)
    # max(T - C, 0) = max(C - T, 0) + (T - C)
    return 1.0 - p_t_greater, max(loss_c_greater + mean_t - mean_c, 0.0)


# Gauss-Legendre nodes on (0, 1) in probability space: E[g(X)] = ∫ g(F⁻¹(u)) du.
_U_NODES, _U_WEIGHTS = np.polynomial.legendre.leggauss(256)
_U_NODES, _U_WEIGHTS = (_U_NODES + 1.0) / 2.0, _U_WEIGHTS / 2.0


@dataclass(frozen=True)
class _Beta:
    """A Beta(a, b) posterior with the three functions the quadrature needs."""

    a: float
    b: float

    @classmethod
    def of(cls, successes: int, n: int) -> _Beta:
        """The Beta(1 + s, 1 + n − s) posterior of a rate."""
        return cls(1.0 + successes, 1.0 + n - successes)

    @property
    def mean(self) -> float:
        """Posterior mean."""
        return self.a / (self.a + self.b)

    @property
    def sd(self) -> float:
        """Posterior standard deviation."""
        return _beta_sd(self.a, self.b)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """P(X <= x), for any real x."""
        return special.betainc(self.a, self.b, np.clip(x, 0.0, 1.0))  # type: ignore[no-any-return]

    def quantiles(self) -> np.ndarray:
        """The posterior at the quadrature nodes (F⁻¹(u))."""
        return special.betaincinv(self.a, self.b, _U_NODES)  # type: ignore[no-any-return]


def _quantile(cdf: Callable[[float], float], target: float, low: float, high: float) -> float:
    """Solve cdf(x) = target on a bracket that is widened until it holds the answer."""
    width = high - low
    for _ in range(200):
        if cdf(low) <= target:
            break
        low -= width
        width *= 2.0
    width = high - low
    for _ in range(200):
        if cdf(high) >= target:
            break
        high += width
        width *= 2.0
    return float(optimize.brentq(lambda x: cdf(x) - target, low, high, xtol=1e-12, rtol=1e-12))


def _difference_cdf(control: _Beta, treatment: _Beta) -> Callable[[float], float]:
    """P(T − C <= d), integrating over the narrower posterior (the smoother integrand)."""
    if control.sd <= treatment.sd:
        c = control.quantiles()
        return lambda d: float(np.dot(_U_WEIGHTS, treatment.cdf(c + d)))
    t = treatment.quantiles()
    return lambda d: float(np.dot(_U_WEIGHTS, 1.0 - control.cdf(t - d)))


def _ratio_cdf(control: _Beta, treatment: _Beta) -> Callable[[float], float]:
    """P(T / C − 1 <= r) for rates (C > 0, T >= 0), over the narrower posterior."""
    scale = treatment.mean / control.mean
    if scale * control.sd <= treatment.sd:
        c = control.quantiles()
        return lambda r: float(np.dot(_U_WEIGHTS, treatment.cdf((1.0 + r) * c)))
    t = treatment.quantiles()

    def by_treatment(r: float) -> float:
        if r <= -1.0:
            return 0.0
        return float(np.dot(_U_WEIGHTS, 1.0 - control.cdf(t / (1.0 + r))))

    return by_treatment


def beta_credible_intervals(
    control: tuple[int, int], treatment: tuple[int, int], *, alpha: float
) -> tuple[tuple[float, float], tuple[float, float] | None]:
    """Central (1 − alpha) credible intervals of T − C and T / C − 1 under Beta(1, 1) priors.

    Exact posterior quantiles (quadrature and root finding, no sampling). The relative one is
    None when the control has no success: its observed rate is 0 and the ratio has no estimate.
    """
    c, t = _Beta.of(*control), _Beta.of(*treatment)
    spread = 10.0 * math.hypot(c.sd, t.sd)
    diff = _difference_cdf(c, t)
    centre = t.mean - c.mean
    absolute = (
        _quantile(diff, alpha / 2.0, max(centre - spread, -1.0), centre),
        _quantile(diff, 1.0 - alpha / 2.0, centre, min(centre + spread, 1.0)),
    )
    if control[0] == 0:
        return absolute, None
    ratio = _ratio_cdf(c, t)
    centre = t.mean / c.mean - 1.0
    spread = 10.0 * (t.mean / c.mean) * math.hypot(c.sd / c.mean, t.sd / max(t.mean, 1e-300))
    spread = min(spread, 1.0 + centre) if spread > 0 else 1.0
    relative = (
        _quantile(ratio, alpha / 2.0, centre - spread, centre),
        _quantile(ratio, 1.0 - alpha / 2.0, centre, centre + spread),
    )
    return absolute, relative
