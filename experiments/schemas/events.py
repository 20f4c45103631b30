"""Event ingestion schemas (SPEC §5).

Field-level rules live in :class:`EventIn`; rules that span fields or depend on the
clock (friction kind per type, NPS range, future timestamps) live in
:func:`event_problems` so that each can name its exact field.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SkipValidation, field_validator

from experiments.schemas import EventName, FrictionKind, StepName, Strict, UnitId

MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 1024 * 1024
MAX_PROPERTIES_BYTES = 8 * 1024
MAX_PROPERTIES_DEPTH = 32
MAX_FUTURE = timedelta(hours=24)
EVENT_TYPES = ("conversion", "step", "friction", "nps", "custom")
EventType = Literal["conversion", "step", "friction", "nps", "custom"]
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
ClientEventId = Annotated[str, Field(min_length=1, max_length=200)]

# RFC 3339 date-time with a mandatory offset; pydantic alone would also take unix times.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored on every backend (NUL bytes, lone surrogates), if so."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _json_problem(properties: dict[str, Any]) -> str | None:
    """Walk the properties without recursion: depth, storable strings and finite numbers."""
    stack: list[tuple[Any, int]] = [(properties, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_PROPERTIES_DEPTH:
            return f"must not nest deeper than {MAX_PROPERTIES_DEPTH} levels"
        if isinstance(node, dict):
            for key, child in node.items():
                if (problem := text_problem(key)) is not None:
                    return f"keys {problem}"
                stack.append((child, depth + 1))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, str):
            if (problem := text_problem(node)) is not None:
                return f"strings {problem}"
        elif isinstance(node, float) and not math.isfinite(node):
            return "numbers must be finite"
    return None


class EventIn(Strict):
    """One event as a front end sends it; unknown fields are refused (typos lose data)."""

    event_id: ClientEventId | None = None
    unit_id: UnitId
    type: EventType
    name: EventName | None = None
    step: StepName | None = None
    friction_kind: FrictionKind | None = None
    value: FiniteNumber | None = None
    occurred_at: datetime | None = None
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("event_id", "unit_id", "name", "step")
    @classmethod
    def _storable_text(cls, value: str | None) -> str | None:
        if value is not None and (problem := text_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or not _RFC3339.match(value):
            raise ValueError("must be an RFC 3339 timestamp with a timezone, "
                             "e.g. 2026-11-24T10:00:00Z")
        try:
            return datetime.fromisoformat(value).astimezone(UTC)
        except (ValueError, OverflowError):
            raise ValueError("is not a valid date and time") from None

    @field_validator("properties")
    @classmethod
    def _small_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        if (problem := _json_problem(value)) is not None:
            raise ValueError(problem)
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_PROPERTIES_BYTES:
            raise ValueError(f"must be at most {MAX_PROPERTIES_BYTES} bytes of JSON (got {size})")
        return value


def event_problems(event: EventIn, now: datetime) -> list[dict[str, str]]:
    """Cross-field and clock rules of SPEC §5, each with its field name."""
    problems: list[dict[str, str]] = []

    def add(field: str, message: str) -> None:
        problems.append({"field": field, "message": message})

    if event.type == "friction" and event.friction_kind is None:
        add("friction_kind", "is required for type 'friction'")
    if event.type != "friction" and event.friction_kind is not None:
        add("friction_kind", "is only allowed for type 'friction'")
    if event.type == "nps" and (event.value is None or not _is_nps_score(event.value)):
        add("value", "an NPS answer needs an integer value from 0 to 10")
    if event.type in ("conversion", "custom") and event.name is None:
        add("name", f"is required for type {event.type!r}")
    if event.type == "step":
        if event.step is None and event.name is None:
            add("step", "a step event needs 'step' (or 'name')")
        elif event.step is None and event.name is not None and len(event.name) > 64:
            add("name", "names the step when 'step' is absent: at most 64 characters")
    if event.occurred_at is not None and event.occurred_at > now + MAX_FUTURE:
        add("occurred_at", "is more than 24 h in the future")
    return problems


def _is_nps_score(value: float) -> bool:
    return float(value).is_integer() and 0 <= value <= 10


def default_name(event: EventIn) -> str:
    """The stored name when the client left it out (validated events only)."""
    if event.name is not None:
        return event.name
    if event.type == "nps":
        return "nps"
    if event.type == "friction":
        return str(event.friction_kind)
    return str(event.step)


class EventBatch(BaseModel):
    """The envelope; each item is validated on its own so one bad event rejects only itself."""

    # SkipValidation keeps the documented item schema while items are checked one by one.
    events: SkipValidation[list[EventIn]] = Field(
        description=f"up to {MAX_BATCH_EVENTS} events, at most {MAX_BATCH_BYTES} bytes in all")

    @field_validator("events", mode="after")
    @classmethod
    def _is_list(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError("must be a list of events")
        return value


class FieldProblem(BaseModel):
    field: str
    message: str


class RejectedError(BaseModel):
    code: Literal["validation_error"]
    message: str
    details: list[FieldProblem]


class RejectedEvent(BaseModel):
    index: int
    error: RejectedError


class IngestOut(BaseModel):
    """The acknowledgement: sent only once the accepted events are committed."""

    accepted: int
    duplicates: int
    rejected: list[RejectedEvent]
