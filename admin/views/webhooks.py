"""Admin-only webhook pages: endpoints, their deliveries, retry and test sends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import render_template, request
from werkzeug.wrappers import Response

from admin.blueprint import bp
from admin.format import error_text
from admin.session_auth import principal, requires
from admin.views import run_action
from experiments.db import db_session
from experiments.errors import ApiError
from webhooks import services
from webhooks.schemas import WEBHOOK_EVENT_TYPES


def _page(status: int = 200, **context: Any) -> tuple[str, int]:
    rows, next_cursor = services.list_endpoints(db_session(), limit=200,
                                                cursor=request.args.get("cursor"))
    context.setdefault("form", {"url": "", "description": "", "events": ["experiment.decided"]})
    return render_template("admin/webhooks.html", endpoints=rows, next_cursor=next_cursor,
                           event_types=WEBHOOK_EVENT_TYPES, **context), status


@bp.route("/webhooks", methods=["GET", "POST"])
@requires("admin")
def webhooks() -> tuple[str, int]:
    """List endpoints; create one (its signing secret is shown once)."""
    if request.method == "GET":
        return _page()
    form = {"url": request.form.get("url", "").strip(),
            "description": request.form.get("description", "").strip(),
            "events": request.form.getlist("events")}
    try:
        endpoint, secret = services.create_endpoint(db_session(), form, principal())
    except ApiError as exc:
        db_session().rollback()
        return _page(exc.status, form=form, error=error_text(exc))
    return _page(201, created={"endpoint": endpoint, "secret": secret})


@bp.route("/webhooks/<int:endpoint_id>")
@requires("admin")
def webhook_deliveries(endpoint_id: int) -> str:
    """One endpoint's delivery log, newest first."""
    session = db_session()
    endpoint = services.get_endpoint(session, endpoint_id)
    status = request.args.get("status") or None
    rows, next_cursor = services.list_deliveries(session, endpoint_id, status=status,
                                                 limit=100, cursor=request.args.get("cursor"))
    return render_template("admin/webhook_deliveries.html", endpoint=endpoint, deliveries=rows,
                           next_cursor=next_cursor, status=status)


def _act(endpoint_id: int, action: Callable[[], object], done: str) -> Response:
    return run_action(action, done, "admin.webhook_deliveries", endpoint_id=endpoint_id)


@bp.route("/webhooks/<int:endpoint_id>/deliveries/<int:delivery_id>/retry", methods=["POST"])
@requires("admin")
def retry_webhook_delivery(endpoint_id: int, delivery_id: int) -> Response:
    """Send a delivery again now."""
    return _act(endpoint_id, lambda: services.retry_delivery(
        db_session(), endpoint_id, delivery_id, principal()), "Delivery retried.")


@bp.route("/webhooks/<int:endpoint_id>/test", methods=["POST"])
@requires("admin")
def test_webhook(endpoint_id: int) -> Response:
    """Send a ``webhook.test`` event now."""
    return _act(endpoint_id, lambda: services.send_test(db_session(), endpoint_id, principal()),
                "Test event sent; see its delivery below.")


@bp.route("/webhooks/<int:endpoint_id>/enabled", methods=["POST"])
@requires("admin")
def toggle_webhook(endpoint_id: int) -> Response:
    """Turn delivery off or back on."""
    enabled = request.form.get("enabled") == "1"
    return _act(endpoint_id, lambda: services.update_endpoint(
        db_session(), endpoint_id, {"enabled": enabled}, principal()),
        "Endpoint enabled." if enabled else "Endpoint disabled.")


@bp.route("/webhooks/<int:endpoint_id>/delete", methods=["POST"])
@requires("admin")
def delete_webhook(endpoint_id: int) -> Response:
    """Delete an endpoint and its delivery log."""
    return run_action(lambda: services.delete_endpoint(db_session(), endpoint_id, principal()),
                      "Endpoint deleted.", "admin.webhooks")
