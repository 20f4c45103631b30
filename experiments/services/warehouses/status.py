"""What ``GET /api/v1/warehouses`` and the admin page show of each warehouse (no URL)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from experiments.models import WarehouseSync
from experiments.services.warehouses.engines import get_warehouses
from experiments.services.warehouses.sources import list_sources, source_to_dict
from experiments.services.warehouses.sync import pending_rows


def describe_warehouse(session: Session, name: str) -> dict[str, Any]:
    """Name, dialect, last sync (and its error), lag in rows, sources with their validation."""
    warehouses = get_warehouses()
    state = session.get(WarehouseSync, name)
    return {"name": name, "dialect": warehouses.dialect(name),
            "timeout_seconds": warehouses.config(name).timeout_seconds,
            "sync_events": warehouses.config(name).sync_events,
            "last_sync_at": state.last_sync_at if state else None,
            "last_sync_error": state.last_error if state else None,
            "lag": pending_rows(session, name),
            "sources": [source_to_dict(row) for row in list_sources(session, name)]}


def describe_warehouses(session: Session) -> list[dict[str, Any]]:
    """Every configured warehouse, by name."""
    return [describe_warehouse(session, name) for name in get_warehouses().names()]
