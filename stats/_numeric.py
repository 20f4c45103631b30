"""JSON-safe numbers: results never carry NaN or infinity."""

from __future__ import annotations

import math


def finite(value: float | None) -> float | None:
    """Return `value` as a float, or None when it is missing, NaN or infinite."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def finite_pair(low: float | None, high: float | None) -> tuple[float, float] | None:
    """Return an interval only when both ends are finite."""
    lo, hi = finite(low), finite(high)
    if lo is None or hi is None:
        return None
    return (lo, hi)
