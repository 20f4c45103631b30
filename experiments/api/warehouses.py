"""Warehouses resource (SPEC §15): thin views over ``services.warehouses``."""

from __future__ import annotations

from flask import Blueprint

from experiments.api.routing import api_route, current_principal
from experiments.db import db_session
from experiments.schemas.warehouses import WarehouseList, WarehouseOut, WarehouseSourcesIn
from experiments.services.warehouses import sources, status

bp = Blueprint("warehouses", __name__, url_prefix="/api/v1")
TAGS = ("warehouses",)


@api_route(bp, "/warehouses", response=WarehouseList, tags=TAGS)
def list_warehouses() -> WarehouseList:
    """The configured warehouses: name, dialect, last sync, lag and sources (never the URL)."""
    return WarehouseList.model_validate({"items": status.describe_warehouses(db_session())})


@api_route(bp, "/warehouses/<name>/sources", "PUT", body=WarehouseSourcesIn,
           response=WarehouseOut, errors=(404, 422), tags=TAGS)
def put_sources(name: str, body: WarehouseSourcesIn) -> WarehouseOut:
    """Replace the warehouse's events sources, each probed with ``LIMIT 0`` first (422)."""
    session = db_session()
    sources.replace_sources(session, name, body.statements(), current_principal())
    return WarehouseOut.model_validate(status.describe_warehouse(session, name))
