"""Quantile metrics (SPEC §11): exact order statistics computed by the database.

Quantiles are not sums, so they stay out of the single pass and its rollup: they read the
events directly, in one or two queries per metric, and Python only ever sees a few rows
per partition (a partition is a variant, times any grouping columns — segment levels —
times the step for :func:`time_on_step`).

1. :func:`quantile_values`: one row per value — ``unit`` (the exposure id), the partition
   columns and ``value``. Sources:

   * ``event_value``: every matching event's ``value`` inside the unit's analysis window
     (at or after the exposure and less than ``conversion_window_hours`` later, as every
     other metric; events without a value, or out of the ingestion bounds, are left out);
   * ``unit_value``: per unit, the sum of its matching events' values in the window (an
     event without a value adds 0, as for mean metrics), over units with at least one;
   * ``step_duration``: per unit and step, the seconds from its first ``step`` event of the
     step in the window to its first ``step`` event of a later journey step at or after
     it, also in the window; units that never leave the step are left out.

2. :func:`order_statistics_query`, ONE statement over the values: each value's rank
   (``ROW_NUMBER() OVER (PARTITION BY … ORDER BY value)``) beside its partition's n
   (``count(*) OVER (PARTITION BY …)``), keeping only the rows near the ranks
   ``stats.quantile.needed_ranks`` asks for (a few per partition); Python then reads the
   exact ranks from those rows.
3. ``event_value`` only: :func:`cluster_sums_query`, once the point estimates are known,
   sums per partition Sᵢ (the unit's events at or below the estimate) and Nᵢ (its events)
   into the ``RatioStats`` moments of the clustering correction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass
from typing import Any

from sqlalchemy import Float, and_, case, func, literal, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from experiments.services.pipeline.dialects import seconds_between
from experiments.services.pipeline.exposures import first_exposures
from experiments.services.pipeline.journey import number
from experiments.services.pipeline.run import ExperimentAggregates
from experiments.services.pipeline.sources import PipelineSources
from experiments.services.pipeline.unit_values import MetricSpec, bounded_value, window
from stats.quantile import QuantileStats, needed_ranks, outer_spread
from stats.records import RatioStats

QUANTILE_SOURCES = ("event_value", "unit_value", "step_duration")
TIME_ON_STEP_LEVELS = {"p50": 0.5, "p90": 0.9}
Partition = tuple[Any, ...]  # (variant_key, *grouping values[, step])


ORDER_STATISTIC_KINDS = frozenset({"quantile"})  # metric kinds that are not sums


@dataclass(frozen=True)
class QuantileSpec:
    """What the order statistics of one quantile metric depend on (decoupled from the ORM)."""

    key: str
    source: str  # event_value | unit_value | step_duration
    quantile: float
    event: str | None = None
    step: str | None = None

    @classmethod
    def of(cls, metric: Any) -> QuantileSpec:
        """Copy a quantile Metric row's definition."""
        return cls(metric.key, metric.source, metric.quantile, metric.event, metric.step)


def _partition_columns(x: Any, grouping: Sequence[str]) -> list[Any]:
    return [x.c.variant_key, *(x.c[name] for name in grouping)]


def _event_values(sources: PipelineSources, event: str | None, grouping: Sequence[str], *,
                  hours: float) -> Select[Any]:
    """One row per matching event in the window: its unit, partition and value."""
    x, ev = first_exposures(sources), sources.events
    value = bounded_value(ev)
    return (select(x.c.exposure_id.label("unit"), *_partition_columns(x, grouping),
                   value.label("value"))
            .select_from(ev.join(x, ev.c.unit_id == x.c.unit_id))
            .where(window(x, ev, hours, with_pre=False), ev.c.name == event,
                   value.is_not(None)))


