"""Where an experiment is analysed: Parcours's own database, or its ``analysis.warehouse``.

``aggregates_for`` is the one branch point the analysis calls for its aggregates. For a
warehouse experiment it syncs the exposures first (SPEC §15: before each analysis), then
hands the warehouse's engine and relations (``sources.warehouse_sources``) to the
pipeline. Every failure on the way (warehouse down, statement timeout, query refused)
surfaces as a :class:`WarehouseError` naming the warehouse; the analysis stores it as
that experiment's failed report and goes on with the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql import FromClause

from experiments.models import Experiment
from experiments.schemas import AnalysisSettings
from experiments.services.warehouses.engines import WarehouseError
from experiments.services.warehouses.sources import warehouse_sources
from experiments.services.warehouses.sync import sync_before_analysis


def run_pipeline(engine: Engine, exposures: FromClause, events: FromClause,
                 experiment: Experiment, settings: AnalysisSettings) -> Any:
    """Run the analysis pipeline inside the warehouse: the portable pipeline of issue #20
    part 1 goes here when it lands; until then a clear error, never a silent wrong report."""
    raise WarehouseError(f"warehouse {settings.warehouse!r}: analysis inside warehouses is "
                         "not wired yet (the portable SQL pipeline of issue #20 part 1)")


def warehouse_aggregates(session: Session, experiment: Experiment,
                         settings: AnalysisSettings) -> Any:
    """Sync the warehouse, then run the pipeline over its exposures and events, in it."""
    name = settings.warehouse
    assert name is not None, "only experiments with analysis.warehouse are routed here"
    sync_before_analysis(session, name)
    engine, exposures, events = warehouse_sources(session, name)
    return run_pipeline(engine, exposures, events, experiment, settings)


def aggregates_for(session: Session, experiment: Experiment, settings: AnalysisSettings,
                   in_parcours: Callable[[], Any]) -> Any:
    """The experiment's aggregates where its data lives: its warehouse, else Parcours."""
    if settings.warehouse is None:
        return in_parcours()
    return warehouse_aggregates(session, experiment, settings)
