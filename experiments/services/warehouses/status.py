"""What ``GET /api/v1/warehouses`` and the admin page show of each warehouse (no URL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.models import Experiment, WarehouseSync
from experiments.services import identity
from experiments.services.pipeline.rollup import ROLLUP_STATUSES
from experiments.services.warehouses.engines import get_warehouses
from experiments.services.warehouses.sources import list_sources, source_to_dict
from experiments.services.warehouses.sync import pending_rows


def describe_warehouse(session: Session, name: str,
                       analysed: Sequence[Experiment] | None = None) -> dict[str, Any]:
    """Name, dialect, last sync (and its error), lag in rows, sources with their validation,
    and the experiments analysed in it (of ``analysed``, default: every experiment)."""
    warehouses = get_warehouses()
    state = session.get(WarehouseSync, name)
    if analysed is None:
        analysed = warehouse_experiments(session)
    sources = [source_to_dict(row) for row in list_sources(session, name)]
    sync_events = warehouses.config(name).sync_events
    return {"name": name, "dialect": warehouses.dialect(name),
            "timeout_seconds": warehouses.config(name).timeout_seconds,
            "sync_events": sync_events,
            "last_sync_at": state.last_sync_at if state else None,
            "last_sync_error": state.last_error if state else None,
            "lag": pending_rows(session, name),
            "sources": sources,
            "experiments": [{"key": e.key, "name": e.name, "status": e.status,
                             "per_unit_values": per_unit_values(
                                 session, e, sources=bool(sources), sync_events=sync_events)}
                            for e in analysed if (e.analysis or {}).get("warehouse") == name]}


def per_unit_values(session: Session, experiment: Experiment, *, sources: bool,
                    sync_events: bool) -> dict[str, Any]:
    """Whether the experiment's per-unit values are kept in the warehouse between analyses
    (``warehouses.rollup``: each report then reads only what arrived since), and why not:
    the rule ``routing`` applies when it opens the warehouse, told without opening it (an
    operator's answer to "why is this report slow?")."""
    if experiment.status not in ROLLUP_STATUSES:
        why = ("every event read at each analysis: only a running or paused experiment "
               "keeps its per-unit values")
    elif sources:
        why = "every event read at each analysis: events_sql sources have no ids to fold by"
    elif not sync_events:
        why = "no events to read: no source, and Parcours's events are not copied"
    elif identity.links_touch(session, experiment.id):
        why = ("every event read at each analysis: identity links touch its units "
               "(clusters are its units)")
    else:
        return {"kept": True, "why": "per-unit values kept in the warehouse: each report "
                                     "reads what arrived since the last fold"}
    return {"kept": False, "why": why}


def describe_warehouses(session: Session) -> list[dict[str, Any]]:
    """Every configured warehouse, by name."""
    analysed = warehouse_experiments(session)
    return [describe_warehouse(session, name, analysed) for name in get_warehouses().names()]


def warehouse_experiments(session: Session) -> list[Experiment]:
    """Every experiment, by key (each names its warehouse, if any, in its analysis
    settings: a JSON document, filtered here rather than per dialect)."""
    return list(session.scalars(select(Experiment).order_by(Experiment.key)))