def _unit_values(sources: PipelineSources, event: str | None, grouping: Sequence[str], *,
                 hours: float) -> Select[Any]:
    """One row per unit with a matching event in the window: the sum of their values."""
    x, ev = first_exposures(sources), sources.events
    keys = _partition_columns(x, grouping)
    return (select(x.c.exposure_id.label("unit"), *keys,
                   func.sum(func.coalesce(bounded_value(ev), 0.0)).label("value"))
            .select_from(ev.join(x, ev.c.unit_id == x.c.unit_id))
            .where(window(x, ev, hours, with_pre=False), ev.c.name == event)
            .group_by(x.c.exposure_id, *keys))


def step_durations(sources: PipelineSources, journey: Sequence[str],
                   steps: Collection[str], grouping: Sequence[str] = (), *,
                   hours: float) -> Select[Any]:
    """Per unit and step of ``steps``: seconds from its first step event there to its first
    step event of a later journey step at or after it (both in the window); a ``step``
    column follows the partition columns.

    ONE ordered scan of the units' step events, never a second read of the events: each
    event carries, per journey position k of ``steps``, the earliest later event (itself
    included) of a step after k — a suffix minimum over the unit's events in time order
    (ties: lower positions first, so a later step at the same instant counts) — and the
    first event of each step reads the column of its own position. Only the events of the
    steps from the first of ``steps`` on are read (an earlier step is neither left nor
    entered after it), and a step without a later one in the journey is never left: when
    every step of ``steps`` is the last, the query reads nothing (an always-false ``IN ()``).
    """
    x, ev = first_exposures(sources), sources.events
    position = {step: number for number, step in enumerate(journey)}
    leaving = [step for step in steps if position.get(step, len(journey)) < len(journey) - 1]
    numbers = sorted({position[step] for step in leaving})
    read = [step for step in position if numbers and position[step] >= numbers[0]]
    keys = _partition_columns(x, grouping)
    at = case(position, value=ev.c.step)
    in_time = {"partition_by": x.c.exposure_id, "order_by": (ev.c.occurred_at, at),
               "rows": (0, None)}
    leaves = [func.min(case((at > number, ev.c.occurred_at))).over(**in_time)
              .label(f"after_{number}") for number in numbers]
    first = func.row_number().over(partition_by=(x.c.exposure_id, ev.c.step),
                                   order_by=(ev.c.occurred_at, ev.c.id)).label("nth")
    ordered = (select(x.c.exposure_id, *keys, ev.c.step.label("step"),
                      at.label("position"), ev.c.occurred_at.label("entered"), first, *leaves)
               .select_from(ev.join(x, ev.c.unit_id == x.c.unit_id))
               .where(window(x, ev, hours, with_pre=False), ev.c.type == "step",
                      ev.c.step.in_(read))
               .subquery("ordered_steps"))
    # Without a step to leave no row passes ``IN ()``; ``left`` is then any time column.
    left = case(*((ordered.c.position == number, ordered.c[f"after_{number}"])
                  for number in numbers)) if numbers else ordered.c.entered
    ordered_keys = [ordered.c.variant_key, *(ordered.c[name] for name in grouping)]
    return (select(ordered.c.exposure_id.label("unit"), *ordered_keys, ordered.c.step,
                   seconds_between(ordered.c.entered, left).label("value"))
            .where(ordered.c.nth == 1, left.is_not(None), ordered.c.step.in_(leaving)))


def quantile_values(sources: PipelineSources, spec: QuantileSpec, journey: Sequence[str],
                    grouping: Sequence[str] = (), *, hours: float) -> Any:
    """Stage 1: the metric's values, one row each (``unit``, partition columns, ``value``)."""
    if spec.source == "event_value":
        query = _event_values(sources, spec.event, grouping, hours=hours)
    elif spec.source == "unit_value":
        query = _unit_values(sources, spec.event, grouping, hours=hours)
    elif spec.source == "step_duration":
        query = step_durations(sources, journey, [spec.step or ""], grouping, hours=hours)
    else:
        raise ValueError(f"unknown quantile source {spec.source!r}")
    return query.subquery("quantile_values")


