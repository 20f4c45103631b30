"""Sufficient statistics computed by the database, one row per variant and exposure day.

Every query starts from the experiment's first exposures (override units excluded) and
LEFT JOINs the events of the same ``unit_id`` inside the unit's window: at or after the
exposure and less than ``conversion_window_hours`` later (and, for CUPED, the window of
the same length before the exposure). A per-unit subquery aggregates each unit's events;
the outer query sums the per-unit values per variant and exposure day (UTC). Python only
ever sees a few rows per variant and day, so memory stays flat as events grow; the daily
rows are additive, which gives the report's totals and its cumulative timeline.

Metric values per unit (SPEC §3): conversion/friction 1 when the unit has a matching event,
mean the sum of the events' values (0 when none), count the number of events, ratio the
sums of numerator and denominator values (an event without a value counts as 1, so ratios
of counts work), nps the unit's last answer (units without one are not counted),
time_to_convert the hours to the first matching event (converters only).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    and_,
    case,
    false,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.functions import FunctionElement

from experiments.models import Event, Exposure, Metric
from experiments.schemas import FRICTION_KINDS
from stats import CupedStats, MeanStats, NpsStats, ProportionStats, RatioStats
from stats.records import Stats

Sums = dict[str, float]
PROPORTION_KINDS = frozenset({"conversion", "friction"})
CUPED_KINDS = frozenset({"conversion", "friction", "mean", "count"})
PROMOTER_MIN, DETRACTOR_MAX = 9, 6


# -- portable SQL helpers -------------------------------------------------------------------


class hours_between(FunctionElement[float]):  # lower case: reads as a SQL function
    """Hours from the first timestamp to the second, as a float, on every backend."""

    type = Float()
    inherit_cache = True


@compiles(hours_between, "postgresql")
def _hours_pg(element: hours_between, compiler: Any, **kw: Any) -> str:
    start, end = list(element.clauses)
    return (f"(EXTRACT(EPOCH FROM ({compiler.process(end, **kw)} - "
            f"{compiler.process(start, **kw)})) / 3600.0)")


@compiles(hours_between)
def _hours_sqlite(element: hours_between, compiler: Any, **kw: Any) -> str:
    start, end = list(element.clauses)
    return (f"((julianday({compiler.process(end, **kw)}) - "
            f"julianday({compiler.process(start, **kw)})) * 24.0)")


class before_hours_after(FunctionElement[bool]):  # lower case: reads as a SQL function
    """``later < earlier + hours``: index-friendly on PostgreSQL, julianday on SQLite."""

    type = Boolean()
    inherit_cache = True


@compiles(before_hours_after, "postgresql")
def _before_pg(element: before_hours_after, compiler: Any, **kw: Any) -> str:
    earlier, later, hours = (compiler.process(c, **kw) for c in element.clauses)
    return f"({later} < {earlier} + {hours} * INTERVAL '1 hour')"


@compiles(before_hours_after)
def _before_sqlite(element: before_hours_after, compiler: Any, **kw: Any) -> str:
    earlier, later, hours = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({later}) - julianday({earlier})) * 24.0 < {hours})"


class utc_day(FunctionElement[str]):  # lower case: reads as a SQL function
    """The UTC calendar day (YYYY-MM-DD) of a timestamp, whatever the session time zone."""

    inherit_cache = True


@compiles(utc_day, "postgresql")
def _day_pg(element: utc_day, compiler: Any, **kw: Any) -> str:
    (column,) = list(element.clauses)
    return f"to_char({compiler.process(column, **kw)} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


@compiles(utc_day)
def _day_sqlite(element: utc_day, compiler: Any, **kw: Any) -> str:
    # SQLite stores UtcDateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
    (column,) = list(element.clauses)
    return f"substr({compiler.process(column, **kw)}, 1, 10)"


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """The parts of a metric definition the aggregation needs (decoupled from the ORM)."""

    key: str
    kind: str
    event: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    friction_kind: str | None = None
    step: str | None = None

    @classmethod
    def of(cls, metric: Metric) -> MetricSpec:
        """Copy a Metric row's definition."""
        return cls(metric.key, metric.kind, metric.event, metric.numerator, metric.denominator,
                   metric.friction_kind, metric.step)


