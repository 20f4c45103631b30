"""Running the stages on a connection of any engine → :class:`ExperimentAggregates`.

Stage 3's unit counts first (they also bound the event scan: exposure range ± the
window), then ONE pass for everything else (plus a rare extra query when friction was
reported at steps outside the journey). Python only ever sees a few rows per variant and
day, so memory stays flat as events grow; the daily rows are additive, which gives the
report's totals and its cumulative timeline.

Where the sources keep the per-unit values between analyses (their ``unit_store``:
Parcours's PostgreSQL, :mod:`experiments.services.pipeline.rollup`; a warehouse over the events
Parcours copied there, :mod:`experiments.services.warehouses.rollup`), the pass only
reads the events and units that arrived since. Elsewhere (SQLite, ``events_sql`` sources,
identity clusters) it is computed in full. Quantile metrics and the funnel's time on step
are not additive: they come from :mod:`.quantiles` (order statistics read from the events,
never rolled up).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from experiments.models import Experiment
from experiments.services.capping import CAPPED_PARTS, cap_label, needs_ranking
from experiments.services.pipeline.dialects import (
    day_key,
    hashed_grouping,
    kept_values_settings,
    prepare,
)
from experiments.services.pipeline.exposures import first_exposures, multi_variant_units
from experiments.services.pipeline.journey import (
    JourneyCounts,
    add_friction_outside,
    add_journey,
    friction_outside_query,
    number,
)
from experiments.services.pipeline.sources import PipelineSources, own_sources, rebased
from experiments.services.pipeline.unit_values import (
    PROPORTION_KINDS,
    MetricSpec,
    Plan,
    UnitPass,
    events_range,
    unit_buckets,
)
from experiments.services.pipeline.variant_stats import (
    GroupingSet,
    Sums,
    sum_names,
    units_query,
    variant_day_query,
)
from stats.quantile import QuantileStats

PASS_VERSION = 2  # bump when the per-unit values change meaning: stored rollups are rebuilt


@dataclass
class Daily:
    """Additive sums keyed by (variant, UTC day)."""

    rows: dict[tuple[str, str], Sums] = field(default_factory=dict)

    def add(self, variant: str, day: str, sums: Sums) -> None:
        """Accumulate one row (a variant/day may come from several queries)."""
        target = self.rows.setdefault((variant, day), defaultdict(float))
        for name, value in sums.items():
            target[name] += value

    def totals(self, until: str | None = None, since: str = "") -> dict[str, Sums]:
        """Per-variant sums over every day (or the days from ``since`` up to ``until``,
        both inclusive)."""
        out: dict[str, Sums] = defaultdict(lambda: defaultdict(float))
        for (variant, day), sums in self.rows.items():
            if since <= day and (until is None or day <= until):
                for name, value in sums.items():
                    out[variant][name] += value
        return out

    def days(self) -> list[str]:
        """Every day that has a row, in order."""
        return sorted({day for _, day in self.rows})


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
    # Quantile metric key -> variant -> its order statistics (SPEC §11)
    quantiles: dict[str, dict[str, QuantileStats]] = field(default_factory=dict)
    # (variant, step) -> {"p50", "p90": seconds on the step, "n": units that left it}
    time_on_step: dict[tuple[str, str], dict[str, Any]] | None = None  # None: not asked for
    # Units left out of the whole analysis: exposed to several variants (stage 1).
    multi_variant_units: int = 0


def _metric_columns(plan: Plan, keys: Sequence[str]) -> list[list[tuple[str, int]]]:
    """Per metric, its sums' names and positions in the analysis rows (resolved once per
    query, not per row)."""
    return [[(name.removeprefix(f"m{index}_"), position) for position, name in enumerate(keys)
             if name.startswith(f"m{index}_")] for index in range(len(plan.metrics))]


def _metric_sums(plan: Plan, index: int, row: Sequence[Any],
                 columns: Sequence[tuple[str, int]]) -> Sums:
    """One metric's sums from an analysis row (without ``n`` unless the metric has its own)."""
    sums = {name: number(row[position]) for name, position in columns}
    if plan.metrics[index].kind in PROPORTION_KINDS:  # 0/1 values
        sums["sum_squares"] = sums["sum"]
        if "pre_sum" in sums:
            sums["pre_sum_squares"] = sums["pre_sum"]
    return sums


Group = tuple[Any, ...]  # the values of the sources' grouping columns, in order
ALL_DAYS = ""  # the day key of a grouping set without days (its rows are already totals)


