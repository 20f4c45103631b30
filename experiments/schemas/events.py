"""Event ingestion schemas (SPEC §5).

Field-level rules live in :class:`EventIn`; rules that span fields (friction kind per
type, NPS range, a step's name) live in :func:`event_problems` so that each can name its
exact field. The time rules depend on the receipt and the batch's ``sent_at``: the
service applies them (``experiments.services.events.time_problem``).

:data:`CLEAN_EVENTS` is the fast lane for the usual batch, where every event is
valid: one pydantic-core pass with the per-type rules folded into a union tagged by
``type``. It is stricter than the rules above and only ever accepts what they accept,
so a batch it refuses simply takes the per-event path, which names each problem.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticSerializationError, to_json
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from experiments.schemas import (
    MAX_STEP_LENGTH,
    EventName,
    FrictionKind,
    StepName,
    Strict,
    UnitId,
)

MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 1024 * 1024
MAX_PROPERTIES_BYTES = 8 * 1024
MAX_PROPERTIES_DEPTH = 32
MAX_FUTURE = timedelta(hours=24)
# Bounds of SPEC §5: a value beyond them is a bug or an attack (two 1e308 values overflow
# every sum), and no event happened before the platform's oldest supported date.
MAX_ABS_VALUE = 1e12
EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)
EventType = Literal["conversion", "step", "friction", "nps", "custom"]
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ABS_VALUE,
                                      le=MAX_ABS_VALUE)]
ClientEventId = Annotated[str, Field(min_length=1, max_length=200)]

# RFC 3339 date-time with a mandatory offset; pydantic alone would also take unix times.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


# A NUL inside a JSON string is dumped as \u0000 after an even number of backslashes.
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def encode_properties(properties: dict[str, Any] | None) -> str:
    """The properties as compact JSON text, or ValueError saying why they cannot be stored.

    pydantic-core encodes (UTF-8, no spaces) several times faster than ``json``; the
    rare suspects (NaN, deep nesting) are confirmed by walking the value itself.
    """
    if not properties:
        return "{}"
    try:
        data = to_json(properties, inf_nan_mode="constants")  # NaN stays visible
    except PydanticSerializationError as exc:
        raise ValueError(_unencodable(str(exc))) from None
    if (b"NaN" in data or b"Infinity" in data) and not all(
            math.isfinite(node) for node, _ in _walk(properties) if isinstance(node, float)):
        raise ValueError("numbers must be finite")
    if len(data) > MAX_PROPERTIES_BYTES:
        raise ValueError(f"must be at most {MAX_PROPERTIES_BYTES} bytes of JSON "
                         f"(got {len(data)})")
    if b"\\u0000" in data and _ESCAPED_NUL.search(data):
        raise ValueError("strings must not contain NUL characters")
    if data.count(b"{") + data.count(b"[") > MAX_PROPERTIES_DEPTH and max(
            depth for node, depth in _walk(properties)
            if isinstance(node, dict | list)) > MAX_PROPERTIES_DEPTH:
        raise ValueError(f"must not nest deeper than {MAX_PROPERTIES_DEPTH} levels")
    return data.decode()


def encode_clean_properties(batch: list[dict[str, Any] | None]) -> list[str] | None:
    """Each event's properties as :func:`encode_properties` would store them, checked once
    for the whole batch; None if any is near a limit or holds a suspect token (NaN,
    Infinity, an escaped NUL), for :func:`encode_properties` to decide one by one."""
    try:
        encoded = [to_json(properties, inf_nan_mode="constants") if properties else b"{}"
                   for properties in batch]
    except PydanticSerializationError:
        return None
    for data in encoded:  # below this length, neither the size nor the depth can be over
        if len(data) > 2 * MAX_PROPERTIES_DEPTH and (
                len(data) > MAX_PROPERTIES_BYTES
                or data.count(b"{") + data.count(b"[") > MAX_PROPERTIES_DEPTH):
            return None
    joined = b"".join(encoded)
    if b"NaN" in joined or b"Infinity" in joined or b"\\u0000" in joined:
        return None
    return [data.decode() for data in encoded]


def _unencodable(reason: str) -> str:
    if "UnicodeEncodeError" in reason:
        return "strings must be valid Unicode (no lone surrogates)"
    if "depth" in reason:
        return f"must not nest deeper than {MAX_PROPERTIES_DEPTH} levels"
    return "must hold JSON values only"


def _walk(node: Any) -> Iterator[tuple[Any, int]]:
    """Every value with its nesting depth, without recursion (the input may be very deep)."""
    stack = [(node, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        if isinstance(node, dict | list):
            stack.extend((child, depth + 1) for child in
                         (node.values() if isinstance(node, dict) else node))


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
        return rfc3339(value)


def rfc3339(value: Any) -> datetime | None:
    """An RFC 3339 timestamp with its zone as an aware UTC datetime (None stays None);
    ValueError otherwise, so pydantic names the field."""
    if value is None:
        return None
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 timestamp with a timezone, "
                         "e.g. 2026-11-24T10:00:00Z")
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("is not a valid date and time") from None


ClientTime = Annotated[datetime | None, BeforeValidator(rfc3339),
                       WithJsonSchema({"type": ["string", "null"], "format": "date-time"})]

# The client's clock as it sent a request: any valid time, however wrong (a clock reset to
# 1970 is the commonest); the skew correction never overflows (services/clock.py).
SentAt = ClientTime


_NO_NUL = r"^[^\x00]*$"
_CLEAN_CONFIG = ConfigDict(extra="forbid", strict=True)
CleanId = Annotated[str, Field(min_length=1, max_length=200, pattern=_NO_NUL)]
CleanStep = Annotated[str, Field(min_length=1, max_length=MAX_STEP_LENGTH, pattern=_NO_NUL)]
# The common RFC 3339 shape only (T, Z or ±hh:mm, up to microseconds); anything else
# takes the per-event path. The service still parses it and checks the 24 h horizon.
CleanTimestamp = Annotated[str, Field(pattern=(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"))]


class _CleanEvent(TypedDict):
    __pydantic_config__ = _CLEAN_CONFIG  # type: ignore[misc]

    event_id: NotRequired[CleanId | None]
    unit_id: CleanId
    step: NotRequired[CleanStep | None]
    occurred_at: NotRequired[CleanTimestamp | None]
    properties: NotRequired[dict[str, Any]]


class _CleanNamed(_CleanEvent):
    """conversion and custom events need a name and refuse a friction kind."""

    type: Literal["conversion", "custom"]
    name: CleanId
    friction_kind: NotRequired[None]
    value: NotRequired[FiniteNumber | None]


class _CleanStep(_CleanEvent):
    """A step needs ``step`` or a ``name`` of at most 64 characters: the service checks it."""

    type: Literal["step"]
    name: NotRequired[CleanId | None]
    friction_kind: NotRequired[None]
    value: NotRequired[FiniteNumber | None]


class _CleanFriction(_CleanEvent):
    type: Literal["friction"]
    name: NotRequired[CleanId | None]
    friction_kind: FrictionKind
    value: NotRequired[FiniteNumber | None]


class _CleanNps(_CleanEvent):
    """Integral JSON scores only; 9.0 is valid too, through the per-event path."""

    type: Literal["nps"]
    name: NotRequired[CleanId | None]
    friction_kind: NotRequired[None]
    value: Annotated[int, Field(ge=0, le=10)]


CleanEvent = Annotated[_CleanNamed | _CleanStep | _CleanFriction | _CleanNps,
                       Field(discriminator="type")]
CLEAN_EVENTS = TypeAdapter(list[CleanEvent])


class CleanEvents(list[Any]):
    """A batch that passed :data:`CLEAN_EVENTS` whole: the service need not check it again."""


def event_problems(event: EventIn) -> list[dict[str, str]]:
    """Cross-field rules of SPEC §5, each with its field name (the time rules are the
    service's, which knows the receipt and ``sent_at``)."""
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
    if event.type == "step" and (problem := step_problem(event.step, event.name)) is not None:
        add(*problem)
    return problems


def step_problem(step: str | None, name: str | None) -> tuple[str, str] | None:
    """Why a step event cannot name its step, as (field, message); None when it can."""
    if step is not None:
        return None
    if name is None:
        return "step", "a step event needs 'step' (or 'name')"
    if len(name) > MAX_STEP_LENGTH:
        return "name", f"names the step when 'step' is absent: at most {MAX_STEP_LENGTH} characters"
    return None


def _is_nps_score(value: float) -> bool:
    return float(value).is_integer() and 0 <= value <= 10


_EVENT_DOC = (
    "Each item is an event object: unit_id (1-200 chars, required), type (conversion | step "
    "| friction | nps | custom, required), event_id (client id for dedupe, optional), name, "
    "step, friction_kind (error | abandonment | retry | rage_click | dead_click | slow_step | "
    "back_navigation | form_error | support_contact | bounce; required for friction), value "
    "(finite number, |value| <= 1e12; NPS: integer 0-10), occurred_at (RFC 3339 with "
    "timezone, default now, at most 24 h ahead of sent_at, not before 2000-01-01 once "
    "corrected by sent_at), properties (object, "
    "at most 8 KiB). Items are validated one by one: an invalid item is listed in "
    "`rejected` (200) and the others are stored."
)
_EVENT_EXAMPLE = {"event_id": "6f1c-1", "unit_id": "visitor-42", "type": "conversion",
                  "name": "purchase", "step": "payment", "value": 59.9,
                  "occurred_at": "2026-11-24T10:00:00Z", "properties": {"device": "mobile"}}


class EventBatch(Strict):
    """The envelope; each item is validated on its own so one bad event rejects only itself.

    Unknown fields are refused like in every other body: a misspelt ``sentAt`` would
    otherwise be dropped in silence and the batch stored with no skew correction."""

    # Items are deliberately untyped in the document: a bad item is a per-event rejection
    # (200), not a 422 of the whole request. The usual all-valid batch is checked right
    # here, straight from the JSON, by CLEAN_EVENTS; any other list passes as it is.
    events: Annotated[
        Annotated[list[CleanEvent], AfterValidator(CleanEvents)] | SkipValidation[list[Any]],
        Field(union_mode="left_to_right", description=_EVENT_DOC, examples=[[_EVENT_EXAMPLE]],
              json_schema_extra={"maxItems": MAX_BATCH_EVENTS}),
        WithJsonSchema({"type": "array", "items": {}}),
    ]

    sent_at: SentAt = Field(None, description=(
        "The client's clock when it sent the batch (RFC 3339), however wrong (a clock reset "
        "to 1970 is fine). Each event's time is then corrected by (received − sent_at), "
        "never later than the received time."),
        examples=["2026-11-24T10:00:02Z"])

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
