"""Stage 2: each unit's values inside each metric's window — ONE pass over exposures ⋈ events.

The pass joins the events of the same ``unit_id`` inside the unit's window (at or after the
exposure and less than ``conversion_window_hours`` later, and for CUPED the window of the
same length before it; ``hours=None`` has no window end: every event from the exposure
on) for every metric, the funnel and the friction matrix, and groups by unit: yes/no
flags packed into BIGINT words, sums, first times, last NPS answers. Units without a
relevant event are absent: their values are all zero (stage 3 counts them).
The join is on the unit only and the window test is in ``WHERE`` (ClickHouse refuses
inequalities in ``JOIN … ON``; the other engines plan both forms alike).

Metric values per unit (SPEC §3): conversion/friction 1 when the unit has a matching event,
mean the sum of the events' values (0 when none), count the number of events, ratio the
sums of numerator and denominator values (an event without a value counts as 1, so ratios
of counts work), nps the unit's last answer (units without one are not counted; answers
at the same instant: the higher event id wins, a row without id — an ``events_sql`` source
in a warehouse — counting as id 0, then the higher class; nothing else reads event ids),
time_to_convert the hours to the first matching event (converters only). Caps apply to
these values in stage 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import BigInteger, Float, and_, case, cast, false, func, literal, or_, select, true
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.util import ClauseAdapter

from experiments.models import Metric
from experiments.schemas import FRICTION_KINDS
from experiments.schemas.events import MAX_ABS_VALUE
from experiments.services.pipeline.dialects import (
    answer_key,
    before_hours_after,
    const,
    count_if,
    group_value,
    has_bits,
    packed_flags,
    unit_bucket,
    utc_instant,
    within_hours,
)
from experiments.services.pipeline.exposures import first_exposures
from experiments.services.pipeline.rollup import IdRange, Merge
from experiments.services.pipeline.sources import PipelineSources

PROPORTION_KINDS = frozenset({"conversion", "friction"})
CUPED_KINDS = frozenset({"conversion", "friction", "mean", "count"})
PROMOTER_MIN, DETRACTOR_MAX = 9, 6
# Which side of the per-unit pass is first narrowed to the units of the other's id range.
Narrowed = Literal["events", "exposures"]
EVENT_RANGE_SLACK = timedelta(minutes=1)  # the exact window test is in the query; this prunes
# At most this many statements for a pass split by unit (unit_buckets): each one scans every
# event again, so more would grow its time with the square of the experiment's size (the
# buckets with its units, each scan with its events); beyond, a bucket holds more units.
MOST_BUCKETS = 4


def events_range(first: datetime, last: datetime, hours: float | None
                 ) -> tuple[datetime, datetime | None]:
    """The event times a pass over units exposed from ``first`` to ``last`` can read: their
    windows (and pre-exposure windows) with a little slack; no end without a window end."""
    if hours is None:  # no window end: events from the first exposure on
        return first - EVENT_RANGE_SLACK, None
    margin = timedelta(hours=hours) + EVENT_RANGE_SLACK
    return first - margin, last + margin


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


# -- packed per-unit flags ------------------------------------------------------------------

WORD_BITS = 62  # flags per BIGINT word; the sign bit stays clear
FLAG_STEP_SIZE = 1 + len(FRICTION_KINDS)  # a journey step: reached, then one bit per kind


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
        return const(0)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _packed_word(word: Word, post: ColumnElement[bool], ev: Any) -> Any:
    """The per-event value of one word, as few CASEs as possible (PostgreSQL form)."""
    post_terms, pre_terms = [], []
    if word.steps:
        # A step's block is its reached bit, then its friction kinds' bits: the event's
        # bits are the reached bit times (1 + 2 × its kind's bit) — one CASE on the step.
        reach = case({step: const(1 << offset) for _, step, offset in word.steps},
                     value=ev.c.step, else_=const(0))
        kind_bit = case({kind: const(1 << number) for number, kind in enumerate(FRICTION_KINDS)},
                        value=ev.c.friction_kind, else_=const(0))
        post_terms.append(cast(reach, BigInteger) * (
            const(1) + case((ev.c.type == "friction", const(2) * cast(kind_bit, BigInteger)),
                            else_=const(0))))
    for flag, bit in word.singles:
        (post_terms if flag.post else pre_terms).append(
            case((flag.condition, const(1 << bit)), else_=const(0)))
    return case((post, _sum_terms(post_terms)), else_=_sum_terms(pre_terms))


def _flag_by_flag(word: Word, post: ColumnElement[bool], ev: Any) -> list[Any]:
    """The same word one flag at a time (the portable form of :func:`_packed_word`)."""
    terms = [case((and_(post if flag.post else ~post, flag.condition), const(1 << bit)),
                  else_=const(0)) for flag, bit in word.singles]
    for _, step, offset in word.steps:
        terms.append(case((and_(post, ev.c.step == step), const(1 << offset)),
                          else_=const(0)))
        for number, kind in enumerate(FRICTION_KINDS):
            hit = and_(post, ev.c.type == "friction", ev.c.step == step,
                       ev.c.friction_kind == kind)
            terms.append(case((hit, const(1 << (offset + 1 + number))), else_=const(0)))
    return terms


def window(x: Any, ev: Any, hours: float | None, *, with_pre: bool) -> ColumnElement[bool]:
    """Events inside the unit's analysis window (and its pre-exposure window for CUPED);
    the caller joins on the unit. ``hours=None``: no window end, every event from the
    exposure on (a holdout's months), and no pre-exposure window."""
    if hours is None:
        return ev.c.occurred_at >= x.c.exposed_at
    if with_pre:
        return within_hours(x.c.exposed_at, ev.c.occurred_at, literal(hours, Float()))
    return and_(ev.c.occurred_at >= x.c.exposed_at,
                before_hours_after(x.c.exposed_at, ev.c.occurred_at, literal(hours, Float())))


def bounded_value(ev: Any) -> ColumnElement[float]:
    """An event's value, NULL when out of the ingestion bounds (SPEC §5): rows stored before
    the bounds existed must never overflow a sum (two 1e308 values do, on every backend)."""
    return case((func.abs(ev.c.value) <= literal(MAX_ABS_VALUE, Float()), ev.c.value))


def match_condition(metric: MetricSpec, ev: Any) -> ColumnElement[bool]:
    """Which events feed a metric."""
    if metric.kind == "friction":
        conditions = [ev.c.type == "friction"]
        if metric.friction_kind:
            conditions.append(ev.c.friction_kind == metric.friction_kind)
        if metric.step:
            conditions.append(ev.c.step == metric.step)
        return and_(*conditions)
    if metric.kind == "ratio":
        return ev.c.name.in_([metric.numerator, metric.denominator])
    return ev.c.name == metric.event


def count_flag(unit: Any, plan: Plan, *labels: str) -> Any:
    """Units with every one of the flags set (the flags share a word)."""
    (word,) = {plan.layout.bits[label][0] for label in labels}
    mask = const(sum(1 << plan.layout.bits[label][1] for label in labels))
    return count_if(has_bits(unit.c[f"w{word}"], mask))


@dataclass(frozen=True)
class Plan:
    """What the single pass computes: metrics by position, journey steps, flag positions."""

    metrics: tuple[MetricSpec, ...]
    journey: tuple[str, ...]
    cuped: bool
    layout: FlagLayout
    events: Any  # the events relation the flag conditions read

    @classmethod
    def of(cls, metrics: Sequence[MetricSpec], journey: Sequence[str], cuped: bool,
           events: Any) -> Plan:
        """Lay out the flags: extra-step friction, proportion metrics, then journey steps."""
        ev, layout = events, FlagLayout()
        outside = and_(ev.c.type == "friction", ev.c.step.is_not(None),
                       ev.c.step.not_in(list(journey)) if journey else true())
        layout.add_flags(Flag("extra_friction", outside))
        for index, metric in enumerate(metrics):
            if metric.kind in PROPORTION_KINDS:
                match = match_condition(metric, ev)
                pair = [Flag(f"m{index}_y", match)]
                if cuped:
                    pair.append(Flag(f"m{index}_pre", match, post=False))
                layout.add_flags(*pair)
        for number, step in enumerate(journey):
            layout.add_step(number, step)
        return cls(tuple(metrics), tuple(journey), cuped, layout, events)


@dataclass(frozen=True)
class UnitValue:
    """One per-unit column of the single pass, and how two partial values of it combine.

    A unit's value over two disjoint sets of its events is the ``merge`` of the values
    over each set: that is what lets :mod:`experiments.services.pipeline.rollup` keep per-unit
    values between analyses and fold only the events that arrived since.
    """

    label: str
    expression: Any
    merge: Merge


def _unit_values(plan: Plan, x: Any, post: ColumnElement[bool]) -> list[UnitValue]:
    """Per-unit aggregates: packed flags, then sums, first times and last NPS answers."""
    ev = plan.events
    values = [UnitValue(f"w{number}", packed_flags(_packed_word(word, post, ev),
                                                   *_flag_by_flag(word, post, ev)), "or")
              for number, word in enumerate(plan.layout.words)]
    for index, metric in enumerate(plan.metrics):
        if metric.kind == "nps":
            answer = and_(post, match_condition(metric, ev), ev.c.value.between(0, 10))
            klass = case((ev.c.value >= PROMOTER_MIN, 2), (ev.c.value <= DETRACTOR_MAX, 1),
                         else_=0)
            values.append(UnitValue(f"m{index}_answer", func.max(
                case((answer, answer_key(ev.c.occurred_at, func.coalesce(ev.c.id, 0), klass)))),
                "max"))
        elif metric.kind not in PROPORTION_KINDS:
            values += _unit_columns(metric, index, post, plan.cuped, ev)
    return [*values, *_timing_values(plan, post)]


def _timing_values(plan: Plan, post: ColumnElement[bool]) -> list[UnitValue]:
    """Per unit, its metric events inside the window after and before the exposure: the
    ``events_before_exposure`` alert (clock or integration trouble) in the same pass."""
    matches = [match_condition(metric, plan.events) for metric in plan.metrics]
    any_metric = or_(*matches) if matches else false()
    return [UnitValue(label, func.sum(case((and_(period, any_metric), 1), else_=0)), "sum")
            for label, period in (("events_post", post), ("events_pre", ~post))]


def _unit_columns(metric: MetricSpec, index: int, post: Any, cuped: bool,
                  ev: Any) -> list[UnitValue]:
    """Per-unit sums of a mean/count/ratio metric, or its first event (time to convert)."""
    match = match_condition(metric, ev)
    values = []
    for period, condition in (("y", post), ("pre", ~post)):
        if period == "pre" and not (cuped and metric.kind in CUPED_KINDS):
            continue
        hit = and_(match, condition)
        if metric.kind == "mean":
            values.append(UnitValue(f"m{index}_{period}", func.sum(
                case((hit, func.coalesce(bounded_value(ev), 0.0)), else_=0.0)), "sum"))
        elif metric.kind == "count":
            values.append(UnitValue(f"m{index}_{period}", func.sum(case((hit, 1), else_=0)),
                                    "sum"))
        elif metric.kind == "ratio":
            for part, name in (("num", metric.numerator), ("den", metric.denominator)):
                part_hit = and_(ev.c.name == name, condition)
                values.append(UnitValue(f"m{index}_{part}", func.sum(
                    case((part_hit, func.coalesce(bounded_value(ev), 1.0)), else_=0.0)), "sum"))
        else:  # time_to_convert: the first matching event; hours computed per unit outside
            values.append(UnitValue(f"m{index}_{period}",
                                    func.min(case((hit, ev.c.occurred_at))), "min"))
    return values


def _in_range(column: Any, ids: IdRange | None) -> list[ColumnElement[bool]]:
    if ids is None:
        return []
    after, through = ids
    conditions = [column > after] if after else []
    return conditions if through is None else [*conditions, column <= through]


def unit_buckets(units: int, per_pass: int | None) -> list[tuple[int, int] | None]:
    """The buckets of units a pass over all ``units`` is split into, each (number, of), at
    most ``per_pass`` units in each (:attr:`~.sources.PipelineSources.units_per_pass`) and
    at most :data:`MOST_BUCKETS` of them; ``[None]``: one statement over them all."""
    if per_pass is None or units <= per_pass:
        return [None]
    of = min(-(-units // per_pass), MOST_BUCKETS)
    return [(number, of) for number in range(of)]


@dataclass(frozen=True)
class UnitPass:
    """Each unit's values over its events: ONE pass over exposures ⋈ events.

    Built once per analysis (the value expressions are the costly part to build), then
    queried whole or restricted to id ranges of events and exposures, for the rollup.
    A query gives one row per unit that has a relevant event (``exposure_id``, variant,
    exposure time, the grouping columns, then :attr:`values` in order); units without one
    are absent: their values are all zero and stage 3's ``units_query`` counts them.
    ``events_between`` bounds the event scan (exposure range ± the window; no upper bound
    without a window end, ``hours=None``).
    """

    plan: Plan
    hours: float | None
    events_between: tuple[datetime, datetime | None] | None
    x: Any
    keys: tuple[str, ...]  # exposure_id, variant_key, exposed_at, then the grouping columns
    values: tuple[UnitValue, ...]
    join_back: bool = False  # the keys joined back after the grouping (PipelineSources)
    units_per_pass: int | None = None  # a pass over every unit split so (PipelineSources)

    @classmethod
    def of(cls, sources: PipelineSources, plan: Plan, *, hours: float | None,
           events_between: tuple[datetime, datetime | None] | None = None) -> UnitPass:
        """The pass over the sources' first exposures (stage 1)."""
        x = first_exposures(sources)
        values = _unit_values(plan, x, plan.events.c.occurred_at >= x.c.exposed_at)
        keys = ("exposure_id", "variant_key", "exposed_at", *sources.grouping)
        return cls(plan, hours, events_between, x, keys, tuple(values),
                   join_back=sources.join_back and sources.unique_units,
                   units_per_pass=sources.units_per_pass)

    def exposed_from(self, first: datetime) -> UnitPass:
        """The same pass, its event scan starting where units exposed at ``first`` or later
        can have events: for the units exposed since a fold, whose earlier events would
        otherwise be looked for among every event (a bound on the event time, which
        DuckDB's zone maps and ClickHouse's PREWHERE read before the unit ids)."""
        after, _ = events_range(first, first, self.hours)
        if self.events_between is None:
            return replace(self, events_between=(after, None))
        current, before = self.events_between
        return replace(self, events_between=(max(current, after), before))

    def query(self, event_ids: IdRange | None = None,
              exposure_ids: IdRange | None = None, *, narrowed: Narrowed | None = None,
              bucket: tuple[int, int] | None = None) -> Select[Any]:
        """The pass over the events and exposures in those id ranges (default: all).
        ``narrowed``: one side first narrowed to the units of the other's id range (a
        semi-join on ``unit_id``) — ``"events"`` to the units of a few recent exposures
        among many events (ClickHouse reads every column of a join's left side before it
        probes), ``"exposures"`` to the units of a few recent events among many units,
        inside the join's right side: its hash table is built from the exposures, and
        DuckDB applies a semi-join written in ``WHERE`` only after the join (at 1 M units,
        30,000 recent units: 0.38 s → 0.27 s for the scheduled statement).
        ``bucket``: (number, of) — only the units in that bucket of their ids' hash
        (:class:`~.dialects.unit_bucket`), narrowed inside the join's right side: the events
        of the other units find no exposure there. Not tested on the events too: an
        ``events_sql`` unit id of another text type (a UUID) joins the exposures' text by a
        cast, and hashes differently (the test saved chDB 6 % of a split first report)."""
        x, ev = self.x, self.plan.events
        values = [value.expression for value in self.values]
        narrowing = []
        if narrowed == "exposures":
            units = select(ev.c.unit_id).where(*_in_range(ev.c.id, event_ids))
            narrowing.append(x.c.unit_id.in_(units.scalar_subquery()))
        if bucket is not None:
            number, of = bucket
            narrowing.append(unit_bucket(x.c.unit_id, const(of)) == const(number))
        if narrowing:
            x = select(*x.c).where(*narrowing).subquery("narrowed_exposures")
            values = [ClauseAdapter(x).traverse(value) for value in values]
        columns = [value.label(unit_value.label)
                   for value, unit_value in zip(values, self.values, strict=True)]
        # Grouped by the exposure id alone (one integer to hash, stage 1 gives one row per
        # unit and ids are unique: its tie-break relies on them), the unit's other columns
        # carried by group_value() or joined back — only where the pass reads every unit:
        # the join back hashes every exposure, a waste for the few units of a rollup's live
        # part. The events on the left, so that ClickHouse builds its join's hash table
        # from the exposures (its right side), not from the events.
        join_back = (self.join_back and narrowed is None
                     and not any(ids and ids[0] for ids in (event_ids, exposure_ids)))
        carried = [] if join_back else [group_value(x.c[key]).label(key)
                                        for key in self.keys[1:]]
        grouped = (select(x.c.exposure_id, *carried, *columns)
                   .select_from(ev.join(x, ev.c.unit_id == x.c.unit_id))
                   .where(*self._conditions(x, event_ids, exposure_ids, narrowed))
                   .group_by(x.c.exposure_id))
        if not join_back:
            return grouped
        rows, again = grouped.subquery("unit_rows"), x.alias("unit_exposures")
        return (select(*(again.c[key] for key in self.keys),
                       *(rows.c[value.label] for value in self.values))
                .select_from(rows.join(again, again.c.exposure_id == rows.c.exposure_id)))

    def _conditions(self, x: Any, event_ids: IdRange | None, exposure_ids: IdRange | None,
                    narrowed: Narrowed | None) -> list[ColumnElement[bool]]:
        """The pass's ``WHERE``: the window, the relevant events, the id ranges, the
        narrowed events' units and the bounds of the event scan."""
        ev = self.plan.events
        relevant = or_(ev.c.step.is_not(None),
                       *[match_condition(m, ev) for m in self.plan.metrics])
        where = [window(x, ev, self.hours, with_pre=True), relevant,
                 *_in_range(ev.c.id, event_ids), *_in_range(x.c.exposure_id, exposure_ids)]
        if narrowed == "events":
            units = select(x.c.unit_id).where(*_in_range(x.c.exposure_id, exposure_ids))
            where.append(ev.c.unit_id.in_(units.correlate(None).scalar_subquery()))
        if self.events_between is not None:
            # Instants, not bound datetimes: ClickHouse parsed their text in its own zone.
            after, before = self.events_between
            where.append(ev.c.occurred_at >= utc_instant(after, ev.c.occurred_at.type))
            if before is not None:
                where.append(ev.c.occurred_at < utc_instant(before, ev.c.occurred_at.type))
        return where


__all__ = ["CUPED_KINDS", "EVENT_RANGE_SLACK", "MOST_BUCKETS", "PROPORTION_KINDS", "MetricSpec",
           "Plan", "UnitPass", "UnitValue", "bounded_value", "count_flag", "events_range",
           "match_condition", "unit_buckets", "window"]
