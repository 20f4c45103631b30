"""Audit trail: every privileged change is recorded in the same transaction."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.auth import Principal
from experiments.models import AuditEntry
from experiments.services.pagination import paginate


def json_safe(value: Any) -> Any:
    """A copy made of JSON types only (datetimes as text), for audit snapshots and webhook
    payloads stored as JSON."""
    return json.loads(json.dumps(value, default=str))


def record_audit(session: Session, principal: Principal, action: str, *,
                 target_type: str, target_id: str | None = None,
                 experiment_key: str | None = None,
                 before: dict[str, Any] | None = None,
                 after: dict[str, Any] | None = None) -> AuditEntry:
    """Add an audit entry; it commits (or rolls back) with the change it describes."""
    entry = AuditEntry(actor=principal.actor, action=action, target_type=target_type,
                       target_id=target_id, experiment_key=experiment_key,
                       before=before, after=after)
    session.add(entry)
    return entry


def list_audit(session: Session, *, experiment_key: str | None, limit: int,
               cursor: str | None) -> tuple[list[AuditEntry], str | None]:
    """Newest first, optionally for one experiment."""
    query = select(AuditEntry)
    if experiment_key is not None:
        query = query.where(AuditEntry.experiment_key == experiment_key)
    rows, next_cursor = paginate(session, query, AuditEntry.id, limit=limit, cursor=cursor,
                                 descending=True)
    return list(rows), next_cursor


def audit_to_dict(entry: AuditEntry) -> dict[str, Any]:
    """The public shape of an audit entry."""
    return {"id": entry.id, "at": entry.at, "actor": entry.actor, "action": entry.action,
            "experiment": entry.experiment_key, "target_type": entry.target_type,
            "target_id": entry.target_id, "before": entry.before, "after": entry.after}
