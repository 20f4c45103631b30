"""Webhook endpoints and their delivery log: the business rules behind the API and admin UI.

Every function takes the caller's session (and principal for changes), like
``experiments.services.lifecycle``, and commits the change with its audit entry.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.auth import Principal
from experiments.db import utcnow
from experiments.errors import Conflict, NotFound, validated
from experiments.services.audit import record_audit
from experiments.services.pagination import paginate
from webhooks.delivery import deliver_due
from webhooks.endpoints import disable_endpoint, endpoint_snapshot
from webhooks.models import WebhookDelivery, WebhookEndpoint
from webhooks.outbox import enqueue, event_body
from webhooks.schemas import TEST_EVENT, EndpointIn, EndpointPatch
from webhooks.signing import generate_secret, new_message_id


def _validated(model: type[Any], data: Any, message: str) -> Any:
    """Accept the schema or a plain dict (admin forms); a bad dict is a 422."""
    return data if isinstance(data, model) else validated(model, data, message)


def create_endpoint(session: Session, data: EndpointIn | dict[str, Any],
                    principal: Principal) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint; returns it with its secret, which is never shown again."""
    # The schema also runs the SSRF guard on ``url``, so one 422 lists every bad field.
    fields = _validated(EndpointIn, data, "the webhook endpoint is invalid")
    secret = generate_secret()
    endpoint = WebhookEndpoint(url=fields.url, events=list(fields.events),
                               description=fields.description, secret=secret, enabled=True)
    session.add(endpoint)
    session.flush()
    record_audit(session, principal, "webhook.create", target_type="webhook",
                 target_id=str(endpoint.id), after=endpoint_snapshot(endpoint))
    session.commit()
    return endpoint, secret


def get_endpoint(session: Session, endpoint_id: int) -> WebhookEndpoint:
    """The endpoint with this id, or 404."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise NotFound(f"no webhook endpoint with id {endpoint_id}")
    return endpoint


def list_endpoints(session: Session, *, limit: int = 50,
                   cursor: str | None = None) -> tuple[list[WebhookEndpoint], str | None]:
    """Endpoints in creation order."""
    rows, next_cursor = paginate(session, select(WebhookEndpoint), WebhookEndpoint.id,
                                 limit=limit, cursor=cursor)
    return list(rows), next_cursor


def update_endpoint(session: Session, endpoint_id: int, data: EndpointPatch | dict[str, Any],
                    principal: Principal) -> WebhookEndpoint:
    """Change url, event filter, description, or enable/disable the endpoint."""
    patch = _validated(EndpointPatch, data, "the webhook endpoint is invalid")
    endpoint = get_endpoint(session, endpoint_id)
    changes = patch.model_dump(exclude_unset=True, exclude_none=True)
    enabled = changes.pop("enabled", None)
    if enabled is False and endpoint.enabled:
        disable_endpoint(session, endpoint, f"disabled by {principal.actor}", principal)
    before = endpoint_snapshot(endpoint)
    for name, value in changes.items():
        setattr(endpoint, name, value)
    action = "webhook.update"
    if enabled is True and not endpoint.enabled:
        endpoint.enabled, endpoint.disabled_reason, endpoint.failing_since = True, None, None
        action = "webhook.enable"
    if changes or action == "webhook.enable":
        endpoint.updated_at = utcnow()
        session.flush()
        record_audit(session, principal, action, target_type="webhook",
                     target_id=str(endpoint.id), before=before, after=endpoint_snapshot(endpoint))
    session.commit()
    return endpoint


def delete_endpoint(session: Session, endpoint_id: int, principal: Principal) -> None:
    """Delete an endpoint and its delivery log."""
    endpoint = get_endpoint(session, endpoint_id)
    before = endpoint_snapshot(endpoint)
    session.delete(endpoint)
    record_audit(session, principal, "webhook.delete", target_type="webhook",
                 target_id=str(endpoint_id), before=before)
    session.commit()


def list_deliveries(session: Session, endpoint_id: int, *, status: str | None = None,
                    limit: int = 50, cursor: str | None = None
                    ) -> tuple[list[WebhookDelivery], str | None]:
    """The endpoint's delivery log, newest first, optionally by status."""
    get_endpoint(session, endpoint_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    rows, next_cursor = paginate(session, query, WebhookDelivery.id, limit=limit, cursor=cursor,
                                 descending=True)
    return list(rows), next_cursor


def get_delivery(session: Session, endpoint_id: int, delivery_id: int) -> WebhookDelivery:
    """One delivery of this endpoint, or 404."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.endpoint_id != endpoint_id:
        raise NotFound(f"no delivery {delivery_id} for webhook endpoint {endpoint_id}")
    return delivery


def _require_enabled(endpoint: WebhookEndpoint) -> None:
    if not endpoint.enabled:
        raise Conflict(f"webhook endpoint {endpoint.id} is disabled "
                       f"({endpoint.disabled_reason}); enable it first")


def retry_delivery(session: Session, endpoint_id: int, delivery_id: int,
                   principal: Principal) -> WebhookDelivery:
    """Make a delivery due now: one more attempt for a failed one, a resend for a delivered one."""
    delivery = get_delivery(session, endpoint_id, delivery_id)
    _require_enabled(delivery.endpoint)
    if delivery.status == "sending" and (delivery.next_attempt_at or utcnow()) > utcnow():
        raise Conflict(f"delivery {delivery_id} is being sent right now")
    before = {"status": delivery.status, "attempts": delivery.attempts}
    delivery.status, delivery.next_attempt_at = "pending", utcnow()
    record_audit(session, principal, "webhook.retry", target_type="webhook_delivery",
                 target_id=str(delivery.id), before=before,
                 after={"status": "pending", "endpoint_id": endpoint_id})
    session.commit()
    return _sent_now(session, delivery)


def send_test(session: Session, endpoint_id: int, principal: Principal) -> WebhookDelivery:
    """Queue a ``webhook.test`` event to this endpoint (whatever its filter) and send it."""
    endpoint = get_endpoint(session, endpoint_id)
    _require_enabled(endpoint)
    body = event_body(TEST_EVENT, {"endpoint_id": endpoint.id, "requested_by": principal.actor})
    delivery = enqueue(session, endpoint, body, message_id=new_message_id())
    delivery.next_attempt_at = utcnow()
    session.flush()
    record_audit(session, principal, "webhook.test", target_type="webhook_delivery",
                 target_id=str(delivery.id), after={"endpoint_id": endpoint.id})
    session.commit()
    return _sent_now(session, delivery)


def _sent_now(session: Session, delivery: WebhookDelivery) -> WebhookDelivery:
    """Attempt one delivery in this request (the scheduler would pick it up otherwise)."""
    if has_app_context():
        deliver_due(current_app._get_current_object(), ids=[delivery.id])  # type: ignore[attr-defined]
        session.refresh(delivery)
    return delivery
