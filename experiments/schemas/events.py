"""Event ingestion schemas (SPEC §5).

Field-level rules live in :class:`EventIn`; rules that span fields or depend on the
clock (friction kind per type, NPS range, future timestamps) live in
:func:`event_problems` so that each can name its exact field.
"""

from __future__ import annotations

import json
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


# A NUL inside a JSON string is dumped as \u0000 after an even number of backslashes.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


# One encoder: json.dumps with options would build a new encoder per call (hot path).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_properties(properties: dict[str, Any]) -> str:
    """The properties as compact JSON text, or ValueError saying why they cannot be stored."""
    if not properties:
        return "{}"
    try:
        text = _ENCODER.encode(properties)
        size = len(text.encode())
    except UnicodeEncodeError:  # before ValueError, its base class
        raise ValueError("strings must be valid Unicode (no lone surrogates)") from None
    except ValueError:
        raise ValueError("numbers must be finite") from None
    except RecursionError:
        raise ValueError(f"must not nest deeper than {MAX_PROPERTIES_DEPTH} levels") from None
    if size > MAX_PROPERTIES_BYTES:
        raise ValueError(f"must be at most {MAX_PROPERTIES_BYTES} bytes of JSON (got {size})")
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise ValueError("strings must not contain NUL characters")
    if text.count("{") + text.count("[") > MAX_PROPERTIES_DEPTH and _depth(properties) > (
            MAX_PROPERTIES_DEPTH):
        raise ValueError(f"must not nest deeper than {MAX_PROPERTIES_DEPTH} levels")
    return text


def _depth(node: Any) -> int:
    """Nesting depth without recursion (the input may be deeper than the stack allows)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in
                         (node.values() if isinstance(node, dict) else node))
    return deepest


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


def event_problems(event: EventIn, now: datetime) -> list[dict[str, str]]:
    """Cross-field and clock rules of SPEC §5, each with its field name."""
    problems: list[dict[str, str]] = []

    def add(field: str, message: str) -> None:
        problems.append({"field": field, "message": message})

    for field in ("event_id", "unit_id", "name", "step"):
        value = getattr(event, field)
        if value is not None and "\x00" in value:
            add(field, "must not contain NUL characters")
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


_EVENT_DOC = (
    "Each item is an event object: unit_id (1-200 chars, required), type (conversion | step "
    "| friction | nps | custom, required), event_id (client id for dedupe, optional), name, "
    "step, friction_kind (error | abandonment | retry | rage_click | dead_click | slow_step | "
    "back_navigation | form_error | support_contact | bounce; required for friction), value "
    "(number; NPS: integer 0-10), occurred_at (RFC 3339 with timezone, default now, at most "
    "24 h ahead), properties (object, at most 8 KiB). Items are validated one by one: an "
    "invalid item is listed in `rejected` (200) and the others are stored."
)
_EVENT_EXAMPLE = {"event_id": "6f1c-1", "unit_id": "visitor-42", "type": "conversion",
                  "name": "purchase", "step": "payment", "value": 59.9,
                  "occurred_at": "2026-11-24T10:00:00Z", "properties": {"device": "mobile"}}


class EventBatch(BaseModel):
    """The envelope; each item is validated on its own so one bad event rejects only itself."""

    # Items are deliberately untyped here: a bad item is a per-event rejection (200), not a
    # 422 of the whole request, so the document must not promise otherwise.
    events: SkipValidation[list[Any]] = Field(
        description=_EVENT_DOC, examples=[[_EVENT_EXAMPLE]],
        json_schema_extra={"maxItems": MAX_BATCH_EVENTS})

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
