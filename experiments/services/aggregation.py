"""Sufficient statistics computed by the database, one row per variant and exposure day.

Two queries start from the experiment's first exposures (override units excluded): one
counts units per variant and exposure day (UTC), the other is ONE pass that joins the
events of the same ``unit_id`` inside the unit's window (at or after the exposure and
less than ``conversion_window_hours`` later, and for CUPED the window of the same length
before it) for every metric, the funnel and the friction matrix. Its per-unit subquery
aggregates each unit's events — yes/no flags packed into BIGINT words, sums, first
times, last NPS answers — and the outer query sums them per variant and day. Units
without a relevant event are absent from that pass: their values are all zero. Python
only ever sees a few rows per variant and day, so memory stays flat as events grow; the
daily rows are additive, which gives the report's totals and its cumulative timeline.
On PostgreSQL the per-unit values are kept between analyses (:mod:`.rollup`), so the pass
only reads the events and units that arrived since.

Metric values per unit (SPEC §3): conversion/friction 1 when the unit has a matching event,
mean the sum of the events' values (0 when none), count the number of events, ratio the
sums of numerator and denominator values (an event without a value counts as 1, so ratios
of counts work), nps the unit's last answer (units without one are not counted),
time_to_convert the hours to the first matching event (converters only).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Integer,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.functions import FunctionElement

from experiments.models import Event, Experiment, Exposure, Metric
from experiments.schemas import FRICTION_KINDS
from experiments.schemas.events import MAX_ABS_VALUE
from experiments.services.capping import (
    CAPPED_PARTS,
    CapKey,
    cap_label,
    cap_thresholds,
    capped,
    needs_ranking,
)
from experiments.services.rollup import IdRange, Merge, rolled_up_units
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


class utc_day(FunctionElement[Any]):  # lower case: reads as a SQL function
    """The UTC calendar day of a timestamp, whatever the session time zone (a DATE on
    PostgreSQL, far cheaper per row than formatting; 'YYYY-MM-DD' text on SQLite):
    :func:`day_key` turns either into the text key."""

    inherit_cache = True


@compiles(utc_day, "postgresql")
def _day_pg(element: utc_day, compiler: Any, **kw: Any) -> str:
    (column,) = list(element.clauses)
    return f"CAST(({compiler.process(column, **kw)} AT TIME ZONE 'UTC') AS DATE)"


@compiles(utc_day)
def _day_sqlite(element: utc_day, compiler: Any, **kw: Any) -> str:
    # SQLite stores UtcDateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
    (column,) = list(element.clauses)
    return f"substr({compiler.process(column, **kw)}, 1, 10)"


def day_key(value: date | str) -> str:
    """The 'YYYY-MM-DD' key of a :class:`utc_day` value."""
    return value if isinstance(value, str) else value.isoformat()


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
    cap_type: str | None = None  # absolute | percentile (see services.capping)
    cap_value: float | None = None

    @classmethod
    def of(cls, metric: Metric) -> MetricSpec:
        """Copy a Metric row's definition."""
        cap = metric.cap or {}
        return cls(metric.key, metric.kind, metric.event, metric.numerator, metric.denominator,
                   metric.friction_kind, metric.step, cap.get("type"), cap.get("value"))


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
    # Per capped metric, the threshold used for each part (y, num, den); None: no value yet.
    caps: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # variant -> [metric events before, after the exposure] inside the window
    timing: dict[str, list[float]] = field(default_factory=dict)


# -- packed per-unit flags ------------------------------------------------------------------

WORD_BITS = 62  # flags per BIGINT word; the sign bit stays clear
FLAG_STEP_SIZE = 1 + len(FRICTION_KINDS)  # a journey step: reached, then one bit per kind


class packed_flags(FunctionElement[int]):  # lower case: reads as a SQL aggregate
    """Per-unit OR of event flags: ``bit_or`` of a packed word on PostgreSQL.

    The first argument is the packed per-event word (a few CASEs per event); the others
    are the same flags one by one (``CASE WHEN … THEN 2^bit ELSE 0 END``), equal to it by
    construction, for backends without a bitwise-or aggregate (one MAX per flag).
    """

    type = BigInteger()
    inherit_cache = True


@compiles(packed_flags, "postgresql")
def _packed_pg(element: packed_flags, compiler: Any, **kw: Any) -> str:
    word, *_ = element.clauses
    return f"bit_or({compiler.process(word, **kw)})"


