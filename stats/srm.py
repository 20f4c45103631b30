"""Sample-ratio mismatch: chi-square goodness of fit of units per variant against the weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as sps

from stats._numeric import finite
from stats.records import StatsInputError, check_count

SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class SrmResult:
    """p-value of the goodness-of-fit test and whether it flags a mismatch."""

    p_value: float | None
    detected: bool


def _check_weights(units: Sequence[int], weights: Sequence[float]) -> list[float]:
    """Validate the weights and return them normalised to sum to 1."""
    if len(weights) != len(units):
        raise StatsInputError("weights", "must have one weight per variant")
    for i, weight in enumerate(weights):
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
        ):
            raise StatsInputError(f"weights[{i}]", "must be a finite number")
        if weight < 0:
            raise StatsInputError(f"weights[{i}]", "must be >= 0")
    total = float(sum(weights))
    if total <= 0:
        raise StatsInputError("weights", "must not all be 0")
    return [w / total for w in weights]


def srm_test(units: Sequence[int], weights: Sequence[float]) -> SrmResult:
    """Flag traffic that does not match the configured split (p < 0.001)."""
    for i, count in enumerate(units):
        check_count(f"units[{i}]", count)
    shares = _check_weights(units, weights)
    total = sum(units)
    if any(share == 0 and count > 0 for share, count in zip(shares, units, strict=True)):
        return SrmResult(0.0, True)  # units where none were expected: certain mismatch
    pairs = [
        (count, share * total) for count, share in zip(units, shares, strict=True) if share > 0
    ]
    if total == 0 or len(pairs) < 2:
        return SrmResult(None, False)
    observed, expected = zip(*pairs, strict=True)
    p_value = finite(sps.chisquare(observed, expected).pvalue)
    return SrmResult(p_value, p_value is not None and p_value < SRM_THRESHOLD)