def aggregate_experiment(connection: Session | Connection, experiment_id: int | None,
                         metrics: Iterable[MetricSpec], *, hours: float | None, cuped: bool,
                         journey: Sequence[str] | None = None, rollup: bool = True,
                         sources: PipelineSources | None = None) -> ExperimentAggregates:
    """Every sufficient statistic of one experiment, computed by the database.

    ``sources`` default to Parcours's own tables for ``experiment_id``; any engine the
    connection speaks (SQLite, PostgreSQL, DuckDB, ClickHouse) runs the same queries.
    ``journey`` defaults to the experiment's (read from Parcours's database through a
    Session). On PostgreSQL over its own tables the pass reads the per-unit rollup and only
    the events it has not folded; ``rollup=False`` computes it all from the events.
    ``hours=None``: no window end (every event from the exposure on, no pre-exposure window).
    Sources with grouping columns are summed over their groups.
    """
    grouped = aggregate_grouped(connection, experiment_id, metrics, hours=hours, cuped=cuped,
                                journey=journey, rollup=rollup, sources=sources)
    return grouped[()] if set(grouped) == {()} else combine(grouped.values())


def aggregate_grouped(connection: Session | Connection, experiment_id: int | None,
                      metrics: Iterable[MetricSpec], *, hours: float | None, cuped: bool,
                      journey: Sequence[str] | None = None, rollup: bool = True,
                      sources: PipelineSources | None = None
                      ) -> dict[Group, ExperimentAggregates]:
    """:func:`aggregate_experiment` per group of the sources' grouping columns (see
    :meth:`PipelineSources.grouped_by`) and UTC day, in the same round of queries (one pass
    whatever the number of groups or grouping columns: rows per crossed group × variant ×
    day — use :func:`aggregate_dimensions` for several independent breakdowns). Keys: the
    groups' values, in grouping order (``()`` without grouping). Percentile caps are
    computed once over every exposed unit of the experiment, so a group's values are capped
    exactly as in the whole report; every group carries those thresholds and the
    experiment's ``multi_variant_units``.
    """
    if sources is None:
        assert experiment_id is not None, "own sources need an experiment id"
        sources = own_sources(experiment_id)
    (groups,) = _aggregate_sets(connection, experiment_id, list(metrics), hours=hours,
                                cuped=cuped, journey=journey, rollup=rollup, sources=sources,
                                sets=[(sources.grouping, True)])
    return groups


def aggregate_dimensions(connection: Session | Connection, experiment_id: int | None,
                         metrics: Iterable[MetricSpec], *, hours: float | None, cuped: bool,
                         sources: PipelineSources, journey: Sequence[str] | None = None,
                         rollup: bool = True
                         ) -> tuple[ExperimentAggregates, list[dict[Any, ExperimentAggregates]]]:
    """The whole report's aggregates (per UTC day) and, per grouping column of ``sources``
    (a dimension), its levels' aggregates (totals: their single day is ``ALL_DAYS``), in
    ONE round of queries: the per-unit values are computed once and summed per grouping set
    (variant × day; variant × each dimension's level), so the rows are the days plus the
    sum of the dimensions' levels, per variant — not their cross product."""
    specs = list(metrics)
    sets: list[GroupingSet] = [((), True), *(((name,), False) for name in sources.grouping)]
    whole, *dimensions = _aggregate_sets(connection, experiment_id, specs, hours=hours,
                                         cuped=cuped, journey=journey, rollup=rollup,
                                         sources=sources, sets=sets)
    return whole[()], [{key[0]: a for key, a in levels.items()} for levels in dimensions]


