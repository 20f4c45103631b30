"""What ``GET /api/v1/warehouses`` and the admin page show of each warehouse (no URL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.models import Experiment, WarehouseSync
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
    return {"name": name, "dialect": warehouses.dialect(name),
            "timeout_seconds": warehouses.config(name).timeout_seconds,
            "sync_events": warehouses.config(name).sync_events,
            "last_sync_at": state.last_sync_at if state else None,
            "last_sync_error": state.last_error if state else None,
            "lag": pending_rows(session, name),
            "sources": [source_to_dict(row) for row in list_sources(session, name)],
            "experiments": [{"key": e.key, "name": e.name, "status": e.status}
                            for e in analysed if (e.analysis or {}).get("warehouse") == name]}


def describe_warehouses(session: Session) -> list[dict[str, Any]]:
    """Every configured warehouse, by name."""
    analysed = warehouse_experiments(session)
    return [describe_warehouse(session, name, analysed) for name in get_warehouses().names()]


def warehouse_experiments(session: Session) -> list[Experiment]:
    """Every experiment, by key (each names its warehouse, if any, in its analysis
    settings: a JSON document, filtered here rather than per dialect)."""
    return list(session.scalars(select(Experiment).order_by(Experiment.key)))
