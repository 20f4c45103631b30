"""Where an experiment is analysed: Parcours's own database, or its ``analysis.warehouse``.

``aggregates_for`` is the one branch point the analysis calls for its aggregates. For a
warehouse experiment it syncs the exposures and identity links first (SPEC §15: before
each analysis), then hands the warehouse's engine and relations
(``sources.warehouse_sources``) to the pipeline. Both places run the same pass
(:func:`analyse_sources`): identity clusters as the analysis unit when links touch the
experiment (SPEC §14), a bandit's units grouped by weight period (SPEC §13), segments,
order statistics. A bandit's reallocation (:func:`reallocation_periods`) reads the units
the report reads (:func:`identity.analysis_sources`: clusters when links touch the
experiment), and opens a warehouse the same way as the report (:func:`_synced`, then
:func:`_opened`: synced, override units left out, clusters resolved there), then reads its
primary metric per period. Every failure on the
way (warehouse down, statement timeout, query refused) surfaces as a
:class:`WarehouseError` naming the warehouse; the analysis stores it as that experiment's
failed report and goes on with the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Engine, Select, false, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import FromClause

from experiments.errors import ApiError
from experiments.models import (
    AllocationPeriod,
    Event,
    Experiment,
    Exposure,
    IdentityLink,
    unit_rollups,
)
from experiments.schemas import AnalysisSettings
from experiments.services import bandits, identity
from experiments.services.pipeline import (
    ExperimentAggregates,
    MetricSpec,
    PipelineSources,
    aggregate_experiment,
    quantile_specs,
    table_sources,
    with_order_statistics,
)
from experiments.services.pipeline.dialects import prepare, refresh_statistics
from experiments.services.pipeline.exposures import known_unique
from experiments.services.segments import segmented_aggregates, with_level_quantiles
from experiments.services.warehouses import tables
from experiments.services.warehouses.engines import IN_PROCESS, UNITS_PER_PASS, WarehouseError
from experiments.services.warehouses.rollup import (
    WarehouseRollup,
    exposure_rows,
    latest_fold,
    unique_through,
)
from experiments.services.warehouses.sources import warehouse_sources
from experiments.services.warehouses.sync import sync_before_analysis

Levels = dict[str, list[Any]]  # dimension → its segments.LevelAggregates


# The tables the pass reads in Parcours's own database (their statistics kept fresh).
OWN_TABLES = (Exposure.__tablename__, Event.__tablename__, IdentityLink.__tablename__,
              unit_rollups.name)


@dataclass(frozen=True)
class Analysed:
    """What a report is built from, wherever it was computed: the aggregates, each
    dimension's levels (None without dimensions), a bandit's per-period aggregates and the
    identity counts (None when no link touches the experiment)."""

    aggregates: ExperimentAggregates
    levels: Levels | None
    bandit: bandits.BanditPeriods | None = None
    linked: identity.IdentitySummary | None = None


def analyse_sources(connection: Session | Connection, session: Session | None,
                    experiment: Experiment, settings: AnalysisSettings,
                    metrics: Sequence[MetricSpec], dimensions: Sequence[str],
                    sources: PipelineSources, *, rollup: bool) -> Analysed:
    """The analysis pass over ``sources`` on ``connection`` (Parcours's session or a
    warehouse's connection): a bandit's round grouped by weight period (its periods read
    from Parcours's ``session``; its pooled sums are the totals), segments from the same
    grouped round, then the order statistics (quantiles, time on step: never
    period-weighted)."""
    hours = settings.conversion_window_hours
    options: dict[str, Any] = {"hours": hours, "cuped": settings.cuped,
                               "journey": experiment.journey, "rollup": rollup}
    bandit = None if session is None else bandits.report_periods(
        session, experiment, metrics, settings, rollup=rollup, sources=sources,
        connection=connection)
    whole, levels = None, None
    if dimensions:  # one grouped round gives the whole report and every level
        whole, levels = segmented_aggregates(connection, experiment.id, metrics, dimensions,
                                             sources=sources, **options)
    if bandit is not None:
        whole = bandit.pooled()
    elif whole is None:
        whole = aggregate_experiment(connection, experiment.id, metrics, sources=sources,
                                     **options)
    quantiles = quantile_specs(experiment.metrics)
    order: dict[str, Any] = {"journey": experiment.journey, "hours": hours,
                             "alpha": settings.alpha}
    if levels is not None:
        levels = with_level_quantiles(connection, sources, quantiles, levels, **order)
    whole = with_order_statistics(connection, sources, whole, quantiles,
                                  steps=settings.time_on_step, **order)
    return Analysed(whole, levels, bandit)


def _synced(session: Session, name: str) -> tuple[Engine, FromClause, FromClause]:
    """The warehouse brought up to date (SPEC §15: before each analysis), then its engine
    and relations (:func:`warehouse_sources`): what every read of a warehouse starts with."""
    sync_before_analysis(session, name)
    return warehouse_sources(session, name)


@contextmanager
def _opened(engine: Engine, exposures: FromClause, events: FromClause,
            experiment: Experiment, session: Session | None, *, rollup: bool = False,
            ) -> Iterator[tuple[Connection, identity.AnalysisUnits]]:
    """A connection to the warehouse and what the experiment's analysis reads there: its
    exposures without its override units (see run_pipeline) and ``events``, over identity
    clusters resolved in the warehouse when links touch the experiment
    (:func:`identity.analysis_sources`, asked of Parcours's ``session``; without a session,
    the bench, never). The report and a bandit's reallocation both read these. With
    ``rollup``, the per-unit values are kept in the warehouse between analyses
    (:class:`WarehouseRollup`) where they can be: over ``parcours_events`` alone, unique
    exposures, no identity clusters."""
    kept = [exposures.c.is_override == false()]
    if experiment.overrides:
        kept.append(exposures.c.unit_id.not_in(sorted(experiment.overrides)))
    analysed = select(*exposures.c).where(*kept).subquery("kept_exposures")
    units = identity.AnalysisUnits(
        experiment.id, table_sources(analysed, events, experiment=experiment.id))
    if session is not None:
        copies = identity.IdentityTables(
            tables.identity_links,
            select(analysed.c.exposure_id.label("id"), *analysed.c).subquery("copies"),
            events)
        units = identity.analysis_sources(session, experiment.id, units.sources, copies,
                                          asked=identity.PARCOURS.exposures)
    with engine.connect() as connection:
        if units.clusters is not None:
            prepare(connection)  # ClickHouse: NULLs, not '', where a unit has no link
        rollup = rollup and units.clusters is None and _copied(events)
        if rollup:  # a warehouse filled by other means than the sync lacks it
            tables.create_rollups(connection)
        # A fold was made over unique exposures: only the units exposed since are checked.
        fold = latest_fold(connection, experiment.id) if rollup else None
        counted = None if fold is None else (fold.exposures_through, exposure_rows(
            connection, units.sources.exposures, fold.exposures_through))
        sources = known_unique(connection, units.sources, checked_through=unique_through(
            fold, counted[1] if counted else 0))
        if units.clusters is None:  # the copy's rows: read again rather than carried
            sources = replace(sources, join_back=True)
        if engine.dialect.name in IN_PROCESS:  # its memory is this process's
            sources = replace(sources, units_per_pass=UNITS_PER_PASS)
        if rollup and sources.unique_units:
            sources = replace(sources, unit_store=WarehouseRollup(
                experiment.id, overrides=tuple(sorted(experiment.overrides or ())),
                counted=counted))
        yield connection, replace(units, sources=sources)


def _copied(events: FromClause) -> bool:
    """The events are Parcours's copy alone (``parcours_events``: ids in Parcours's
    order, which a rollup folds by), no ``events_sql`` source."""
    element = getattr(events, "element", None)
    return isinstance(element, Select) and element.get_final_froms() == [tables.events]


def run_pipeline(engine: Engine, exposures: FromClause, events: FromClause,
                 experiment: Experiment, settings: AnalysisSettings,
                 metrics: Sequence[MetricSpec], dimensions: Sequence[str] = (), *,
                 session: Session | None = None, rollup: bool = False) -> Analysed:
    """The portable pipeline on the warehouse's connection, over its relations: the
    report's aggregates and, with ``dimensions``, each dimension's levels (segments, from
    the exposures' ``attributes`` snapshot).

    With Parcours's ``session`` (where the weight periods and links live) the pass is the
    one Parcours runs: a bandit's units grouped by weight period, and, when a link names
    one of the experiment's units, the identity clusters resolved in the warehouse over
    its copy of the links (``parcours_identity_links``). Without it (the bench) neither.

    The exposures are the experiment's, override units left out: those the exposure says
    (``is_override``) and those ``experiment.overrides`` lists now, as the sync only
    appends and an exposure stored before its unit got an override is flagged in Parcours
    only. With ``rollup`` (a running experiment) the per-unit values over
    ``parcours_events`` are kept in the warehouse between analyses (:func:`_opened`);
    ``events_sql`` sources are read in full: their rows have no id, which nothing else
    depends on (the last-NPS-answer tie-break treats a missing id as 0).
    """
    assert session is not None or bandits.bandit_settings(experiment) is None, (
        "a bandit's weight periods are read from Parcours: pass its session")
    with _opened(engine, exposures, events, experiment, session,
                 rollup=rollup) as (connection, units):
        result = analyse_sources(connection, session, experiment, settings, metrics,
                                 dimensions, units.sources, rollup=rollup)
        return replace(result, linked=units.summary(connection))


def _own_units(session: Session, experiment: Experiment) -> identity.AnalysisUnits:
    """What an analysis reads in Parcours's own tables, their planner statistics refreshed
    first: the identity clusters (SPEC §14), or without links the units themselves."""
    refresh_statistics(session, OWN_TABLES)
    return identity.analysis_sources(session, experiment.id)


def aggregates_for(session: Session, experiment: Experiment, settings: AnalysisSettings,
                   metrics: Sequence[MetricSpec], dimensions: Sequence[str] = (), *,
                   rollup: bool) -> Analysed:
    """The experiment's aggregates (and segment levels, bandit periods, identity counts)
    where its data lives: its warehouse (synced first), else Parcours."""
    name = settings.warehouse
    if name is None:
        units = _own_units(session, experiment)
        return replace(analyse_sources(session, session, experiment, settings, metrics,
                                       dimensions, units.sources, rollup=rollup),
                       linked=units.summary(session))
    return run_pipeline(*_synced(session, name), experiment, settings, metrics, dimensions,
                        session=session, rollup=rollup)


def reallocation_periods(session: Session, experiment: Experiment,
                         periods: Sequence[AllocationPeriod]) -> bandits.BanditPeriods:
    """A bandit's per-period sums of its primary metric for a reallocation, over the units
    its report reads (:func:`identity.analysis_sources`: identity clusters when links touch
    it), where its data lives: with ``analysis.warehouse``, synced and read there (its
    events may exist only in the warehouse's sources). A warehouse failure is a 503 naming
    it."""
    name = AnalysisSettings.model_validate(experiment.analysis).warehouse
    if name is None:
        return bandits.primary_periods(session, experiment, periods,
                                       _own_units(session, experiment).sources)
    try:
        with _opened(*_synced(session, name), experiment, session) as (connection, units):
            return bandits.primary_periods(connection, experiment, periods, units.sources)
    except WarehouseError as exc:
        raise ApiError(503, f"the bandit's data could not be read: {exc}") from None
