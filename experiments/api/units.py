"""Units resource (SPEC §3): erasure of one unit for data-protection requests."""

from __future__ import annotations

from flask import Blueprint

from experiments.api.routing import api_route, current_principal
from experiments.db import db_session
from experiments.errors import ValidationFailed
from experiments.schemas.units import MAX_UNIT_ID_LENGTH, ErasedOut
from experiments.services.erasure import erase_unit

bp = Blueprint("units", __name__, url_prefix="/api/v1")


@api_route(bp, "/units/<path:unit_id>", "DELETE", response=ErasedOut, errors=(404, 422),
           tags=("units",))
def delete_unit(unit_id: str) -> ErasedOut:
    """Erase a unit everywhere (events, exposures, identity links, rollups); audited by digest."""
    if len(unit_id) > MAX_UNIT_ID_LENGTH or "\x00" in unit_id:
        raise ValidationFailed.field(
            "unit_id", f"must be 1 to {MAX_UNIT_ID_LENGTH} characters without NUL")
    erased = erase_unit(db_session(), unit_id, current_principal())
    return ErasedOut(unit_id=erased.unit_id, events=erased.events, exposures=erased.exposures)