@dataclass
class Daily:
    """Additive sums keyed by (variant, UTC day)."""

    rows: dict[tuple[str, str], Sums] = field(default_factory=dict)

    def add(self, variant: str, day: str, sums: Sums) -> None:
        """Accumulate one row (a variant/day may come from several queries)."""
        target = self.rows.setdefault((variant, day), defaultdict(float))
        for name, value in sums.items():
            target[name] += value

    def totals(self, until: str | None = None) -> dict[str, Sums]:
        """Per-variant sums over every day (or the days up to ``until`` inclusive)."""
        out: dict[str, Sums] = defaultdict(lambda: defaultdict(float))
        for (variant, day), sums in self.rows.items():
            if until is None or day <= until:
                for name, value in sums.items():
                    out[variant][name] += value
        return out

    def days(self) -> list[str]:
        """Every day that has a row, in order."""
        return sorted({day for _, day in self.rows})


@dataclass
class JourneyCounts:
    """Units per variant that reached each step, and that met each friction kind there."""

    reached: dict[tuple[str, str], int] = field(default_factory=dict)
    friction: dict[tuple[str, str, str], int] = field(default_factory=dict)


@dataclass
class ExperimentAggregates:
    """Everything the report needs from the database for one experiment."""

    units: Daily
    metrics: dict[str, Daily]
    journey: JourneyCounts


# -- query building -------------------------------------------------------------------------


def _units(experiment_id: int) -> Any:
    """First exposures of the experiment that count in the analysis (no override units)."""
    return (select(Exposure.id, Exposure.unit_id, Exposure.variant_key, Exposure.exposed_at)
            .where(Exposure.experiment_id == experiment_id, Exposure.is_override == false())
            .subquery("x"))


def _window(x: Any, hours: float, *, with_pre: bool) -> ColumnElement[bool]:
    """Events of the unit inside its analysis window (and its pre-exposure window for CUPED)."""
    same_unit = Event.unit_id == x.c.unit_id
    post = and_(Event.occurred_at >= x.c.exposed_at,
                before_hours_after(x.c.exposed_at, Event.occurred_at, literal(hours, Float())))
    if not with_pre:
        return and_(same_unit, post)
    pre = and_(Event.occurred_at < x.c.exposed_at,
               before_hours_after(Event.occurred_at, x.c.exposed_at, literal(hours, Float())))
    return and_(same_unit, or_(post, pre))


def match_condition(metric: MetricSpec) -> ColumnElement[bool]:
    """Which events feed a metric."""
    if metric.kind == "friction":
        conditions = [Event.type == "friction"]
        if metric.friction_kind:
            conditions.append(Event.friction_kind == metric.friction_kind)
        if metric.step:
            conditions.append(Event.step == metric.step)
        return and_(*conditions)
    if metric.kind == "ratio":
        return Event.name.in_([metric.numerator, metric.denominator])
    return Event.name == metric.event


def _unit_columns(metric: MetricSpec, index: int, post: Any, cuped: bool) -> list[Any]:
    """Per-unit aggregates of one metric (post period, and pre period for CUPED)."""
    match = match_condition(metric)
    columns = []
    for period, condition in (("y", post), ("pre", ~post)):
        if period == "pre" and not (cuped and metric.kind in CUPED_KINDS):
            continue
        hit = and_(match, condition)
        if metric.kind in PROPORTION_KINDS:
            value = func.max(case((hit, 1), else_=0))
        elif metric.kind == "mean":
            value = func.sum(case((hit, func.coalesce(Event.value, 0.0)), else_=0.0))
        elif metric.kind == "count":
            value = func.sum(case((hit, 1), else_=0))
        elif metric.kind == "ratio":
            for part, name in (("num", metric.numerator), ("den", metric.denominator)):
                part_hit = and_(Event.name == name, condition)
                columns.append(func.sum(case((part_hit, func.coalesce(Event.value, 1.0)),
                                             else_=0.0)).label(f"m{index}_{part}"))
            continue
        else:  # time_to_convert: the first matching event; hours computed per unit outside
            value = func.min(case((hit, Event.occurred_at)))
        columns.append(value.label(f"m{index}_{period}"))
    return columns


