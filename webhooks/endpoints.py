"""Endpoint state shared by the API services and the sender: public shape, disabling."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from experiments.auth import Principal
from experiments.db import utcnow
from experiments.services.audit import json_safe, record_audit
from webhooks.models import WebhookDelivery, WebhookEndpoint


def endpoint_to_dict(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The public shape of an endpoint; the secret is deliberately absent."""
    return {"id": endpoint.id, "url": endpoint.url, "events": list(endpoint.events),
            "description": endpoint.description, "enabled": endpoint.enabled,
            "disabled_reason": endpoint.disabled_reason, "failing_since": endpoint.failing_since,
            "created_at": endpoint.created_at, "updated_at": endpoint.updated_at}


def endpoint_snapshot(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """A JSON-safe copy for audit entries."""
    return json_safe(endpoint_to_dict(endpoint))


def delivery_to_dict(delivery: WebhookDelivery) -> dict[str, Any]:
    """The public shape of one delivery log entry."""
    return {"id": delivery.id, "endpoint_id": delivery.endpoint_id,
            "message_id": delivery.message_id, "event_type": delivery.event_type,
            "status": delivery.status, "attempts": delivery.attempts,
            "next_attempt_at": delivery.next_attempt_at,
            "last_attempt_at": delivery.last_attempt_at,
            "response_status": delivery.response_status,
            "response_body": delivery.response_body, "last_error": delivery.last_error,
            "created_at": delivery.created_at, "payload": delivery.payload}


def disable_endpoint(session: Session, endpoint: WebhookEndpoint, reason: str,
                     principal: Principal) -> None:
    """Stop sending to an endpoint, say why in the API and record it in the audit log."""
    if not endpoint.enabled:
        return
    before = endpoint_snapshot(endpoint)
    endpoint.enabled = False
    endpoint.disabled_reason = reason[:200]
    endpoint.updated_at = utcnow()
    session.flush()
    record_audit(session, principal, "webhook.disable", target_type="webhook",
                 target_id=str(endpoint.id), before=before, after=endpoint_snapshot(endpoint))