@compiles(packed_flags)
def _packed_generic(element: packed_flags, compiler: Any, **kw: Any) -> str:
    _, *flags = element.clauses
    return "(" + " + ".join(f"max({compiler.process(f, **kw)})" for f in flags) + ")"


class answer_key(FunctionElement[Any]):  # lower case: reads as a SQL function
    """A sortable (time, event id, answer class) key: its max is the unit's last answer."""

    inherit_cache = True


@compiles(answer_key, "postgresql")
def _answer_key_pg(element: answer_key, compiler: Any, **kw: Any) -> str:
    at, event_id, klass = (compiler.process(c, **kw) for c in element.clauses)
    return (f"ARRAY[CAST(EXTRACT(EPOCH FROM {at}) * 1000000 AS BIGINT), "
            f"CAST({event_id} AS BIGINT), CAST({klass} AS BIGINT)]")


@compiles(answer_key)
def _answer_key_sqlite(element: answer_key, compiler: Any, **kw: Any) -> str:
    # SQLite stores UtcDateTime as fixed-width 'YYYY-MM-DD HH:MM:SS.ffffff': text order is
    # time order, and the zero-padded id breaks ties like ORDER BY occurred_at, id.
    at, event_id, klass = (compiler.process(c, **kw) for c in element.clauses)
    return f"({at} || printf('%020d', {event_id}) || {klass})"


class answer_class(FunctionElement[int]):  # lower case: reads as a SQL function
    """The answer class packed in an :class:`answer_key` (NULL when there is no answer)."""

    type = Integer()
    inherit_cache = True


@compiles(answer_class, "postgresql")
def _answer_class_pg(element: answer_class, compiler: Any, **kw: Any) -> str:
    (key,) = list(element.clauses)
    return f"({compiler.process(key, **kw)})[3]"


@compiles(answer_class)
def _answer_class_sqlite(element: answer_class, compiler: Any, **kw: Any) -> str:
    (key,) = list(element.clauses)
    return f"CAST(substr({compiler.process(key, **kw)}, -1) AS INTEGER)"


def _const(value: int) -> Any:
    """An inline integer constant (bit masks are not worth a bind parameter each)."""
    return literal_column(str(int(value)), BigInteger())


@dataclass(frozen=True)
class Flag:
    """One per-unit yes/no: some event in the unit's window meets ``condition``."""

    label: str
    condition: ColumnElement[bool]
    post: bool = True


@dataclass
class Word:
    """Flags packed into one BIGINT: single flags, then 11-bit journey step blocks."""

    singles: list[tuple[Flag, int]] = field(default_factory=list)
    steps: list[tuple[int, str, int]] = field(default_factory=list)  # (index, step, offset)
    size: int = 0

    def place(self, size: int) -> int | None:
        """The offset of ``size`` more bits, or None when they do not fit."""
        if self.size + size > WORD_BITS:
            return None
        self.size += size
        return self.size - size


@dataclass
class FlagLayout:
    """Where every per-unit flag lives: ``label -> (word, bit)``."""

    words: list[Word] = field(default_factory=lambda: [Word()])
    bits: dict[str, tuple[int, int]] = field(default_factory=dict)

    def _offset(self, size: int) -> tuple[int, int]:
        offset = self.words[-1].place(size)
        if offset is None:
            self.words.append(Word())
            offset = self.words[-1].place(size)
        assert offset is not None
        return len(self.words) - 1, offset

    def add_flags(self, *flags: Flag) -> None:
        """Adjacent bits in one word (a metric's post/pre pair shares a mask)."""
        index, offset = self._offset(len(flags))
        for position, flag in enumerate(flags):
            self.words[index].singles.append((flag, offset + position))
            self.bits[flag.label] = (index, offset + position)

    def add_step(self, number: int, step: str) -> None:
        """A journey step's block: reached, then one bit per friction kind."""
        index, offset = self._offset(FLAG_STEP_SIZE)
        self.words[index].steps.append((number, step, offset))
        self.bits[f"reach_{number}"] = (index, offset)
        for kind_number in range(len(FRICTION_KINDS)):
            self.bits[f"fric_{number}_{kind_number}"] = (index, offset + 1 + kind_number)