def _aggregate_sets(connection: Session | Connection, experiment_id: int | None,
                    specs: list[MetricSpec], *, hours: float | None, cuped: bool,
                    journey: Sequence[str] | None, rollup: bool, sources: PipelineSources,
                    sets: Sequence[GroupingSet]) -> list[dict[Group, ExperimentAggregates]]:
    """Per grouping set, the aggregates per group of its columns (see :func:`grouped_rows`);
    a set without the grouping columns and with days: ``{(): whole report}``."""
    if journey is None:
        assert isinstance(connection, Session), "pass the journey on a plain connection"
        journey = connection.get(Experiment, experiment_id).journey if experiment_id else []
    plan = Plan.of(specs, list(journey or []), cuped, sources.events)
    results: list[dict[Group, ExperimentAggregates]] = [{} for _ in sets]

    def group_of(number: int, data: Mapping[str, Any]) -> ExperimentAggregates:
        groups = results[number]
        key = tuple(data[name] for name in sets[number][0])
        if key not in groups:
            groups[key] = ExperimentAggregates(Daily(), {m.key: Daily() for m in specs},
                                               JourneyCounts())
        return groups[key]

    def day_of(number: int, data: Mapping[str, Any]) -> str:
        return day_key(data["day"]) if sets[number][1] else ALL_DAYS

    first, last, exposed = None, None, 0
    zeros = _zero_sums(plan)
    prepare(connection)
    with hashed_grouping(connection, when=len(sets) > 1 and sources.hashed_groups):
        unit_rows = connection.execute(units_query(sources, sets)).all()
    for row in unit_rows:
        data = row._mapping
        number_ = int(data["grouping_set"]) if len(sets) > 1 else 0
        aggregates, day = group_of(number_, data), day_of(number_, data)
        aggregates.units.add(row.variant_key, day, {"n": number(row.n)})
        if number_ == 0:  # every set counts every unit once
            exposed += int(row.n)
        for metric in specs:
            if metric.kind != "nps":
                base = {} if metric.kind == "time_to_convert" else {"n": number(row.n)}
                aggregates.metrics[metric.key].add(row.variant_key, day,
                                                   {**zeros[metric.key], **base})
        first = row.first if first is None else min(first, row.first)
        last = row.last if last is None else max(last, row.last)
    if first is None:
        if not sets[0][0]:  # no grouping columns: the (empty) whole report
            results[0][()] = ExperimentAggregates(Daily(), {m.key: Daily() for m in specs},
                                                  JourneyCounts())
        return results
    queries, kept = _unit_source(connection, sources, plan, hours=hours,
                                 events_between=events_range(first, last, hours),
                                 rollup=rollup, units=exposed, sets=sets)
    outside = 0.0
    caps = _configured_caps(specs)
    names, rows = [], []
    with hashed_grouping(connection, when=len(sets) > 1 and sources.hashed_groups), \
            kept_values_settings(connection, when=kept):  # read before they are restored
        for query in queries:  # each bucket's rows add to the others' (Daily.add)
            result = connection.execute(query)
            names = list(result.keys())
            rows.extend(result.all())
    columns = _metric_columns(plan, names)
    for row in rows:
        data = row._mapping
        number_ = int(data["grouping_set"]) if len(sets) > 1 else 0
        aggregates, day = group_of(number_, data), day_of(number_, data)
        _read_caps(caps, specs, data)
        for index, metric in enumerate(specs):
            sums = _metric_sums(plan, index, row, columns[index])
            if metric.kind != "nps" or sums["n"] > 0:
                aggregates.metrics[metric.key].add(data["variant_key"], day, sums)
        add_journey(aggregates.journey, plan, data)
        timing = aggregates.timing.setdefault(data["variant_key"], [0.0, 0.0])
        timing[0] += number(data["events_pre"])
        timing[1] += number(data["events_post"])
        if number_ == 0:  # every set counts every unit once
            outside += number(data["extra_friction"])
    if outside:
        for row in connection.execute(friction_outside_query(sources, plan.journey,
                                                             hours=hours)):
            for number_ in range(len(sets)):  # per crossed group: added into each set's
                add_friction_outside(group_of(number_, row._mapping).journey, [row])
    multi = 0 if sources.unique_units else int(
        connection.scalar(multi_variant_units(sources)) or 0)
    for groups in results:
        for aggregates in groups.values():
            aggregates.caps = {key: dict(parts) for key, parts in caps.items()}
            aggregates.multi_variant_units = multi
    return results


def combine(parts: Iterable[ExperimentAggregates]) -> ExperimentAggregates:
    """The sum of several groups' aggregates (they share caps and ``multi_variant_units``)."""
    parts = list(parts)
    total = ExperimentAggregates(Daily(), {}, JourneyCounts())
    for part in parts:
        for (variant, day), sums in part.units.rows.items():
            total.units.add(variant, day, sums)
        for key, daily in part.metrics.items():
            target = total.metrics.setdefault(key, Daily())
            for (variant, day), sums in daily.rows.items():
                target.add(variant, day, sums)
        for counts, added in ((total.journey.reached, part.journey.reached),
                              (total.journey.friction, part.journey.friction)):
            for cell, value in added.items():
                counts[cell] = counts.get(cell, 0) + value  # type: ignore[index]
        for variant, (before, after) in part.timing.items():
            timing = total.timing.setdefault(variant, [0.0, 0.0])
            timing[0] += before
            timing[1] += after
    if parts:
        total.caps = {key: dict(values) for key, values in parts[0].caps.items()}
        total.multi_variant_units = parts[0].multi_variant_units
    return total