def order_statistics_query(values: Any, partition: Sequence[str], levels: Sequence[float],
                           *, alpha: float) -> Select[Any]:
    """Stage 2: ``n``, and the values whose ranks are near those the estimator needs for
    each quantile level (point, lower, upper), per partition — in one statement.

    The point rank ⌈n·ν⌉ is within 1 of n·ν, the outer interval's ranks within 1 of
    n·ν ∓ D with D² = n·z²·ν(1−ν) (``stats.quantile.outer_spread``). A row is kept when
    d = |rank − n·ν| is at most 2, or lies in [D − 2, D + 2] — compared as squares, so no
    engine needs ``sqrt`` — or is the first or last (ranks are clamped to 1..n): at most
    about 15 rows per partition and level, exact ranks picked in Python.
    """
    keys = [values.c[name] for name in partition]
    ranked = select(*keys, values.c.value,
                    func.row_number().over(partition_by=keys, order_by=values.c.value)
                    .label("value_rank"),
                    func.count().over(partition_by=keys).label("n")).subquery("ranked_values")
    rank, n = ranked.c.value_rank, ranked.c.n
    near = [rank == 1, rank == n]
    for level in levels:
        d = func.abs(rank - n * literal(level, Float()))
        spread = n * literal(outer_spread(quantile=level, alpha=alpha), Float())
        near += [d <= 2, and_((d - 2) * (d - 2) <= spread, spread <= (d + 2) * (d + 2))]
    return (select(*(ranked.c[name] for name in partition), n, rank, ranked.c.value)
            .where(or_(*near)))


def cluster_sums_query(values: Any, partition: Sequence[str],
                       estimates: Mapping[Partition, float]) -> Select[Any]:
    """Stage 3 (event level): per partition, the moments of (Sᵢ, Nᵢ) over its units."""
    keys = [values.c[name] for name in partition]
    threshold = case(*((and_(*(key == level for key, level in zip(keys, cell, strict=True))),
                        literal(estimate, Float())) for cell, estimate in estimates.items()))
    per_unit = (select(*keys, func.sum(case((values.c.value <= threshold, 1), else_=0))
                       .label("s"), func.count().label("events"))
                .group_by(values.c.unit, *keys).subquery("unit_clusters"))
    s, events = per_unit.c.s, per_unit.c.events
    cells = [per_unit.c[name] for name in partition]
    return (select(*cells, func.count().label("n"), func.sum(s).label("num_sum"),
                   func.sum(s * s).label("num_sum_squares"), func.sum(events).label("den_sum"),
                   func.sum(events * events).label("den_sum_squares"),
                   func.sum(s * events).label("num_den_sum"))
            .group_by(*cells))


def _cell(row: Any, partition: Sequence[str]) -> Partition:
    return tuple(row._mapping[name] for name in partition)


def order_statistics(connection: Session | Connection, values: Any,
                     partition: Sequence[str], levels: Sequence[float], *,
                     alpha: float) -> dict[Partition, tuple[int, dict[int, float]]]:
    """Per partition: n and the values at the ranks every quantile level in ``levels``
    needs (point, lower, upper) — one statement, a few rows per partition."""
    counts: dict[Partition, int] = {}
    near: dict[Partition, dict[int, float]] = defaultdict(dict)
    for row in connection.execute(order_statistics_query(values, partition, levels,
                                                         alpha=alpha)):
        cell = _cell(row, partition)
        counts[cell] = int(row.n)
        near[cell][int(row.value_rank)] = float(row.value)
    out = {}
    for cell, n in counts.items():
        wanted = {rank for level in levels
                  for rank in astuple(needed_ranks(n, quantile=level, alpha=alpha))}
        out[cell] = (n, {rank: near[cell][rank] for rank in wanted})
    return out


def _stats(n: int, values: Mapping[int, float], *, quantile: float, alpha: float,
           clusters: RatioStats | None = None) -> QuantileStats:
    ranks = needed_ranks(n, quantile=quantile, alpha=alpha)
    if ranks is None:
        return QuantileStats(0, None, None, None, clusters)
    return QuantileStats(n, values[ranks.point], values[ranks.lower], values[ranks.upper],
                         clusters)