def _sum_terms(terms: Sequence[Any]) -> Any:
    if not terms:
        return _const(0)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _packed_word(word: Word, post: ColumnElement[bool]) -> Any:
    """The per-event value of one word, as few CASEs as possible (PostgreSQL form)."""
    post_terms, pre_terms = [], []
    if word.steps:
        reach = case({step: _const(1 << offset) for _, step, offset in word.steps},
                     value=Event.step, else_=_const(0))
        step_base = case({step: _const(1 << (offset + 1)) for _, step, offset in word.steps},
                         value=Event.step, else_=_const(0))
        kind_bit = case({kind: _const(1 << number) for number, kind in enumerate(FRICTION_KINDS)},
                        value=Event.friction_kind, else_=_const(0))
        post_terms += [cast(reach, BigInteger),
                       case((Event.type == "friction",
                             cast(step_base, BigInteger) * cast(kind_bit, BigInteger)),
                            else_=_const(0))]
    for flag, bit in word.singles:
        (post_terms if flag.post else pre_terms).append(
            case((flag.condition, _const(1 << bit)), else_=_const(0)))
    return case((post, _sum_terms(post_terms)), else_=_sum_terms(pre_terms))


def _flag_by_flag(word: Word, post: ColumnElement[bool]) -> list[Any]:
    """The same word one flag at a time (the portable form of :func:`_packed_word`)."""
    terms = [case((and_(post if flag.post else ~post, flag.condition), _const(1 << bit)),
                  else_=_const(0)) for flag, bit in word.singles]
    for _, step, offset in word.steps:
        terms.append(case((and_(post, Event.step == step), _const(1 << offset)),
                          else_=_const(0)))
        for number, kind in enumerate(FRICTION_KINDS):
            hit = and_(post, Event.type == "friction", Event.step == step,
                       Event.friction_kind == kind)
            terms.append(case((hit, _const(1 << (offset + 1 + number))), else_=_const(0)))
    return terms


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


def bounded_value() -> ColumnElement[float]:
    """An event's value, NULL when out of the ingestion bounds (SPEC §5): rows stored before
    the bounds existed must never overflow a sum (two 1e308 values do, on every backend)."""
    return case((func.abs(Event.value) <= literal(MAX_ABS_VALUE, Float()), Event.value))


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


def units_query(experiment_id: int) -> Select[Any]:
    """Exposed units per variant and day, with the first and last exposure times."""
    x = _units(experiment_id)
    day = utc_day(x.c.exposed_at)
    return (select(x.c.variant_key, day.label("day"), func.count().label("n"),
                   func.min(x.c.exposed_at).label("first"),
                   func.max(x.c.exposed_at).label("last"))
            .group_by(x.c.variant_key, day))


@dataclass(frozen=True)
class Plan:
    """What the single pass computes: metrics by position, journey steps, flag positions."""

    metrics: tuple[MetricSpec, ...]
    journey: tuple[str, ...]
    cuped: bool
    layout: FlagLayout

    @classmethod
    def of(cls, metrics: Sequence[MetricSpec], journey: Sequence[str], cuped: bool) -> Plan:
        """Lay out the flags: extra-step friction, proportion metrics, then journey steps."""
        layout = FlagLayout()
        outside = and_(Event.type == "friction", Event.step.is_not(None),
                       Event.step.not_in(list(journey)) if journey else true())
        layout.add_flags(Flag("extra_friction", outside))
        for index, metric in enumerate(metrics):
            if metric.kind in PROPORTION_KINDS:
                match = match_condition(metric)
                pair = [Flag(f"m{index}_y", match)]
                if cuped:
                    pair.append(Flag(f"m{index}_pre", match, post=False))
                layout.add_flags(*pair)
        for number, step in enumerate(journey):
            layout.add_step(number, step)
        return cls(tuple(metrics), tuple(journey), cuped, layout)


@dataclass(frozen=True)
class UnitValue:
    """One per-unit column of the single pass, and how two partial values of it combine.

    A unit's value over two disjoint sets of its events is the ``merge`` of the values
    over each set: that is what lets :mod:`experiments.services.rollup` keep per-unit
    values between analyses and fold only the events that arrived since.
    """

    label: str
    expression: Any
    merge: Merge


