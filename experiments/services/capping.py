"""Capping (winsorisation) of per-unit values (SPEC §6), computed in the database.

A capped metric's per-unit value above the cap counts as the cap in every sufficient
statistic (sum, sum of squares, cross products), so one whale cannot decide an
experiment. The cap is absolute, or the nearest-rank percentile of the per-unit values of
every exposed unit of this analysis, pooled over variants (one threshold for all arms, as
at GrowthBook and Statsig, so the cap itself cannot differ by treatment). Units without a
matching event are absent from the per-unit pass but count as value 0: the ranking gives
them one row of weight ``units − present``. A ratio caps numerator and denominator
separately; a CUPED pre-period value is capped by its metric's post-period cap.

A cap never goes below 0: the units without events, whose value is 0, are summed outside
the pass and are never lowered, so a negative percentile is floored at 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Float, Integer, case, func, literal, select, union_all
from sqlalchemy.sql import ColumnElement

CAPPED_PARTS: Mapping[str, tuple[str, ...]] = {"mean": ("y",), "count": ("y",),
                                               "ratio": ("num", "den")}
CapKey = tuple[int, str]  # (metric index in the plan, per-unit part: y, num or den)


def nearest_rank(fraction: float, units: int) -> int:
    """The 1-based rank of the ``fraction`` percentile among ``units`` values: ⌈n·p⌉, with a
    tolerance so that 0.99 × 100 is rank 99, not 100 (binary floating point)."""
    return min(units, max(1, math.ceil(fraction * units - 1e-9)))


def percentile_cap(column: Any, unit: Any, units: int, fraction: float) -> Any:
    """The nearest-rank percentile of ``column`` over every exposed unit (absent units are 0),
    floored at 0, as a scalar subquery over the per-unit values ``unit``."""
    present = select(func.count()).select_from(unit).scalar_subquery()
    values = union_all(
        select(column.label("v"), literal(1, Integer()).label("w")).select_from(unit),
        select(literal(0.0, Float()).label("v"), (literal(units, Integer()) - present).label("w")),
    ).subquery("cap_values")
    ranked = select(values.c.v, func.sum(values.c.w).over(
        order_by=values.c.v, rows=(None, 0)).label("at_or_below")).subquery("cap_ranks")
    lowest = func.min(ranked.c.v)
    return (select(case((lowest > 0.0, lowest), else_=0.0))
            .where(ranked.c.at_or_below >= nearest_rank(fraction, units)).scalar_subquery())


def cap_thresholds(metrics: Sequence[Any], unit: Any, units: int) -> dict[CapKey, Any]:
    """Each capped part's threshold as a SQL expression (a literal when absolute)."""
    thresholds: dict[CapKey, Any] = {}
    for index, metric in enumerate(metrics):
        if metric.cap_type is None or metric.kind not in CAPPED_PARTS:
            continue
        for part in CAPPED_PARTS[metric.kind]:
            if metric.cap_type == "absolute":
                thresholds[(index, part)] = literal(float(metric.cap_value), Float())
            else:
                thresholds[(index, part)] = percentile_cap(
                    unit.c[f"m{index}_{part}"], unit, units, float(metric.cap_value))
    return thresholds


def needs_ranking(metrics: Sequence[Any]) -> bool:
    """Whether some threshold is a percentile (the per-unit values are then read twice)."""
    return any(m.cap_type == "percentile" and m.kind in CAPPED_PARTS for m in metrics)


def capped(value: Any, threshold: Any | None) -> ColumnElement[Any]:
    """``min(value, threshold)``, portable (LEAST on PostgreSQL is MIN on SQLite)."""
    if threshold is None:
        return value
    return case((value > threshold, threshold), else_=value)


def cap_label(index: int, part: str) -> str:
    """The result column carrying a threshold (not ``m{index}_…``: it is not a sum)."""
    return f"cap{index}_{part}"


__all__ = ["CAPPED_PARTS", "cap_label", "cap_thresholds", "capped", "nearest_rank",
           "needs_ranking", "percentile_cap"]