def marginal(grouped: Mapping[Group, ExperimentAggregates], position: int = 0
             ) -> dict[Any, ExperimentAggregates]:
    """Per level of one grouping column (by position), the sum over the others: one
    dimension's breakdown out of a pass grouped by several."""
    levels: dict[Any, list[ExperimentAggregates]] = defaultdict(list)
    for key, aggregates in grouped.items():
        levels[key[position]].append(aggregates)
    return {level: combine(parts) for level, parts in levels.items()}


def _unit_source(connection: Session | Connection, sources: PipelineSources, plan: Plan, *,
                 hours: float | None, events_between: tuple[datetime, datetime | None],
                 rollup: bool, units: int, sets: Sequence[GroupingSet]
                 ) -> tuple[list[Any], bool]:
    """The variant/day queries over the per-unit values (their rows add up), and whether
    the values are kept between analyses: where the sources have a
    :attr:`~PipelineSources.unit_store` (it holds ungrouped per-unit values). A store whose
    rows carry the variant and exposure time holds exactly the units analysed now; the
    grouping columns are computed from the exposure columns it carries where it can
    (:func:`rebased`). Otherwise the exposure columns it lacks are joined from the first
    exposures — which also leaves out the units no longer exposed: erased, overridden.
    Without a store the pass groups by the grouping columns itself (joining them afterwards
    to a deduplicated, window-ranked, exposures relation made PostgreSQL pick a nested
    loop), one query per bucket of units (:func:`~.unit_values.unit_buckets`)."""
    if rollup and sources.unit_store is not None:
        ungrouped = UnitPass.of(replace(sources, grouping=()), plan, hours=hours,
                                events_between=events_between)
        unit = sources.unit_store(connection, plan_key(plan, hours), ungrouped)
        if unit is not None:
            return [_variant_day(plan, _grouped_units(unit, sources), units, sets)], True
    full = UnitPass.of(sources, plan, hours=hours, events_between=events_between)
    # A percentile cap ranks every unit's value at once: one statement.
    buckets = [None] if needs_ranking(plan.metrics) else unit_buckets(units,
                                                                       full.units_per_pass)
    return [_variant_day(plan, full.query(bucket=bucket).subquery("u"), units, sets)
            for bucket in buckets], False


def _variant_day(plan: Plan, unit: Any, units: int, sets: Sequence[GroupingSet]) -> Any:
    """:func:`variant_day_query` over ``unit``, computed once where percentile caps read
    it several times."""
    if needs_ranking(plan.metrics):
        unit = select(*unit.c).cte("unit_values")
    return variant_day_query(plan, unit, units=units, sets=sets)


def _grouped_units(unit: Any, sources: PipelineSources) -> Any:
    """The kept per-unit values with the variant, exposure time and grouping columns
    (see :func:`_unit_source`)."""
    missing = [name for name in ("variant_key", "exposed_at", *sources.grouping)
               if name not in unit.c]
    if not missing:
        return unit
    if "variant_key" in unit.c and "exposed_at" in unit.c:
        computed = {name: rebased(sources.exposures.c[name], unit) for name in missing}
        if all(value is not None for value in computed.values()):
            return (select(*unit.c, *(value.label(name) for name, value in computed.items()))
                    .subquery("grouped_u"))
    x = first_exposures(sources)
    return (select(*unit.c, *(x.c[name] for name in missing))
            .select_from(unit.join(x, x.c.exposure_id == unit.c.exposure_id))
            .subquery("grouped_u"))


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


def plan_key(plan: Plan, hours: float | None) -> str:
    """A fingerprint of everything the per-unit values depend on."""
    # Caps apply after the per-unit values: changing one keeps the stored rollup.
    metrics = tuple(replace(m, cap_type=None, cap_value=None) for m in plan.metrics)
    described = repr((PASS_VERSION, metrics, plan.journey, plan.cuped,
                      None if hours is None else float(hours)))
    return hashlib.sha256(described.encode()).hexdigest()


def _zero_sums(plan: Plan) -> dict[str, Sums]:
    """Every metric's sums at zero, so each exposure day has all of them (as before)."""
    return {m.key: dict.fromkeys(sum_names(m, plan.cuped), 0.0)
            for m in plan.metrics if m.kind != "nps"}


__all__ = ["ALL_DAYS", "PASS_VERSION", "Daily", "ExperimentAggregates", "Group",
           "aggregate_dimensions", "aggregate_experiment", "aggregate_grouped", "combine",
           "marginal", "plan_key"]
