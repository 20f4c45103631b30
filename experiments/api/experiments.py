"""Experiments resource (SPEC §3): thin views over ``services.lifecycle``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from experiments.api.routing import api_route, current_principal
from experiments.db import db_session
from experiments.schemas import (
    AuditList,
    AuditQuery,
    ConcludeIn,
    ExperimentFields,
    ExperimentList,
    ExperimentListQuery,
    ExperimentOut,
    ExperimentPatch,
    IterateIn,
)
from experiments.services import audit, lifecycle

bp = Blueprint("experiments", __name__, url_prefix="/api/v1")
TAGS = ("experiments",)


def _out(experiment: Any) -> ExperimentOut:
    return ExperimentOut.model_validate(lifecycle.experiment_to_dict(experiment))


@api_route(bp, "/experiments", "POST", body=ExperimentFields, response=ExperimentOut,
           status=201, errors=(409,), tags=TAGS)
def create_experiment(body: ExperimentFields) -> ExperimentOut:
    """Create a draft experiment."""
    return _out(lifecycle.create_experiment(db_session(), body, current_principal()))


@api_route(bp, "/experiments", query=ExperimentListQuery, response=ExperimentList, tags=TAGS)
def list_experiments(query: ExperimentListQuery) -> ExperimentList:
    """List experiments, optionally by status."""
    rows, next_cursor = lifecycle.list_experiments(
        db_session(), status=query.status, limit=query.limit, cursor=query.cursor)
    return ExperimentList(items=[_out(row) for row in rows], next_cursor=next_cursor)


@api_route(bp, "/experiments/<key>", response=ExperimentOut, errors=(404,), tags=TAGS)
def get_experiment(key: str) -> ExperimentOut:
    """Get one experiment."""
    return _out(lifecycle.get_experiment(db_session(), key))


@api_route(bp, "/experiments/<key>", "PATCH", body=ExperimentPatch, response=ExperimentOut,
           errors=(404, 409), tags=TAGS)
def update_experiment(key: str, body: ExperimentPatch) -> ExperimentOut:
    """Change some fields of an experiment (structure is frozen once running)."""
    return _out(lifecycle.update_experiment(db_session(), key, body, current_principal()))


@api_route(bp, "/experiments/<key>", "DELETE", status=204, errors=(404, 409), tags=TAGS)
def delete_experiment(key: str) -> None:
    """Delete a draft experiment."""
    lifecycle.delete_experiment(db_session(), key, current_principal())


def _transition_view(action: str) -> None:
    def view(key: str) -> ExperimentOut:
        return _out(lifecycle.transition(db_session(), key, action, current_principal()))

    view.__name__ = f"{action}_experiment"
    view.__doc__ = f"{action.capitalize()} the experiment (409 if illegal in its status)."
    api_route(bp, f"/experiments/<key>/{action}", "POST", response=ExperimentOut,
              errors=(404, 409), tags=TAGS)(view)


for _action in ("start", "pause", "resume"):
    _transition_view(_action)


@api_route(bp, "/experiments/<key>/conclude", "POST", body=ConcludeIn, response=ExperimentOut,
           errors=(404, 409), tags=TAGS)
def conclude_experiment(key: str, body: ConcludeIn) -> ExperimentOut:
    """Conclude with an outcome, the shipped winner and the learnings."""
    return _out(lifecycle.transition(db_session(), key, "conclude", current_principal(), body))


@api_route(bp, "/experiments/<key>/iterate", "POST", body=IterateIn, response=ExperimentOut,
           status=201, errors=(404, 409), tags=TAGS)
def iterate_experiment(key: str, body: IterateIn) -> ExperimentOut:
    """Create the next draft of this experiment's chain."""
    return _out(lifecycle.iterate_experiment(db_session(), key, body, current_principal()))


@api_route(bp, "/audit", query=AuditQuery, response=AuditList, tags=("audit",))
def list_audit(query: AuditQuery) -> AuditList:
    """Who changed what, when (newest first)."""
    rows, next_cursor = audit.list_audit(db_session(), experiment_key=query.experiment,
                                         limit=query.limit, cursor=query.cursor)
    return AuditList.model_validate(
        {"items": [audit.audit_to_dict(row) for row in rows], "next_cursor": next_cursor})