def _unit_values(plan: Plan, x: Any, post: ColumnElement[bool]) -> list[UnitValue]:
    """Per-unit aggregates: packed flags, then sums, first times and last NPS answers."""
    values = [UnitValue(f"w{number}", packed_flags(_packed_word(word, post),
                                                   *_flag_by_flag(word, post)), "or")
              for number, word in enumerate(plan.layout.words)]
    for index, metric in enumerate(plan.metrics):
        if metric.kind == "nps":
            answer = and_(post, match_condition(metric), Event.value.between(0, 10))
            klass = case((Event.value >= PROMOTER_MIN, 2), (Event.value <= DETRACTOR_MAX, 1),
                         else_=0)
            values.append(UnitValue(f"m{index}_answer", func.max(
                case((answer, answer_key(Event.occurred_at, Event.id, klass)))), "max"))
        elif metric.kind not in PROPORTION_KINDS:
            values += _unit_columns(metric, index, post, plan.cuped)
    return [*values, *_timing_values(plan, post)]


def _timing_values(plan: Plan, post: ColumnElement[bool]) -> list[UnitValue]:
    """Per unit, its metric events inside the window after and before the exposure: the
    ``events_before_exposure`` alert (clock or integration trouble) in the same pass."""
    matches = [match_condition(metric) for metric in plan.metrics]
    any_metric = or_(*matches) if matches else false()
    return [UnitValue(label, func.sum(case((and_(period, any_metric), 1), else_=0)), "sum")
            for label, period in (("events_post", post), ("events_pre", ~post))]


def _unit_columns(metric: MetricSpec, index: int, post: Any, cuped: bool) -> list[UnitValue]:
    """Per-unit sums of a mean/count/ratio metric, or its first event (time to convert)."""
    match = match_condition(metric)
    values = []
    for period, condition in (("y", post), ("pre", ~post)):
        if period == "pre" and not (cuped and metric.kind in CUPED_KINDS):
            continue
        hit = and_(match, condition)
        if metric.kind == "mean":
            values.append(UnitValue(f"m{index}_{period}", func.sum(
                case((hit, func.coalesce(bounded_value(), 0.0)), else_=0.0)), "sum"))
        elif metric.kind == "count":
            values.append(UnitValue(f"m{index}_{period}", func.sum(case((hit, 1), else_=0)),
                                    "sum"))
        elif metric.kind == "ratio":
            for part, name in (("num", metric.numerator), ("den", metric.denominator)):
                part_hit = and_(Event.name == name, condition)
                values.append(UnitValue(f"m{index}_{part}", func.sum(
                    case((part_hit, func.coalesce(bounded_value(), 1.0)), else_=0.0)), "sum"))
        else:  # time_to_convert: the first matching event; hours computed per unit outside
            values.append(UnitValue(f"m{index}_{period}",
                                    func.min(case((hit, Event.occurred_at))), "min"))
    return values


def _count_flag(unit: Any, plan: Plan, *labels: str) -> Any:
    """Units with every one of the flags set (the flags share a word)."""
    (word,) = {plan.layout.bits[label][0] for label in labels}
    mask = _const(sum(1 << plan.layout.bits[label][1] for label in labels))
    return func.count().filter(unit.c[f"w{word}"].op("&")(mask) == mask)


def _moment_columns(plan: Plan, metric: MetricSpec, index: int, unit: Any,
                    caps: Mapping[CapKey, Any]) -> list[Any]:
    """Per-variant sums of the per-unit values (capped where the metric says so):
    n-independent sufficient statistics."""
    def col(name: str) -> Any:
        threshold = caps.get((index, "y" if name == "pre" else name))
        return capped(unit.c[f"m{index}_{name}"], threshold)

    def moments(prefix: str, value: Any) -> list[Any]:
        return [func.sum(value).label(f"{prefix}_sum"),
                func.sum(value * value).label(f"{prefix}_sum_squares")]

    if metric.kind in PROPORTION_KINDS:  # 0/1 values: sum of squares = sum (added later)
        columns = [_count_flag(unit, plan, f"m{index}_y").label(f"m{index}_sum")]
        if plan.cuped:
            columns += [_count_flag(unit, plan, f"m{index}_pre").label(f"m{index}_pre_sum"),
                        _count_flag(unit, plan, f"m{index}_y", f"m{index}_pre")
                        .label(f"m{index}_cross_sum")]
        return columns
    if metric.kind == "nps":
        klass = answer_class(col("answer"))
        return [func.count(col("answer")).label(f"m{index}_n"),
                func.count().filter(klass == 2).label(f"m{index}_promoters"),
                func.count().filter(klass == 1).label(f"m{index}_detractors")]
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


