"""Running the stages on a connection of any engine → :class:`ExperimentAggregates`.

Stage 3's unit counts first (they also bound the event scan: exposure range ± the
window), then ONE pass for everything else (plus a rare extra query when friction was
reported at steps outside the journey). Python only ever sees a few rows per variant and
day, so memory stays flat as events grow; the daily rows are additive, which gives the
report's totals and its cumulative timeline.

On PostgreSQL, over Parcours's own tables, the per-unit values are kept between analyses
(:mod:`experiments.services.rollup`), so the pass only reads the events and units that
arrived since. Everywhere else (SQLite, DuckDB, ClickHouse, warehouse sources) the pass
is computed in full. Quantile metrics and the funnel's time on step are not additive: they
come from :mod:`.quantiles` (order statistics read from the events, never rolled up).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from experiments.models import Experiment
from experiments.services.capping import CAPPED_PARTS, cap_label, needs_ranking
from experiments.services.pipeline.dialects import day_key, prepare
from experiments.services.pipeline.journey import (
    JourneyCounts,
    add_friction_outside,
    add_journey,
    friction_outside_query,
    number,
)
from experiments.services.pipeline.quantiles import QuantileSpec, quantile_stats, time_on_step
from experiments.services.pipeline.sources import PipelineSources, own_sources
from experiments.services.pipeline.unit_values import (
    PROPORTION_KINDS,
    MetricSpec,
    Plan,
    UnitPass,
)
from experiments.services.pipeline.variant_stats import (
    Sums,
    sum_names,
    units_query,
    variant_day_query,
)
from experiments.services.rollup import rolled_up_units
from stats.quantile import QuantileStats

EVENT_RANGE_SLACK = timedelta(minutes=1)  # the exact window test is in the query; this prunes
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
    time_on_step: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


def _metric_sums(plan: Plan, index: int, data: Mapping[str, Any]) -> Sums:
    """One metric's sums from an analysis row (without ``n`` unless the metric has its own)."""
    prefix = f"m{index}_"
    sums = {name.removeprefix(prefix): number(value) for name, value in data.items()
            if name.startswith(prefix)}
    if plan.metrics[index].kind in PROPORTION_KINDS:  # 0/1 values
        sums["sum_squares"] = sums["sum"]
        if "pre_sum" in sums:
            sums["pre_sum_squares"] = sums["pre_sum"]
    return sums


def aggregate_experiment(connection: Session | Connection, experiment_id: int | None,
                         metrics: Iterable[MetricSpec], *, hours: float, cuped: bool,
                         journey: Sequence[str] | None = None, rollup: bool = True,
                         sources: PipelineSources | None = None,
                         quantiles: Sequence[QuantileSpec] = (),
                         alpha: float = 0.05) -> ExperimentAggregates:
    """Every sufficient statistic of one experiment, computed by the database.

    ``sources`` default to Parcours's own tables for ``experiment_id``; any engine the
    connection speaks (SQLite, PostgreSQL, DuckDB, ClickHouse) runs the same queries.
    ``journey`` defaults to the experiment's (read from Parcours's database through a
    Session). On PostgreSQL over its own tables the pass reads the per-unit rollup and only
    the events it has not folded; ``rollup=False`` computes it all from the events.
    ``quantiles``: quantile metrics, whose order statistics (ranks for ``alpha``) are read
    from the events after the pass, like the journey's time on step.
    """
    if sources is None:
        assert experiment_id is not None, "own sources need an experiment id"
        sources = own_sources(experiment_id)
    if sources.grouping:
        raise ValueError("aggregate_experiment keys rows by (variant, day): run the stage "
                         "queries directly for grouping columns")
    specs = list(metrics)
    if journey is None:
        assert isinstance(connection, Session), "pass the journey on a plain connection"
        journey = connection.get(Experiment, experiment_id).journey if experiment_id else []
    plan = Plan.of(specs, list(journey or []), cuped, sources.events)
    units, by_metric, counts = Daily(), {m.key: Daily() for m in specs}, JourneyCounts()
    first, last, exposed = None, None, 0
    zeros = _zero_sums(plan)
    prepare(connection)
    for row in connection.execute(units_query(sources)):
        day = day_key(row.day)
        units.add(row.variant_key, day, {"n": number(row.n)})
        exposed += int(row.n)
        for metric in specs:
            if metric.kind != "nps":
                base = {} if metric.kind == "time_to_convert" else {"n": number(row.n)}
                by_metric[metric.key].add(row.variant_key, day, {**zeros[metric.key], **base})
        first = row.first if first is None else min(first, row.first)
        last = row.last if last is None else max(last, row.last)
    if first is None:
        return ExperimentAggregates(units, by_metric, counts)
    margin = timedelta(hours=hours) + EVENT_RANGE_SLACK
    events_between = (first - margin, last + margin)
    query = _unit_source(connection, sources, plan, hours=hours,
                         events_between=events_between, rollup=rollup, units=exposed)
    outside, timing_by_variant = 0.0, {}  # variant -> [events before, after exposure]
    caps = _configured_caps(specs)
    for row in connection.execute(query):
        data = row._mapping
        _read_caps(caps, specs, data)
        for index, metric in enumerate(specs):
            sums = _metric_sums(plan, index, data)
            if metric.kind != "nps" or sums["n"] > 0:
                by_metric[metric.key].add(data["variant_key"], day_key(data["day"]), sums)
        add_journey(counts, plan, data)
        timing = timing_by_variant.setdefault(data["variant_key"], [0.0, 0.0])
        timing[0] += number(data["events_pre"])
        timing[1] += number(data["events_post"])
        outside += number(data["extra_friction"])
    if outside:
        add_friction_outside(counts, connection.execute(
            friction_outside_query(sources, plan.journey, hours=hours)))
    return ExperimentAggregates(
        units, by_metric, counts, caps=caps, timing=timing_by_variant,
        quantiles={spec.key: {cell[0]: stats for cell, stats in quantile_stats(
            connection, sources, spec, journey=plan.journey, hours=hours, alpha=alpha).items()}
            for spec in quantiles},
        time_on_step=time_on_step(connection, sources, plan.journey, hours=hours))


def _unit_source(connection: Session | Connection, sources: PipelineSources, plan: Plan, *,
                 hours: float, events_between: tuple[datetime, datetime],
                 rollup: bool, units: int) -> Select[Any]:
    """The variant/day query over the per-unit values: rolled up where possible."""
    unit_pass = UnitPass.of(sources, plan, hours=hours, events_between=events_between)
    unit = None
    if rollup and sources.own_experiment is not None and isinstance(connection, Session):
        values = [(value.label, value.merge) for value in unit_pass.values]
        unit = rolled_up_units(connection, sources.own_experiment, plan_key(plan, hours),
                               values, unit_pass.query)
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


def _zero_sums(plan: Plan) -> dict[str, Sums]:
    """Every metric's sums at zero, so each exposure day has all of them (as before)."""
    return {m.key: dict.fromkeys(sum_names(m, plan.cuped), 0.0)
            for m in plan.metrics if m.kind != "nps"}


__all__ = ["PASS_VERSION", "Daily", "ExperimentAggregates", "aggregate_experiment", "plan_key"]
