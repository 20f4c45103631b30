"""Holdouts resource (SPEC §12): thin views over ``services.holdouts``."""

from __future__ import annotations

from flask import Blueprint

from experiments.api.routing import api_route, current_principal
from experiments.db import db_session
from experiments.models import Holdout
from experiments.schemas.holdouts import (
    HoldoutFields,
    HoldoutList,
    HoldoutListQuery,
    HoldoutOut,
    HoldoutPatch,
    HoldoutReportOut,
)
from experiments.services import holdouts

bp = Blueprint("holdouts", __name__, url_prefix="/api/v1")
TAGS = ("holdouts",)


def _out(holdout: Holdout) -> HoldoutOut:
    units = holdouts.group_counts(db_session(), [holdout.id])[holdout.id]
    return HoldoutOut.model_validate(holdouts.holdout_to_dict(holdout, units))


@api_route(bp, "/holdouts", "POST", body=HoldoutFields, response=HoldoutOut, status=201,
           errors=(409,), tags=TAGS)
def create_holdout(body: HoldoutFields) -> HoldoutOut:
    """Create a running holdout."""
    return _out(holdouts.create_holdout(db_session(), body, current_principal()))


@api_route(bp, "/holdouts", query=HoldoutListQuery, response=HoldoutList, tags=TAGS)
def list_holdouts(query: HoldoutListQuery) -> HoldoutList:
    """List holdouts, optionally by status."""
    session = db_session()
    rows, next_cursor = holdouts.list_holdouts(session, status=query.status, limit=query.limit,
                                               cursor=query.cursor)
    counts = holdouts.group_counts(session, [row.id for row in rows])
    return HoldoutList(items=[HoldoutOut.model_validate(holdouts.holdout_to_dict(
        row, counts[row.id])) for row in rows], next_cursor=next_cursor)


@api_route(bp, "/holdouts/<key>", response=HoldoutOut, errors=(404,), tags=TAGS)
def get_holdout(key: str) -> HoldoutOut:
    """Get one holdout with its exposed units per group."""
    return _out(holdouts.get_holdout(db_session(), key))


@api_route(bp, "/holdouts/<key>", "PATCH", body=HoldoutPatch, response=HoldoutOut,
           errors=(404, 409), tags=TAGS)
def update_holdout(key: str, body: HoldoutPatch) -> HoldoutOut:
    """Change some fields (``percent`` is frozen once units are exposed: 409)."""
    return _out(holdouts.update_holdout(db_session(), key, body, current_principal()))


@api_route(bp, "/holdouts/<key>/conclude", "POST", response=HoldoutOut, errors=(404, 409),
           tags=TAGS)
def conclude_holdout(key: str) -> HoldoutOut:
    """Release the held-out units (409 when already concluded)."""
    return _out(holdouts.conclude_holdout(db_session(), key, current_principal()))


@api_route(bp, "/holdouts/<key>/report", response=HoldoutReportOut, errors=(404,), tags=TAGS)
def holdout_report(key: str) -> HoldoutReportOut:
    """Holdout vs measure: the experiment report's shape, ``holdout`` as the control."""
    return HoldoutReportOut.model_validate(holdouts.holdout_report(db_session(), key))
