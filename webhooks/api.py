"""Webhooks resource (SPEC §7, admin key): thin views over ``webhooks.services``."""

from __future__ import annotations

from flask import Blueprint

from experiments.api.routing import api_route, current_principal
from experiments.db import db_session
from experiments.schemas import ListQuery
from webhooks import services
from webhooks.endpoints import delivery_to_dict, endpoint_to_dict
from webhooks.models import WebhookDelivery, WebhookEndpoint
from webhooks.schemas import (
    DeliveryList,
    DeliveryListQuery,
    DeliveryOut,
    EndpointCreated,
    EndpointIn,
    EndpointList,
    EndpointOut,
    EndpointPatch,
)

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1")
TAGS = ("webhooks",)


def _out(endpoint: WebhookEndpoint) -> EndpointOut:
    return EndpointOut.model_validate(endpoint_to_dict(endpoint))


def _delivery(delivery: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut.model_validate(delivery_to_dict(delivery))


@api_route(bp, "/webhooks", "POST", body=EndpointIn, response=EndpointCreated, status=201,
           tags=TAGS)
def create_webhook(body: EndpointIn) -> EndpointCreated:
    """Subscribe a URL to event types; the signing secret is shown only in this response."""
    endpoint, secret = services.create_endpoint(db_session(), body, current_principal())
    return EndpointCreated.model_validate({**endpoint_to_dict(endpoint), "secret": secret})


@api_route(bp, "/webhooks", query=ListQuery, response=EndpointList, tags=TAGS)
def list_webhooks(query: ListQuery) -> EndpointList:
    """List webhook endpoints."""
    rows, next_cursor = services.list_endpoints(db_session(), limit=query.limit,
                                                cursor=query.cursor)
    return EndpointList(items=[_out(row) for row in rows], next_cursor=next_cursor)


@api_route(bp, "/webhooks/<int:endpoint_id>", response=EndpointOut, errors=(404,), tags=TAGS)
def get_webhook(endpoint_id: int) -> EndpointOut:
    """Get one webhook endpoint (without its secret)."""
    return _out(services.get_endpoint(db_session(), endpoint_id))


@api_route(bp, "/webhooks/<int:endpoint_id>", "PATCH", body=EndpointPatch,
           response=EndpointOut, errors=(404,), tags=TAGS)
def update_webhook(endpoint_id: int, body: EndpointPatch) -> EndpointOut:
    """Change url, events or description, or enable/disable the endpoint."""
    return _out(services.update_endpoint(db_session(), endpoint_id, body, current_principal()))


@api_route(bp, "/webhooks/<int:endpoint_id>", "DELETE", status=204, errors=(404,), tags=TAGS)
def delete_webhook(endpoint_id: int) -> None:
    """Delete an endpoint and its delivery log."""
    services.delete_endpoint(db_session(), endpoint_id, current_principal())


@api_route(bp, "/webhooks/<int:endpoint_id>/deliveries", query=DeliveryListQuery,
           response=DeliveryList, errors=(404,), tags=TAGS)
def list_webhook_deliveries(endpoint_id: int, query: DeliveryListQuery) -> DeliveryList:
    """The delivery log, newest first: status, attempts, last response code and body."""
    rows, next_cursor = services.list_deliveries(
        db_session(), endpoint_id, status=query.status, limit=query.limit, cursor=query.cursor)
    return DeliveryList(items=[_delivery(row) for row in rows], next_cursor=next_cursor)


@api_route(bp, "/webhooks/<int:endpoint_id>/deliveries/<int:delivery_id>/retry", "POST",
           response=DeliveryOut, errors=(404, 409), tags=TAGS)
def retry_webhook_delivery(endpoint_id: int, delivery_id: int) -> DeliveryOut:
    """Attempt a delivery again now; returns it after that attempt."""
    return _delivery(services.retry_delivery(db_session(), endpoint_id, delivery_id,
                                             current_principal()))


@api_route(bp, "/webhooks/<int:endpoint_id>/test", "POST", response=DeliveryOut,
           errors=(404, 409), tags=TAGS)
def test_webhook(endpoint_id: int) -> DeliveryOut:
    """Send a ``webhook.test`` event now; returns the delivery after that attempt."""
    return _delivery(services.send_test(db_session(), endpoint_id, current_principal()))
