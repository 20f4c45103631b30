"""Event ingestion (SPEC §5): per-event validation, dedupe by ``event_id``, durable acks.

The usual batch, every event valid, is checked in one pydantic-core pass
(``CLEAN_EVENTS``, already while the request body is parsed) and turned straight
into driver rows; any other batch is validated event by event, so that each
rejected index gets its own error. The valid rows are inserted in one
transaction by ``INSERT … ON CONFLICT (event_id) DO NOTHING`` (on PostgreSQL one
statement over the batch's column arrays, on SQLite a driver ``executemany``) whose
rowcount is the number of new events, so the counts stay
exact when several hosts receive the same resend at once (rows are inserted in
``event_id`` order, so concurrent batches never deadlock). The function returns
only after the commit. Values are bound in the driver's own format (ISO text on
SQLite, JSON text for properties) because per-row SQLAlchemy type processing
would cost more than the insert itself (see bench/bench_events.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy import DateTime
from sqlalchemy.engine import Compiled, Dialect
from sqlalchemy.orm import Session

from experiments.db import dialect_insert, utcnow
from experiments.errors import validation_details
from experiments.models import Event
from experiments.schemas.events import (
    CLEAN_EVENTS,
    EARLIEST_OCCURRED_AT,
    MAX_FUTURE,
    CleanEvents,
    EventIn,
    encode_clean_properties,
    encode_properties,
    event_problems,
    step_problem,
)
from experiments.services.clock import corrected

EVENTS_INGESTED = Counter("parcours_events_ingested_total", "Events received by ingestion",
                          ["result"])
_TABLE = Event.__table__
_COLUMNS = ("event_id", "unit_id", "type", "name", "step", "friction_kind", "value",
            "occurred_at", "received_at", "properties", "client_occurred_at")
Row = tuple[Any, ...]  # one event's driver parameters, in _COLUMNS order
BindTime = Callable[[datetime], Any]  # an aware UTC datetime as the driver takes it


def _as_is(value: datetime) -> datetime:
    return value


@dataclass(frozen=True)
class IngestResult:
    """What the client is told: counts, and each rejected index with its error envelope."""

    accepted: int
    duplicates: int
    rejected: list[dict[str, Any]]


def ingest_events(session: Session, events: Sequence[Mapping[str, Any]], *,
                  now: datetime | None = None, sent_at: datetime | None = None,
                  batch_id: uuid.UUID | None = None) -> IngestResult:
    """Validate each raw event, store the valid ones in one committed transaction.

    ``sent_at`` (the client's clock when it sent the batch) corrects each event's time
    for the client's clock skew (:func:`~experiments.services.clock.corrected`).
    ``batch_id`` names this delivery of the batch: an event without ``event_id`` gets an
    id derived from it and its position, so running the same delivery again (a retry
    after a lost connection whose commit may have landed) stores nothing twice.
    """
    now = (now or utcnow()).astimezone(UTC)  # stored as UTC text on SQLite: normalise first
    rows, rejected = validate_events(events, now, _driver_time(session.get_bind().dialect),
                                     sent_at)
    rows = _with_server_ids(rows, batch_id or uuid.uuid4())
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


def validate_events(events: Sequence[Any], now: datetime, bind_time: BindTime = _as_is,
                    sent_at: datetime | None = None
                    ) -> tuple[list[Row], list[dict[str, Any]]]:
    """Rows ready to insert, times bound by ``bind_time``; the rejected items as
    ``{"index", "error"}``.

    The time rules are those of :func:`time_problem`: any clock the client has, a
    wrong one included, is accepted, and each event is judged on its own time.
    """
    rows = _clean_rows(events, now, bind_time, sent_at)
    if rows is not None:
        return rows, []
    rows, rejected, received_at = [], [], bind_time(now)
    for index, parsed in enumerate(_parse_each(events)):
        if isinstance(parsed, list):
            rejected.append({"index": index, "error": _error(parsed)})
            continue
        problems = event_problems(parsed)
        if parsed.occurred_at is not None and (
                problem := time_problem(parsed.occurred_at, now, sent_at)) is not None:
            problems.append({"field": "occurred_at", "message": problem})
        try:
            properties = encode_properties(parsed.properties)
        except ValueError as exc:
            problems.append({"field": "properties", "message": str(exc)})
        if problems:
            rejected.append({"index": index, "error": _error([
                {"field": f"events[{index}].{p['field']}", "message": p["message"]}
                for p in problems])})
        else:
            rows.append(_row(parsed.__dict__, *_times(parsed.occurred_at, now, sent_at, bind_time),
                             received_at, properties))
    return rows, rejected


def _clean_rows(events: Sequence[Any], now: datetime, bind_time: BindTime,
                sent_at: datetime | None) -> list[Row] | None:
    """The rows of a batch whose every event is valid, in one pydantic-core pass; else None.

    ``CLEAN_EVENTS`` holds the field and per-type rules; the few left (a step's name,
    the clock, properties) are checked here. Any doubt returns None and the batch takes
    the per-event path, which decides and names every problem.
    """
    if isinstance(events, CleanEvents):
        clean: Sequence[Mapping[str, Any]] = events  # checked while parsing the request
    else:
        try:
            clean = CLEAN_EVENTS.validate_python(events, strict=True)
        except ValidationError:
            return None
    texts = encode_clean_properties([event.get("properties") for event in clean])
    if texts is None:
        return None
    received_at, rows = bind_time(now), []
    try:
        for event, properties in zip(clean, texts, strict=True):
            occurred_at = event.get("occurred_at")
            if occurred_at is None:
                times = bind_time(now), None
            else:
                occurred = datetime.fromisoformat(occurred_at).astimezone(UTC)
                stored, problem = _stored_time(occurred, now, sent_at)
                if problem is not None:
                    return None
                times = bind_time(stored), bind_time(occurred)
            if event["type"] == "step" and step_problem(event.get("step"),
                                                        event.get("name")) is not None:
                return None
            rows.append(_row(event, *times, received_at, properties))
    except (ValueError, OverflowError):  # an impossible date, or an offset out of range
        return None
    return rows


def time_problem(occurred_at: datetime, now: datetime, sent_at: datetime | None
                 ) -> str | None:
    """Why an event's ``occurred_at`` is refused (SPEC §5), or None: more than 24 h ahead
    of the client's own clock (``sent_at`` when given, so a clock ahead is no reason), or
    before 2000-01-01 once on the server's clock. A wrong clock is thus never a reason in
    itself: a device reset to 1970 whose events read 1970 too has them stored at the
    right, present time, and only an event far off on its own clock is refused."""
    return _stored_time(occurred_at, now, sent_at)[1]


def _stored_time(occurred_at: datetime, now: datetime, sent_at: datetime | None
                 ) -> tuple[datetime, str | None]:
    """The time an event is stored at (:func:`corrected`) and why it is refused, or None:
    the rules of :func:`time_problem`, which the clean lane applies without a second
    correction."""
    stored = corrected(occurred_at, now, sent_at)
    if occurred_at - (sent_at or now) > MAX_FUTURE:
        return stored, "is more than 24 h in the future"
    if stored < EARLIEST_OCCURRED_AT:
        return stored, ("must be 2000-01-01T00:00:00Z or later" if sent_at is None else
                        "is before 2000-01-01T00:00:00Z once corrected by sent_at")
    return stored, None


def _parse_each(events: Sequence[Any]) -> list[EventIn | list[dict[str, Any]]]:
    """Each item as an :class:`EventIn`, or its error details."""
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


def _times(occurred_at: datetime | None, now: datetime, sent_at: datetime | None,
           bind_time: BindTime) -> tuple[Any, Any]:
    """(stored time, raw client time) bound for the driver: the client's time corrected
    for its skew, or the received time when it sent none (then no raw time)."""
    if occurred_at is None:
        return bind_time(now), None
    return bind_time(corrected(occurred_at, now, sent_at)), bind_time(occurred_at)


def _row(event: Mapping[str, Any], occurred_at: Any, client_occurred_at: Any, received_at: Any,
         properties: str) -> Row:
    """The driver's parameters in ``_COLUMNS`` order, with names and steps defaulted.

    An event without ``event_id`` gets its server id in :func:`_with_server_ids`.
    """
    get = event.get
    kind, name, step, friction_kind, value = (
        event["type"], get("name"), get("step"), get("friction_kind"), get("value"))
    if name is None:
        name = "nps" if kind == "nps" else friction_kind if kind == "friction" else step
    if step is None and kind == "step":
        step = name
    return (get("event_id"), event["unit_id"], kind, name, step,
            friction_kind, None if value is None else float(value), occurred_at, received_at,
            properties, client_occurred_at)


def _with_server_ids(rows: list[Row], batch_id: uuid.UUID) -> list[Row]:
    """Rows whose event has no ``event_id`` get ``uuid5(batch_id, position)``."""
    return [row if row[0] else (str(uuid.uuid5(batch_id, str(index))), *row[1:])
            for index, row in enumerate(rows)]


def _unique_by_event_id(rows: list[Row]) -> list[Row]:
    """First occurrence of each id, sorted by id so concurrent batches lock rows in one order."""
    unique: dict[str, Row] = {}
    for row in rows:
        unique.setdefault(row[0], row)
    return [unique[event_id] for event_id in sorted(unique)]


def _insert_new(session: Session, rows: list[Row]) -> int:
    """Insert the rows whose ``event_id`` is new; returns how many were inserted."""
    if not rows:
        return 0
    connection = session.connection()
    if connection.dialect.name == "postgresql":  # one statement, one round trip
        columns = [list(column) for column in zip(*rows, strict=True)]
        return int(connection.exec_driver_sql(_UNNEST_INSERT, tuple(columns)).rowcount)
    result = connection.exec_driver_sql(_compiled_insert(connection.dialect).string, rows)
    return int(result.rowcount)


# PostgreSQL takes a batch as one array per column: a pipelined ``executemany`` costs a
# network wait per few rows, and under gevent workers each wait is a trip through the
# event loop (bench_events: 0.34× of the baseline that way, 0.7× with one statement).
_UNNEST_INSERT = (
    f"INSERT INTO {_TABLE.name} ({', '.join(_COLUMNS)}) "
    "SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[], "
    "%s::varchar[], %s::varchar[], %s::float8[], %s::timestamptz[], %s::timestamptz[], "
    "%s::text[]::jsonb[], %s::timestamptz[]) ON CONFLICT (event_id) DO NOTHING")


_COMPILED: dict[str, Compiled] = {}


def _compiled_insert(dialect: Dialect) -> Compiled:
    """``INSERT … ON CONFLICT (event_id) DO NOTHING`` with positional parameters, compiled
    once per dialect, for a driver ``executemany`` of rows (SQLite; PostgreSQL takes
    ``_UNNEST_INSERT``)."""
    if dialect.name not in _COMPILED:
        statement = dialect_insert(dialect.name)(_TABLE).values(dict.fromkeys(_COLUMNS))
        compiled = statement.on_conflict_do_nothing(
            index_elements=[_TABLE.c.event_id]).compile(dialect=dialect, for_executemany=True)
        if compiled.positiontup != list(_COLUMNS):  # rows are tuples in this order
            raise RuntimeError(f"unexpected parameter order {compiled.positiontup}")
        _COMPILED[dialect.name] = compiled
    return _COMPILED[dialect.name]


def _driver_time(dialect: Dialect) -> BindTime:
    """How the dialect's DateTime column binds an aware UTC datetime (text on SQLite)."""
    if dialect.name == "sqlite":
        return sqlite_time
    return DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect) or _as_is


def sqlite_time(value: datetime) -> str:
    """The text SQLAlchemy's SQLite DATETIME stores (a test holds them equal), at half the
    cost of its bind processor: once per event, it was the dearest step of a clean batch."""
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031 (twice as fast as f"")
        value.year, value.month, value.day, value.hour, value.minute, value.second,
        value.microsecond)
