"""Event ingestion (SPEC §5): per-event validation, dedupe by ``event_id``, durable acks.

A batch is validated event by event; the valid ones are inserted in one
transaction by a driver ``executemany`` of a Core ``INSERT … ON CONFLICT (event_id)
DO NOTHING`` whose summed rowcount is the number of new events, so the counts stay
exact when several hosts receive the same resend at once (rows are inserted in
``event_id`` order, so concurrent batches never deadlock). The function returns
only after the commit. Values are bound in the driver's own format (ISO text on
SQLite, JSON text for properties) because per-row SQLAlchemy type processing
would cost more than the insert itself (see bench/bench_events.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import DateTime
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Compiled, Dialect
from sqlalchemy.orm import Session

from experiments.db import utcnow
from experiments.errors import validation_details
from experiments.models import Event
from experiments.schemas.events import EventIn, default_name, encode_properties, event_problems

EVENTS_INGESTED = Counter("parcours_events_ingested_total", "Events received by ingestion",
                          ["result"])
_BATCH = TypeAdapter(list[EventIn])
_TABLE = Event.__table__
_COLUMNS = ("event_id", "unit_id", "type", "name", "step", "friction_kind", "value",
            "occurred_at", "received_at", "properties")


@dataclass(frozen=True)
class IngestResult:
    """What the client is told: counts, and each rejected index with its error envelope."""

    accepted: int
    duplicates: int
    rejected: list[dict[str, Any]]


def ingest_events(session: Session, events: Sequence[Mapping[str, Any]], *,
                  now: datetime | None = None) -> IngestResult:
    """Validate each raw event, store the valid ones in one committed transaction."""
    now = (now or utcnow()).astimezone(UTC)  # stored as UTC text on SQLite: normalise first
    rows, rejected = validate_events(events, now)
    try:
        accepted = _insert_new(session, _unique_by_event_id(rows))
        session.commit()
    except BaseException:
        session.rollback()  # nothing acknowledged, nothing half-stored: the client resends
        raise
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
        if isinstance(parsed, list):
            rejected.append({"index": index, "error": _error(parsed)})
            continue
        problems = event_problems(parsed, now)
        try:
            properties = encode_properties(parsed.properties)
        except ValueError as exc:
            problems.append({"field": "properties", "message": str(exc)})
        if problems:
            rejected.append({"index": index, "error": _error([
                {"field": f"events[{index}].{p['field']}", "message": p["message"]}
                for p in problems])})
        else:
            rows.append(_row(parsed, now, properties))
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


def _row(event: EventIn, now: datetime, properties: str) -> dict[str, Any]:
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
        "properties": properties,
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
    connection = session.connection()
    dialect = connection.dialect
    compiled = _compiled_insert(dialect)
    to_driver_time = _driver_time(dialect)
    received_at = to_driver_time(rows[0]["received_at"])  # one receipt time per batch
    for row in rows:
        row["occurred_at"] = to_driver_time(row["occurred_at"])
        row["received_at"] = received_at
    params: list[Any] = rows
    if compiled.positiontup is not None:
        params = list(map(itemgetter(*compiled.positiontup), rows))
    result = connection.exec_driver_sql(compiled.string, params)
    return int(result.rowcount)


_COMPILED: dict[str, Compiled] = {}


def _compiled_insert(dialect: Dialect) -> Compiled:
    """``INSERT … ON CONFLICT (event_id) DO NOTHING`` compiled once per dialect."""
    if dialect.name not in _COMPILED:
        insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        statement = insert(_TABLE).values({column: None for column in _COLUMNS})
        _COMPILED[dialect.name] = statement.on_conflict_do_nothing(
            index_elements=[_TABLE.c.event_id]).compile(dialect=dialect, for_executemany=True)
    return _COMPILED[dialect.name]


def _driver_time(dialect: Dialect) -> Any:
    """How the dialect's DateTime column binds an aware UTC datetime (text on SQLite)."""
    processor = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)
