"""The journey: funnel (units reaching each step) and friction matrix (step × kind).

Journey steps are packed flags of stage 2 (reached, then one bit per friction kind), so
the funnel and the matrix come out of stage 3's variant/day rows at no extra scan:
:func:`journey_columns` counts them. Friction reported at steps outside the journey is
rare; stage 2 flags it (``extra_friction``) and only then :func:`friction_outside_query`
reads those events once more, per unit and step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, select, true
from sqlalchemy.sql import Select

from experiments.schemas import FRICTION_KINDS
from experiments.services.pipeline.exposures import first_exposures
from experiments.services.pipeline.sources import PipelineSources
from experiments.services.pipeline.unit_values import Plan, count_flag, window


@dataclass
class JourneyCounts:
    """Units per variant that reached each step, and that met each friction kind there."""

    reached: dict[tuple[str, str], int] = field(default_factory=dict)
    friction: dict[tuple[str, str, str], int] = field(default_factory=dict)


def journey_columns(plan: Plan, unit: Any) -> list[Any]:
    """Units per journey step reached and per step × friction kind met there."""
    columns = [count_flag(unit, plan, "extra_friction").label("extra_friction")]
    for number in range(len(plan.journey)):
        columns.append(count_flag(unit, plan, f"reach_{number}").label(f"reach_{number}"))
        columns += [count_flag(unit, plan, f"fric_{number}_{kind}").label(f"fric_{number}_{kind}")
                    for kind in range(len(FRICTION_KINDS))]
    return columns


def friction_outside_query(sources: PipelineSources, journey: Sequence[str], *,
                           hours: float | None) -> Select[Any]:
    """Per variant (and grouping columns) and step outside the journey: units per friction
    kind met there."""
    x, ev = first_exposures(sources), sources.events
    flags = [func.max(case((ev.c.friction_kind == kind, 1), else_=0)).label(kind)
             for kind in FRICTION_KINDS]
    outside = and_(ev.c.type == "friction", ev.c.step.is_not(None),
                   ev.c.step.not_in(list(journey)) if journey else true())
    groups = [x.c[name] for name in sources.grouping]
    per_unit_step = (select(x.c.variant_key, *groups, ev.c.step, *flags)
                     .select_from(ev.join(x, ev.c.unit_id == x.c.unit_id))
                     .where(window(x, ev, hours, with_pre=False), outside)
                     .group_by(x.c.exposure_id, x.c.variant_key, *groups, ev.c.step)
                     .subquery("s"))
    s = per_unit_step
    keys = [s.c.variant_key, *(s.c[name] for name in sources.grouping), s.c.step]
    return (select(*keys, *[func.sum(s.c[kind]).label(kind) for kind in FRICTION_KINDS])
            .group_by(*keys))


def number(value: Any) -> float:
    """SQL sums come back as int, Decimal, float or None (no rows)."""
    return 0.0 if value is None else float(value)


def add_journey(counts: JourneyCounts, plan: Plan, data: Mapping[str, Any]) -> None:
    """Accumulate one variant/day row's funnel and friction counts."""
    variant = data["variant_key"]
    for step_number, step in enumerate(plan.journey):
        key = (variant, step)
        counts.reached[key] = counts.reached.get(key, 0) + int(number(data[f"reach_{step_number}"]))
        for kind_number, kind in enumerate(FRICTION_KINDS):
            cell = (variant, step, kind)
            counts.friction[cell] = counts.friction.get(cell, 0) + int(
                number(data[f"fric_{step_number}_{kind_number}"]))


def add_friction_outside(counts: JourneyCounts, rows: Any) -> None:
    """Friction reported at steps outside the journey (still listed in the friction matrix)."""
    for row in rows:
        data = row._mapping
        for kind in FRICTION_KINDS:
            cell = (data["variant_key"], data["step"], kind)
            counts.friction[cell] = counts.friction.get(cell, 0) + int(number(data[kind]))


__all__ = ["JourneyCounts", "add_friction_outside", "add_journey", "friction_outside_query",
           "journey_columns", "number"]
