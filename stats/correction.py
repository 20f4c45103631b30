"""Multiple-testing corrections with statsmodels' `multipletests` semantics, tolerant of None."""

from __future__ import annotations

from collections.abc import Sequence

from statsmodels.stats.multitest import multipletests

from stats.records import CORRECTIONS, Correction, StatsInputError

_STATSMODELS_NAMES = {"holm": "holm", "bh": "fdr_bh"}


def adjust_p_values(
    p_values: Sequence[float | None], method: Correction
) -> tuple[float | None, ...]:
    """Adjust the present p-values together; missing ones stay None and do not count."""
    if method not in CORRECTIONS:
        raise StatsInputError("correction", f"must be one of {', '.join(CORRECTIONS)}")
    present = [i for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = list(p_values)
    if method == "none" or not present:
        return tuple(adjusted)
    _, corrected, _, _ = multipletests(
        [p_values[i] for i in present], method=_STATSMODELS_NAMES[method]
    )
    for i, p in zip(present, corrected, strict=True):
        adjusted[i] = float(p)
    return tuple(adjusted)