def _journey_columns(plan: Plan, unit: Any) -> list[Any]:
    """Units per journey step reached and per step × friction kind met there."""
    columns = [_count_flag(unit, plan, "extra_friction").label("extra_friction")]
    for number in range(len(plan.journey)):
        columns.append(_count_flag(unit, plan, f"reach_{number}").label(f"reach_{number}"))
        columns += [_count_flag(unit, plan, f"fric_{number}_{kind}").label(f"fric_{number}_{kind}")
                    for kind in range(len(FRICTION_KINDS))]
    return columns


def _in_range(column: Any, ids: IdRange | None) -> list[ColumnElement[bool]]:
    if ids is None:
        return []
    after, through = ids
    conditions = [column > after] if after else []
    return conditions if through is None else [*conditions, column <= through]


@dataclass(frozen=True)
class UnitPass:
    """Each unit's values over its events: ONE pass over exposures ⋈ events.

    Built once per analysis (the value expressions are the costly part to build), then
    queried whole or restricted to id ranges of events and exposures, for the rollup.
    A query gives one row per unit that has a relevant event (``exposure_id``, variant,
    exposure time, then :attr:`values` in order); units without one are absent: their
    values are all zero and :func:`units_query` counts them. ``events_between`` bounds the
    event scan (exposure range ± the window).
    """

    plan: Plan
    hours: float
    events_between: tuple[datetime, datetime] | None
    x: Any
    values: tuple[UnitValue, ...]

    @classmethod
    def of(cls, experiment_id: int, plan: Plan, *, hours: float,
           events_between: tuple[datetime, datetime] | None = None) -> UnitPass:
        """The pass of one experiment's first exposures (override units excluded)."""
        x = _units(experiment_id)
        values = _unit_values(plan, x, Event.occurred_at >= x.c.exposed_at)
        return cls(plan, hours, events_between, x, tuple(values))

    def query(self, event_ids: IdRange | None = None,
              exposure_ids: IdRange | None = None) -> Select[Any]:
        """The pass over the events and exposures in those id ranges (default: all)."""
        x, plan = self.x, self.plan
        relevant = or_(Event.step.is_not(None), *[match_condition(m) for m in plan.metrics])
        join_on = and_(_window(x, self.hours, with_pre=True), relevant,
                       *_in_range(Event.id, event_ids), *_in_range(x.c.id, exposure_ids))
        if self.events_between is not None:
            join_on = and_(join_on, Event.occurred_at >= self.events_between[0],
                           Event.occurred_at < self.events_between[1])
        columns = [value.expression.label(value.label) for value in self.values]
        return (select(x.c.id.label("exposure_id"), x.c.variant_key, x.c.exposed_at, *columns)
                .select_from(x.join(Event, join_on))
                .group_by(x.c.id, x.c.variant_key, x.c.exposed_at))


def variant_day_query(plan: Plan, unit: Any, *, units: int = 0) -> Select[Any]:
    """Per variant and UTC exposure day, the sums of the per-unit values of ``unit`` (capped
    among ``units`` exposed units), and each cap's threshold."""
    caps = cap_thresholds(plan.metrics, unit, units)
    sums = [c for i, m in enumerate(plan.metrics)
            for c in _moment_columns(plan, m, i, unit, caps)]
    thresholds = [threshold.label(cap_label(*key)) for key, threshold in caps.items()]
    day = utc_day(unit.c.exposed_at)
    timing = [func.sum(unit.c[label]).label(label) for label in ("events_post", "events_pre")]
    return (select(unit.c.variant_key, day.label("day"), *sums, *_journey_columns(plan, unit),
                   *thresholds, *timing)
            .group_by(unit.c.variant_key, day))


def friction_outside_query(experiment_id: int, journey: Sequence[str], *,
                           hours: float) -> Select[Any]:
    """Per variant and step outside the journey: units per friction kind met there."""
    x = _units(experiment_id)
    flags = [func.max(case((Event.friction_kind == kind, 1), else_=0)).label(kind)
             for kind in FRICTION_KINDS]
    outside = and_(Event.type == "friction", Event.step.is_not(None),
                   Event.step.not_in(list(journey)) if journey else true())
    per_unit_step = (select(x.c.variant_key, Event.step, *flags)
                     .select_from(x.join(Event, and_(_window(x, hours, with_pre=False),
                                                     outside)))
                     .group_by(x.c.id, x.c.variant_key, Event.step)
                     .subquery("s"))
    return (select(per_unit_step.c.variant_key, per_unit_step.c.step,
                   *[func.sum(per_unit_step.c[kind]).label(kind) for kind in FRICTION_KINDS])
            .group_by(per_unit_step.c.variant_key, per_unit_step.c.step))


