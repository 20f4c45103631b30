"""Service endpoints: health, Prometheus metrics, OpenAPI document and offline docs."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template
from prometheus_client import CONTENT_TYPE_LATEST

from experiments.api.openapi import build_openapi
from experiments.db import get_db
from experiments.health import DatabaseHealth
from experiments.observability import exposition

bp = Blueprint("system", __name__, template_folder="../templates")


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Liveness, database reachability and schema version, for load balancers."""
    health = current_app.extensions.get("parcours.health")
    if health is None:
        health = current_app.extensions["parcours.health"] = DatabaseHealth(get_db().engine)
    try:
        schema = health.check()
    except Exception:  # any driver error means "unreachable" to a load balancer
        current_app.logger.warning("health check: database unreachable")
        return jsonify(status="unavailable", database="unreachable"), 503
    if schema != "ok":
        current_app.logger.warning("health check: database schema is not at head")
        return jsonify(status="unavailable", database=schema), 503
    return jsonify(status="ok", database="ok"), 200


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition of request, assignment, ingestion and job metrics."""
    return Response(exposition(), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
def openapi() -> Response:
    """OpenAPI 3.1 for every ``/api/v1`` and ``/ofrep/v1`` route."""
    document = current_app.extensions.get("parcours.openapi")
    if document is None:
        document = current_app.extensions["parcours.openapi"] = build_openapi()
    return jsonify(document)


@bp.get("/docs")
def docs() -> str:
    """Interactive API docs from vendored Swagger UI: nothing loads from another host."""
    return render_template("docs.html")


@bp.get("/favicon.ico")
def favicon() -> Response:
    """The icon browsers ask for on every page (without it each page logs a 404)."""
    response = current_app.send_static_file("favicon.svg")
    response.mimetype = "image/svg+xml"
    response.cache_control.max_age = 86_400
    return response
