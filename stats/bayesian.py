"""Chance to win and expected loss: Beta(1, 1) posteriors for proportions, normal otherwise.

Everything is closed form or fixed-node quadrature, so the same input always gives
the same output (no sampling).
"""

from __future__ import annotations

import numpy as np
from scipy import special
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


def beta_posterior_moments(successes: int, n: int) -> tuple[float, float]:
    """Posterior mean and variance of a rate under a Beta(1, 1) prior."""
    a, b = 1.0 + successes, 1.0 + n - successes
    return a / (a + b), _beta_sd(a, b) * _beta_sd(a, b)