def _moment_columns(metric: MetricSpec, index: int, unit: Any) -> list[Any]:
    """Per-variant sums of the per-unit values: n-independent sufficient statistics."""
    def col(name: str) -> Any:
        return unit.c[f"m{index}_{name}"]

    def moments(prefix: str, value: Any) -> list[Any]:
        return [func.sum(value).label(f"{prefix}_sum"),
                func.sum(value * value).label(f"{prefix}_sum_squares")]

    if metric.kind == "ratio":
        return [*moments(f"m{index}_num", col("num")), *moments(f"m{index}_den", col("den")),
                func.sum(col("num") * col("den")).label(f"m{index}_num_den_sum")]
    if metric.kind == "time_to_convert":
        hours = hours_between(unit.c.exposed_at, col("y"))
        return [func.count(col("y")).label(f"m{index}_n"), *moments(f"m{index}", hours)]
    columns = moments(f"m{index}", col("y"))
    if f"m{index}_pre" in unit.c:
        columns += [*moments(f"m{index}_pre", col("pre")),
                    func.sum(col("pre") * col("y")).label(f"m{index}_cross_sum")]
    return columns


def metrics_query(experiment_id: int, metrics: Sequence[MetricSpec], *, hours: float,
                  cuped: bool) -> Select[Any]:
    """One pass over exposures x events for every non-NPS metric, per variant and day."""
    x = _units(experiment_id)
    with_pre = cuped and any(m.kind in CUPED_KINDS for m in metrics)
    post = Event.occurred_at >= x.c.exposed_at
    matches = [match_condition(m) for m in metrics]
    join_on = and_(_window(x, hours, with_pre=with_pre), or_(*matches) if matches else false())
    unit_columns = [c for i, m in enumerate(metrics) for c in _unit_columns(m, i, post, cuped)]
    unit = (select(x.c.variant_key, x.c.exposed_at, *unit_columns)
            .select_from(x.outerjoin(Event, join_on))
            .group_by(x.c.id, x.c.variant_key, x.c.exposed_at)
            .subquery("u"))
    sums = [c for i, m in enumerate(metrics) for c in _moment_columns(m, i, unit)]
    day = utc_day(unit.c.exposed_at)
    return (select(unit.c.variant_key, day.label("day"), func.count().label("n"), *sums)
            .group_by(unit.c.variant_key, day))


def nps_query(experiment_id: int, metric: MetricSpec, *, hours: float) -> Select[Any]:
    """Respondents, promoters and detractors per variant and day, from each unit's last answer."""
    x = _units(experiment_id)
    rank = func.row_number().over(partition_by=x.c.id,
                                  order_by=(Event.occurred_at.desc(), Event.id.desc()))
    answers = (select(x.c.variant_key, x.c.exposed_at, Event.value, rank.label("rn"))
               .select_from(x.join(Event, and_(_window(x, hours, with_pre=False),
                                               match_condition(metric),
                                               Event.value.between(0, 10))))
               .subquery("a"))
    day = utc_day(answers.c.exposed_at)
    return (select(answers.c.variant_key, day.label("day"), func.count().label("n"),
                   func.sum(case((answers.c.value >= PROMOTER_MIN, 1), else_=0))
                   .label("promoters"),
                   func.sum(case((answers.c.value <= DETRACTOR_MAX, 1), else_=0))
                   .label("detractors"))
            .where(answers.c.rn == 1)
            .group_by(answers.c.variant_key, day))