# -- running the queries --------------------------------------------------------------------


def _number(value: Any) -> float:
    """SQL sums come back as int, Decimal, float or None (no rows)."""
    return 0.0 if value is None else float(value)


def _tune_session(session: Session) -> None:
    """PostgreSQL: no JIT for this transaction (compiling the wide query costs more than it
    saves); work_mem stays small on purpose (batched hashes are cache friendlier)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL jit = off"))


def _metric_sums(plan: Plan, index: int, data: Mapping[str, Any]) -> Sums:
    """One metric's sums from an analysis row (without ``n`` unless the metric has its own)."""
    prefix = f"m{index}_"
    sums = {name.removeprefix(prefix): _number(value) for name, value in data.items()
            if name.startswith(prefix)}
    if plan.metrics[index].kind in PROPORTION_KINDS:  # 0/1 values
        sums["sum_squares"] = sums["sum"]
        if "pre_sum" in sums:
            sums["pre_sum_squares"] = sums["pre_sum"]
    return sums


def aggregate_experiment(session: Session, experiment_id: int, metrics: Iterable[MetricSpec], *,
                         hours: float, cuped: bool, journey: Sequence[str] | None = None,
                         rollup: bool = True) -> ExperimentAggregates:
    """Units per variant/day, then one aggregate pass for everything else (plus a rare
    extra query when friction was reported at steps outside the journey).

    On PostgreSQL the pass reads the per-unit rollup and only the events it has not folded
    (:mod:`experiments.services.rollup`); ``rollup=False`` computes it all from the events.
    """
    specs = list(metrics)
    if journey is None:
        journey = session.get(Experiment, experiment_id).journey if experiment_id else []
    plan = Plan.of(specs, list(journey or []), cuped)
    units, by_metric, counts = Daily(), {m.key: Daily() for m in specs}, JourneyCounts()
    first, last, exposed = None, None, 0
    zeros = _zero_sums(plan)
    for row in session.execute(units_query(experiment_id)):
        day = day_key(row.day)
        units.add(row.variant_key, day, {"n": _number(row.n)})
        exposed += int(row.n)
        for metric in specs:
            if metric.kind != "nps":
                base = {} if metric.kind == "time_to_convert" else {"n": _number(row.n)}
                by_metric[metric.key].add(row.variant_key, day, {**zeros[metric.key], **base})
        first = row.first if first is None else min(first, row.first)
        last = row.last if last is None else max(last, row.last)
    if first is None:
        return ExperimentAggregates(units, by_metric, counts)
    _tune_session(session)
    margin = timedelta(hours=hours) + EVENT_RANGE_SLACK
    events_between = (first - margin, last + margin)
    query = _unit_source(session, experiment_id, plan, hours=hours,
                         events_between=events_between, rollup=rollup, units=exposed)
    outside, timing_by_variant = 0.0, {}  # variant -> [events before, after exposure]
    caps = _configured_caps(specs)
    for row in session.execute(query):
        data = row._mapping
        _read_caps(caps, specs, data)
        for index, metric in enumerate(specs):
            sums = _metric_sums(plan, index, data)
            if metric.kind != "nps" or sums["n"] > 0:
                by_metric[metric.key].add(data["variant_key"], day_key(data["day"]), sums)
        _add_journey(counts, plan, data)
        timing = timing_by_variant.setdefault(data["variant_key"], [0.0, 0.0])
        timing[0] += _number(data["events_pre"])
        timing[1] += _number(data["events_post"])
        outside += _number(data["extra_friction"])
    if outside:
        _add_friction_outside(session, counts, experiment_id, plan.journey, hours=hours)
    return ExperimentAggregates(units, by_metric, counts, caps=caps, timing=timing_by_variant)


EVENT_RANGE_SLACK = timedelta(minutes=1)  # the exact window test is in the join; this only prunes
PASS_VERSION = 2  # bump when the per-unit values change meaning: stored rollups are rebuilt


