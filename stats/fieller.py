"""Fieller's interval for a relative effect μT/μC − 1 (independent arms, unpooled variances).

The delta-method interval of a ratio is symmetric and breaks when the control is small
(a rate "falling by 290 %"). Fieller's theorem inverts the test of μT − ρ·μC = 0 instead:
the set of ρ with (mT − ρ·mC)² ≤ q²·(vT + ρ²·vC). With the same critical value q as the
absolute interval, ρ = 1 is inside exactly when mT − mC is inside its own interval, so the
relative interval excludes 0 if and only if the absolute one does. The set is a bounded
interval only when the control's own interval mC ± q·√vC excludes 0; otherwise the ratio
is unbounded and there is no interval (None).
"""

from __future__ import annotations

import math


def fieller_interval(
    control_mean: float,
    control_se2: float,
    treatment_mean: float,
    treatment_se2: float,
    *,
    critical: float,
) -> tuple[float, float] | None:
    """Interval of (μT − μC) / |μC| at critical value `critical`; None when unbounded.

    The variances are those of the means (se²). For a negative control the ratio interval is
    mirrored, so the result reads like `relative_change`: "up is up" whatever the sign.
    """
    if critical <= 0 or control_se2 < 0 or treatment_se2 < 0:
        raise ValueError("critical and variances must be positive")
    q2 = critical * critical
    a = control_mean * control_mean - q2 * control_se2
    if a <= 0 or not math.isfinite(a):
        return None
    b = treatment_mean * control_mean
    disc = q2 * (
        control_mean * control_mean * treatment_se2
        + treatment_mean * treatment_mean * control_se2
        - q2 * control_se2 * treatment_se2
    )
    root = math.sqrt(max(disc, 0.0))
    low, high = (b - root) / a - 1.0, (b + root) / a - 1.0
    if control_mean < 0:
        low, high = -high, -low
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return (float(low), float(high))
