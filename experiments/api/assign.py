"""Assignment and exposures (SPEC §4): thin views over ``services.assignment``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from experiments.api.routing import api_route
from experiments.db import db_session
from experiments.schemas.assignment import AssignIn, AssignOut, ExposureIn, ExposureOut
from experiments.services import assignment

bp = Blueprint("assign", __name__, url_prefix="/api/v1")
TAGS = ("assignment",)


@api_route(bp, "/assign", "POST", auth="client", body=AssignIn, response=AssignOut, tags=TAGS)
def assign_unit(body: AssignIn) -> dict[str, Any]:
    """Assign a unit to every running (or the named) experiment; stores first exposures."""
    results = assignment.assign(db_session(), unit_id=body.unit_id, attributes=body.attributes,
                                experiment_keys=body.experiments, track=body.track)
    return {"unit_id": body.unit_id, "assignments": [result.to_dict() for result in results]}


@api_route(bp, "/exposures", "POST", auth="client", body=ExposureIn, response=ExposureOut,
           errors=(404,), tags=TAGS)
def record_exposure(body: ExposureIn) -> dict[str, Any]:
    """Record that a unit assigned with ``track: false`` was shown its variant."""
    result = assignment.record_exposure(db_session(), experiment_key=body.experiment,
                                        unit_id=body.unit_id, attributes=body.attributes)
    return {"unit_id": body.unit_id, **result.to_dict()}
