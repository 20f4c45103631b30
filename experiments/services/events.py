"""Event ingestion (SPEC §5): per-event validation, dedupe by ``event_id``, durable acks.

A batch is validated event by event; the valid ones are inserted in one
transaction with ``ON CONFLICT (event_id) DO NOTHING … RETURNING event_id`` so that
the counts stay exact when several hosts receive the same resend at once, and
the function returns only after the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from experiments.db import utcnow
from experiments.errors import validation_details
from experiments.models import Event
from experiments.schemas.events import EventIn, default_name, event_problems

EVENTS_INGESTED = Counter("parcours_events_ingested_total", "Events received by ingestion",
                          ["result"])
_BATCH = TypeAdapter(list[EventIn])
_TABLE = Event.__table__


@dataclass(frozen=True)
class IngestResult:
    """What the client is told: counts, and each rejected index with its error envelope."""

    accepted: int
    duplicates: int
    rejected: list[dict[str, Any]]


def ingest_events(session: Session, events: Sequence[Mapping[str, Any]], *,
                  now: datetime | None = None) -> IngestResult:
    """Validate each raw event, store the valid ones in one committed transaction."""
    now = now or utcnow()
    rows, rejected = validate_events(events, now)
    accepted = _insert_new(session, _unique_by_event_id(rows))
    session.commit()
    duplicates = len(rows) - accepted
    EVENTS_INGESTED.labels("accepted").inc(accepted)
    EVENTS_INGESTED.labels("duplicate").inc(duplicates)
    EVENTS_INGESTED.labels("rejected").inc(len(rejected))
    return IngestResult(accepted=accepted, duplicates=duplicates, rejected=rejected)


def validate_events(events: Sequence[Any], now: datetime
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows ready to insert, and the rejected items as ``{"index", "error"}``."""
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for index, parsed in enumerate(_parse_each(events)):
        details = parsed if isinstance(parsed, list) else [
            {"field": f"events[{index}].{problem['field']}", "message": problem["message"]}
            for problem in event_problems(parsed, now)]
        if details:
            rejected.append({"index": index, "error": _error(details)})
        else:
            rows.append(_row(parsed, now))
    return rows, rejected


def _parse_each(events: Sequence[Any]) -> list[EventIn | list[dict[str, Any]]]:
    """One pydantic call for a clean batch; item by item only when some item is invalid."""
    try:
        return list(_BATCH.validate_python(events))
    except ValidationError:
        pass
    results: list[EventIn | list[dict[str, Any]]] = []
    for index, item in enumerate(events):
        try:
            results.append(EventIn.model_validate(item))
        except ValidationError as exc:
            results.append(validation_details(exc, prefix=f"events[{index}]"))
    return results


def _error(details: list[dict[str, Any]]) -> dict[str, Any]:
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return {"code": "validation_error", "message": f"{first['field']}: {first['message']}{more}",
            "details": details}


def _row(event: EventIn, now: datetime) -> dict[str, Any]:
    """The insert parameters; an event without ``event_id`` gets a server uuid (never deduped)."""
    name = default_name(event)
    return {
        "event_id": event.event_id or str(uuid.uuid4()),
        "unit_id": event.unit_id,
        "type": event.type,
        "name": name,
        "step": event.step if event.step is not None or event.type != "step" else name,
        "friction_kind": event.friction_kind,
        "value": None if event.value is None else float(event.value),
        "occurred_at": event.occurred_at or now,
        "received_at": now,
        "properties": event.properties,
    }


def _unique_by_event_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First occurrence of each id, sorted by id so concurrent batches lock rows in one order."""
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault(row["event_id"], row)
    return [unique[event_id] for event_id in sorted(unique)]


def _insert_new(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert the rows whose ``event_id`` is new; returns how many were inserted."""
    if not rows:
        return 0
    result = session.execute(_insert_ignoring_duplicates(session), rows)
    return len(result.all())


def _insert_ignoring_duplicates(session: Session) -> Insert:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (insert(_TABLE).on_conflict_do_nothing(index_elements=[_TABLE.c.event_id])
            .returning(_TABLE.c.event_id))
