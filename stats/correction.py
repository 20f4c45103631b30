"""Holm and Benjamini-Hochberg with `statsmodels.stats.multitest.multipletests` semantics.

Written out rather than called: `multipletests` runs `gc.collect()` on every call, which
costs milliseconds per report. tests/stats/test_correction.py checks the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stats.records import CORRECTIONS, Correction, StatsInputError


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down: running max of (m - i) * p_(i) over sorted p-values, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    m = len(p)
    stepped = np.maximum.accumulate(p[order] * np.arange(m, 0, -1))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """BH step-up: running min from the top of m / rank * p_(rank), capped at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    m = len(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def adjust_p_values(
    p_values: Sequence[float | None], method: Correction
) -> tuple[float | None, ...]:
    """Adjust the present p-values together; missing ones stay None and do not count."""
    if method not in CORRECTIONS:
        raise StatsInputError("correction", f"must be one of {', '.join(CORRECTIONS)}")
    present = [(i, p) for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = list(p_values)
    if method == "none" or not present:
        return tuple(adjusted)
    procedure = holm if method == "holm" else benjamini_hochberg
    corrected = procedure([p for _, p in present])
    for (i, _), p in zip(present, corrected, strict=True):
        adjusted[i] = float(p)
    return tuple(adjusted)
