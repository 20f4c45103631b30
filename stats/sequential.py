"""Mixture SPRT with a normal mixture: always-valid p-values and confidence sequences.

With estimate theta, its variance V and mixing variance tau2 (theta ~ N(0, tau2) under H1),
the likelihood ratio against theta = 0 is
    L = sqrt(V / (V + tau2)) * exp(theta^2 tau2 / (2 V (V + tau2))),
and p = min(1, 1 / L) stays below alpha with probability >= 1 - alpha at every look.
Inverting L(theta - theta0) < 1 / alpha gives the confidence sequence
    |theta - theta0| < sqrt((V + tau2) / tau2 * V * (2 ln(1 / alpha) + ln((V + tau2) / V))).
"""

from __future__ import annotations

import math

# Mixing scale when no MDE is configured: a 10% relative effect on the control estimate.
DEFAULT_MIXING_MDE = 0.1
# Floor of the mixing scale: the standard error of a difference at this many units per arm.
# A tau far below the standard error leaves the test blind to large effects on rare events
# (2% friction rate, 5% MDE: tau = 0.001 while se is 0.006), so tau never goes below it.
TUNING_UNITS_PER_ARM = 1000


def mixing_variance(control_mean: float, unit_variance: float, mde: float | None) -> float:
    """tau^2 = max((mde * |control estimate|)^2, 2 * unit variance / TUNING_UNITS_PER_ARM).

    When the control estimate is 0 the MDE applies to the per-unit sd instead.
    """
    scale = abs(control_mean) if control_mean != 0 else math.sqrt(unit_variance)
    tau = abs(mde or DEFAULT_MIXING_MDE) * scale
    return max(tau * tau, 2.0 * unit_variance / TUNING_UNITS_PER_ARM)


def msprt_p_value(estimate: float, variance: float, tau2: float) -> float:
    """Always-valid p-value 1 / L, computed in log space to avoid overflow."""
    total = variance + tau2
    log_p = 0.5 * math.log(total / variance) - estimate * estimate * tau2 / (2.0 * variance * total)
    return math.exp(min(log_p, 0.0))


def confidence_sequence_multiplier(variance: float, tau2: float, alpha: float) -> float:
    """Critical value of the (1 - alpha) confidence sequence: half-width / standard error.

    It plays the part of z in a fixed-horizon interval, so the relative (Fieller) interval
    can use the same one as the absolute interval.
    """
    total = variance + tau2
    log_terms = 2.0 * math.log(1.0 / alpha) + math.log(total / variance)
    return math.sqrt(total / tau2 * log_terms)


def confidence_sequence_half_width(variance: float, tau2: float, alpha: float) -> float:
    """Half-width of the (1 - alpha) confidence sequence around the estimate."""
    return confidence_sequence_multiplier(variance, tau2, alpha) * math.sqrt(variance)
