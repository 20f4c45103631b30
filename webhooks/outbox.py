"""Transactional outbox: deliveries are rows written in the transaction that caused them.

Each domain signal is sent with the causing session as ``sender`` before it commits,
so the delivery rows commit (or roll back) together with the change: a crash after
the commit loses nothing, and a rolled-back change sends nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.db import utcnow
from experiments.services.audit import json_safe
from experiments.signals import DOMAIN_SIGNALS
from webhooks.delivery import current_settings
from webhooks.models import WebhookDelivery, WebhookEndpoint
from webhooks.signing import new_message_id

logger = logging.getLogger(__name__)


def event_body(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """The Standard Webhooks body ``{"type", "timestamp", "data"}``, JSON-safe."""
    return {"type": event_type, "timestamp": utcnow().isoformat(),
            "data": json_safe(data)}


def enqueue(session: Session, endpoint: WebhookEndpoint, body: dict[str, Any], *,
            message_id: str) -> WebhookDelivery:
    """Add one delivery of ``body`` to ``endpoint`` to the caller's transaction."""
    first_delay_s = current_settings().first_delay_s()
    delivery = WebhookDelivery(
        endpoint=endpoint, message_id=message_id, event_type=body["type"], payload=body,
        status="pending", attempts=0, next_attempt_at=utcnow() + timedelta(seconds=first_delay_s))
    session.add(delivery)
    return delivery


def subscribed_endpoints(session: Session, event_type: str) -> list[WebhookEndpoint]:
    """Enabled endpoints whose filter includes ``event_type`` (filtered here: JSON is portable)."""
    endpoints = session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(True))
        .order_by(WebhookEndpoint.id)).all()
    return [endpoint for endpoint in endpoints if event_type in endpoint.events]


def enqueue_event(session: Session, event_type: str, data: dict[str, Any]) -> list[WebhookDelivery]:
    """Fan one domain event out to every subscribed endpoint, sharing one message id."""
    endpoints = subscribed_endpoints(session, event_type)
    if not endpoints:
        return []
    body = event_body(event_type, data)
    message_id = new_message_id()
    return [enqueue(session, endpoint, body, message_id=message_id) for endpoint in endpoints]


def _on_domain_signal(sender: Any, *, event_type: str, data: dict[str, Any],
                      **_: Any) -> None:
    if not isinstance(sender, Session):
        logger.error("domain signal %s sent without a session; no webhook queued", event_type)
        return
    enqueue_event(sender, event_type, data)


def connect_signals() -> None:
    """Subscribe the outbox to every domain signal (idempotent: blinker keys by receiver)."""
    for signal in DOMAIN_SIGNALS:
        signal.connect(_on_domain_signal, weak=False)
