"""Where an experiment is analysed: Parcours's own database, or its ``analysis.warehouse``.

``aggregates_for`` is the one branch point the analysis calls for its aggregates. For a
warehouse experiment it syncs the exposures first (SPEC §15: before each analysis), then
hands the warehouse's engine and relations (``sources.warehouse_sources``) to the
pipeline. Every failure on the way (warehouse down, statement timeout, query refused)
surfaces as a :class:`WarehouseError` naming the warehouse; the analysis stores it as
that experiment's failed report and goes on with the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, false, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import FromClause

from experiments.models import Experiment
from experiments.schemas import AnalysisSettings
from experiments.services.pipeline import (
    ExperimentAggregates,
    MetricSpec,
    aggregate_experiment,
    quantile_specs,
    table_sources,
    with_order_statistics,
)
from experiments.services.segments import segmented_aggregates, with_level_quantiles
from experiments.services.warehouses.sources import warehouse_sources
from experiments.services.warehouses.sync import sync_before_analysis

Levels = dict[str, list[Any]]  # dimension → its segments.LevelAggregates
Aggregated = tuple[ExperimentAggregates, Levels | None]


def run_pipeline(engine: Engine, exposures: FromClause, events: FromClause,
                 experiment: Experiment, settings: AnalysisSettings,
                 metrics: Sequence[MetricSpec], dimensions: Sequence[str] = ()) -> Aggregated:
    """The portable pipeline on the warehouse's connection, over its relations: the
    report's aggregates and, with ``dimensions``, each dimension's levels (segments, from
    the exposures' ``attributes`` snapshot; ``None`` without dimensions).

    The exposures are the experiment's, override units left out: those the exposure says
    (``is_override``) and those ``experiment.overrides`` lists now, as the sync only
    appends and an exposure stored before its unit got an override is flagged in Parcours
    only. The events (``parcours_events`` and every ``events_sql`` source) are read in full
    (no rollup outside Parcours's own PostgreSQL); source rows have no id, which nothing
    depends on (the last-NPS-answer tie-break treats a missing id as 0).
    """
    kept = [exposures.c.is_override == false()]
    if experiment.overrides:
        kept.append(exposures.c.unit_id.not_in(sorted(experiment.overrides)))
    sources = table_sources(select(*exposures.c).where(*kept).subquery("kept_exposures"),
                            events, experiment=experiment.id)
    hours, cuped, journey = settings.conversion_window_hours, settings.cuped, experiment.journey
    with engine.connect() as connection:
        levels = None
        if dimensions:
            aggregates, levels = segmented_aggregates(
                connection, None, metrics, dimensions, hours=hours, cuped=cuped,
                journey=journey, rollup=False, sources=sources)
        else:
            aggregates = aggregate_experiment(connection, None, metrics, hours=hours,
                                              cuped=cuped, journey=journey, rollup=False,
                                              sources=sources)
        quantiles = quantile_specs(experiment.metrics)
        order: dict[str, Any] = {"journey": journey, "hours": hours, "alpha": settings.alpha}
        if levels is not None:
            levels = with_level_quantiles(connection, sources, quantiles, levels, **order)
        return with_order_statistics(connection, sources, aggregates, quantiles,
                                     steps=settings.time_on_step, **order), levels


def warehouse_aggregates(session: Session, experiment: Experiment, settings: AnalysisSettings,
                         metrics: Sequence[MetricSpec], dimensions: Sequence[str] = ()
                         ) -> Aggregated:
    """Sync the warehouse, then run the pipeline over its exposures and events, in it."""
    name = settings.warehouse
    assert name is not None, "only experiments with analysis.warehouse are routed here"
    sync_before_analysis(session, name)
    engine, exposures, events = warehouse_sources(session, name)
    return run_pipeline(engine, exposures, events, experiment, settings, metrics, dimensions)


def aggregates_for(session: Session, experiment: Experiment, settings: AnalysisSettings,
                   metrics: Sequence[MetricSpec], in_parcours: Callable[[], Aggregated],
                   dimensions: Sequence[str] = ()) -> Aggregated:
    """The experiment's aggregates (and segment levels) where its data lives: its
    warehouse, else Parcours."""
    if settings.warehouse is None:
        return in_parcours()
    return warehouse_aggregates(session, experiment, settings, metrics, dimensions)