def _unit_source(session: Session, experiment_id: int, plan: Plan, *, hours: float,
                 events_between: tuple[datetime, datetime],
                 rollup: bool, units: int) -> Select[Any]:
    """The variant/day query over the per-unit values: rolled up where possible."""
    unit_pass = UnitPass.of(experiment_id, plan, hours=hours, events_between=events_between)
    unit = None
    if rollup:
        values = [(value.label, value.merge) for value in unit_pass.values]
        unit = rolled_up_units(session, experiment_id, plan_key(plan, hours), values,
                               unit_pass.query)
    if unit is None:
        unit = unit_pass.query().subquery("u")
    if needs_ranking(plan.metrics):  # read twice (sums, percentiles): computed once
        unit = select(*unit.c).cte("unit_values")
    return variant_day_query(plan, unit, units=units)


def _configured_caps(specs: Sequence[MetricSpec]) -> dict[str, dict[str, float | None]]:
    """The capped metrics' thresholds before the query: absolute ones are known."""
    return {m.key: {part: m.cap_value if m.cap_type == "absolute" else None
                    for part in CAPPED_PARTS[m.kind]}
            for m in specs if m.cap_type is not None and m.kind in CAPPED_PARTS}


def _read_caps(caps: dict[str, dict[str, float | None]], specs: Sequence[MetricSpec],
               data: Mapping[str, Any]) -> None:
    """The thresholds the query used (the same on every row)."""
    for index, metric in enumerate(specs):
        for part in caps.get(metric.key, {}):
            value = data[cap_label(index, part)]
            caps[metric.key][part] = None if value is None else float(value)


def plan_key(plan: Plan, hours: float) -> str:
    """A fingerprint of everything the per-unit values depend on."""
    # Caps apply after the per-unit values: changing one keeps the stored rollup.
    metrics = tuple(replace(m, cap_type=None, cap_value=None) for m in plan.metrics)
    described = repr((PASS_VERSION, metrics, plan.journey, plan.cuped, float(hours)))
    return hashlib.sha256(described.encode()).hexdigest()


def _sum_names(metric: MetricSpec, cuped: bool) -> list[str]:
    """The names of a (non-NPS) metric's sums, as the analysis rows carry them."""
    if metric.kind == "ratio":
        return ["num_sum", "num_sum_squares", "den_sum", "den_sum_squares", "num_den_sum"]
    if metric.kind == "time_to_convert":
        return ["n", "sum", "sum_squares"]
    names = ["sum", "sum_squares"]
    if cuped and metric.kind in CUPED_KINDS:
        names += ["pre_sum", "pre_sum_squares", "cross_sum"]
    return names


def _zero_sums(plan: Plan) -> dict[str, Sums]:
    """Every metric's sums at zero, so each exposure day has all of them (as before)."""
    return {m.key: dict.fromkeys(_sum_names(m, plan.cuped), 0.0)
            for m in plan.metrics if m.kind != "nps"}


def _add_journey(counts: JourneyCounts, plan: Plan, data: Mapping[str, Any]) -> None:
    """Accumulate one variant/day row's funnel and friction counts."""
    variant = data["variant_key"]
    for number, step in enumerate(plan.journey):
        key = (variant, step)
        counts.reached[key] = counts.reached.get(key, 0) + int(_number(data[f"reach_{number}"]))
        for kind_number, kind in enumerate(FRICTION_KINDS):
            cell = (variant, step, kind)
            counts.friction[cell] = counts.friction.get(cell, 0) + int(
                _number(data[f"fric_{number}_{kind_number}"]))


def _add_friction_outside(session: Session, counts: JourneyCounts, experiment_id: int,
                          journey: Sequence[str], *, hours: float) -> None:
    """Friction reported at steps outside the journey (still listed in the friction matrix)."""
    for row in session.execute(friction_outside_query(experiment_id, journey, hours=hours)):
        data = row._mapping
        for kind in FRICTION_KINDS:
            counts.friction[(data["variant_key"], data["step"], kind)] = int(_number(data[kind]))


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
    "Plan",
    "UnitPass",
    "aggregate_experiment",
    "friction_outside_query",
    "hours_between",
    "match_condition",
    "to_stats",
    "units_query",
    "utc_day",
    "variant_day_query",
]