def journey_query(experiment_id: int, *, hours: float) -> Select[Any]:
    """Per variant and step: units with any event there, and units per friction kind there."""
    x = _units(experiment_id)
    flags = [func.max(case((and_(Event.type == "friction", Event.friction_kind == kind), 1),
                           else_=0)).label(kind) for kind in FRICTION_KINDS]
    per_unit_step = (select(x.c.variant_key, Event.step, *flags)
                     .select_from(x.join(Event, and_(_window(x, hours, with_pre=False),
                                                     Event.step.is_not(None))))
                     .group_by(x.c.id, x.c.variant_key, Event.step)
                     .subquery("s"))
    return (select(per_unit_step.c.variant_key, per_unit_step.c.step,
                   func.count().label("reached"),
                   *[func.sum(per_unit_step.c[kind]).label(kind) for kind in FRICTION_KINDS])
            .group_by(per_unit_step.c.variant_key, per_unit_step.c.step))


# -- running the queries --------------------------------------------------------------------


def _number(value: Any) -> float:
    """SQL sums come back as int, Decimal, float or None (no rows)."""
    return 0.0 if value is None else float(value)


def aggregate_experiment(session: Session, experiment_id: int, metrics: Iterable[MetricSpec], *,
                         hours: float, cuped: bool) -> ExperimentAggregates:
    """Run the few aggregate queries an analysis needs and collect their rows."""
    specs = list(metrics)
    plain = [m for m in specs if m.kind != "nps"]
    units = Daily()
    by_metric = {m.key: Daily() for m in specs}
    for row in session.execute(metrics_query(experiment_id, plain, hours=hours, cuped=cuped)):
        data = row._mapping
        units.add(data["variant_key"], data["day"], {"n": _number(data["n"])})
        for index, metric in enumerate(plain):
            prefix = f"m{index}_"
            sums = {name.removeprefix(prefix): _number(value) for name, value in data.items()
                    if name.startswith(prefix)}
            sums.setdefault("n", _number(data["n"]))
            by_metric[metric.key].add(data["variant_key"], data["day"], sums)
    for metric in (m for m in specs if m.kind == "nps"):
        for row in session.execute(nps_query(experiment_id, metric, hours=hours)):
            data = row._mapping
            by_metric[metric.key].add(data["variant_key"], data["day"], {
                name: _number(data[name]) for name in ("n", "promoters", "detractors")})
    return ExperimentAggregates(units, by_metric, journey_counts(session, experiment_id,
                                                                 hours=hours))


def journey_counts(session: Session, experiment_id: int, *, hours: float) -> JourneyCounts:
    """Funnel and friction counts per variant and step."""
    counts = JourneyCounts()
    for row in session.execute(journey_query(experiment_id, hours=hours)):
        data = row._mapping
        counts.reached[(data["variant_key"], data["step"])] = int(_number(data["reached"]))
        for kind in FRICTION_KINDS:
            counts.friction[(data["variant_key"], data["step"], kind)] = int(_number(data[kind]))
    return counts


def to_stats(kind: str, sums: Mapping[str, float]) -> tuple[Stats, CupedStats | None]:
    """Turn one variant's sums into the ``stats`` records (and CUPED covariates, if any)."""
    n = int(sums.get("n", 0))
    get = lambda name: float(sums.get(name, 0.0))  # noqa: E731 - tiny local accessor
    cuped = None
    if "pre_sum" in sums:
        cuped = CupedStats(get("pre_sum"), get("pre_sum_squares"), get("cross_sum"))
    if kind in PROPORTION_KINDS:
        return ProportionStats(n, int(get("sum"))), cuped
    if kind == "ratio":
        return RatioStats(n, get("num_sum"), get("num_sum_squares"), get("den_sum"),
                          get("den_sum_squares"), get("num_den_sum")), None
    if kind == "nps":
        return NpsStats(n, int(get("promoters")), int(get("detractors"))), None
    return MeanStats(n, get("sum"), get("sum_squares")), cuped


__all__ = [
    "CUPED_KINDS",
    "Daily",
    "ExperimentAggregates",
    "JourneyCounts",
    "MetricSpec",
    "aggregate_experiment",
    "hours_between",
    "journey_counts",
    "match_condition",
    "metrics_query",
    "nps_query",
    "to_stats",
    "utc_day",
]