def quantile_stats(connection: Session | Connection, sources: PipelineSources,
                   spec: QuantileSpec, *, journey: Sequence[str], hours: float,
                   alpha: float = 0.05,
                   grouping: Sequence[str] = ()) -> dict[Partition, QuantileStats]:
    """One quantile metric's ``QuantileStats`` per (variant, *grouping values)."""
    values = quantile_values(sources, spec, journey, grouping, hours=hours)
    partition = ["variant_key", *grouping]
    statistics = order_statistics(connection, values, partition, [spec.quantile], alpha=alpha)
    out = {cell: _stats(n, found, quantile=spec.quantile, alpha=alpha)
           for cell, (n, found) in statistics.items()}
    estimates = {cell: stats.estimate for cell, stats in out.items()
                 if stats.estimate is not None}
    if spec.source == "event_value" and estimates:
        for row in connection.execute(cluster_sums_query(values, partition, estimates)):
            cell, data = _cell(row, partition), row._mapping
            clusters = RatioStats(int(data["n"]), *(number(data[name]) for name in (
                "num_sum", "num_sum_squares", "den_sum", "den_sum_squares", "num_den_sum")))
            n, found = statistics[cell]
            out[cell] = _stats(n, found, quantile=spec.quantile, alpha=alpha,
                               clusters=clusters)
    return out


def time_on_step(connection: Session | Connection, sources: PipelineSources,
                 journey: Sequence[str], *, hours: float,
                 grouping: Sequence[str] = ()) -> dict[Partition, dict[str, Any]]:
    """The funnel's "time on step": per (variant, *grouping values, step), the p50 and p90
    of the step durations in seconds and how many units left the step (``n``)."""
    if not journey:
        return {}
    values = step_durations(sources, journey, journey, grouping, hours=hours).subquery("d")
    partition = ["variant_key", *grouping, "step"]
    levels = list(TIME_ON_STEP_LEVELS.values())
    out = {}
    for cell, (n, found) in order_statistics(connection, values, partition, levels,
                                             alpha=0.05).items():
        entry: dict[str, Any] = {}
        for name, level in TIME_ON_STEP_LEVELS.items():
            ranks = needed_ranks(n, quantile=level)
            entry[name] = None if ranks is None else found[ranks.point]
        out[cell] = {**entry, "n": n}
    return out


def quantile_specs(metrics: Iterable[Any]) -> list[QuantileSpec]:
    """The metrics (Metric rows) read as order statistics rather than sums."""
    return [QuantileSpec.of(metric) for metric in metrics
            if metric.kind in ORDER_STATISTIC_KINDS]


def sum_specs(metrics: Iterable[Any]) -> list[MetricSpec]:
    """The metrics (Metric rows) read as per-variant sums: every kind but order statistics."""
    return [MetricSpec.of(metric) for metric in metrics
            if metric.kind not in ORDER_STATISTIC_KINDS]


def with_order_statistics(connection: Session | Connection, sources: PipelineSources,
                          aggregates: ExperimentAggregates, specs: Sequence[QuantileSpec], *,
                          journey: Sequence[str], hours: float, alpha: float,
                          steps: bool = False) -> ExperimentAggregates:
    """``aggregates`` with what sums cannot give, read over the same sources (Parcours's
    tables, identity clusters or a warehouse's): each quantile metric's order statistics
    per variant and, when ``steps``, the funnel's time on step."""
    aggregates.quantiles = {
        spec.key: {cell[0]: stats for cell, stats in quantile_stats(
            connection, sources, spec, journey=journey, hours=hours, alpha=alpha).items()}
        for spec in specs}
    if steps:
        aggregates.time_on_step = time_on_step(connection, sources, journey, hours=hours)
    return aggregates


__all__ = [
    "ORDER_STATISTIC_KINDS",
    "QUANTILE_SOURCES",
    "TIME_ON_STEP_LEVELS",
    "QuantileSpec",
    "cluster_sums_query",
    "order_statistics",
    "order_statistics_query",
    "quantile_specs",
    "quantile_stats",
    "quantile_values",
    "step_durations",
    "sum_specs",
    "time_on_step",
    "with_order_statistics",
]
