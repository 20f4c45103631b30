"""Request and response schemas of the webhooks API (SPEC §7)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from experiments.schemas import ListQuery, Strict, Text
from experiments.signals import EVENT_TYPES
from webhooks.delivery import current_settings
from webhooks.ssrf import UnsafeUrl, check_url

TEST_EVENT = "webhook.test"
WEBHOOK_EVENT_TYPES: tuple[str, ...] = (*EVENT_TYPES, TEST_EVENT)
DeliveryStatus = Literal["pending", "sending", "delivered", "failed"]


def _safe_target(url: str) -> str:
    """The SSRF guard, checked with the other fields so that one 422 lists every problem."""
    try:
        check_url(url, allow_private=current_settings().allow_private)
    except UnsafeUrl as exc:
        raise ValueError(str(exc)) from None
    return url


Url = Annotated[Text, Field(min_length=1, max_length=2048,
                            examples=["https://hooks.example.com/parcours"]),
                AfterValidator(_safe_target)]
Description = Annotated[Text, Field(max_length=2000)]


def _known_event_type(event: str) -> str:
    """Checked per item so that the 422 names ``events[i]``."""
    if event not in WEBHOOK_EVENT_TYPES:
        raise ValueError(f"unknown event type {event!r}; one of {', '.join(WEBHOOK_EVENT_TYPES)}")
    return event


def _unique(events: list[str]) -> list[str]:
    return list(dict.fromkeys(events))


EventType = Annotated[str, Field(max_length=64, examples=["experiment.decided"]),
                      AfterValidator(_known_event_type)]
# Duplicates are dropped (first occurrence kept), so the cap allows a list written twice.
EventList = Annotated[list[EventType], Field(min_length=1, max_length=len(WEBHOOK_EVENT_TYPES) * 2),
                      AfterValidator(_unique)]


class EndpointIn(Strict):
    """A new endpoint: where to send and which event types."""

    url: Url
    events: EventList
    description: Description = ""


class EndpointPatch(Strict):
    """Any subset of the writable fields; ``enabled`` turns delivery off or back on."""

    url: Url | None = None
    events: EventList | None = None
    description: Description | None = None
    enabled: bool | None = None


class EndpointOut(BaseModel):
    id: int
    url: str
    events: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


class EndpointCreated(EndpointOut):
    """Returned once, on creation: the only time the signing secret is shown."""

    secret: str = Field(examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])


class EndpointList(BaseModel):
    items: list[EndpointOut]
    next_cursor: str | None


class DeliveryOut(BaseModel):
    id: int
    endpoint_id: int
    message_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    response_status: int | None
    response_body: str | None
    last_error: str | None
    created_at: datetime
    payload: dict[str, Any]


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class DeliveryListQuery(ListQuery):
    status: DeliveryStatus | None = None
