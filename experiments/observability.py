"""Prometheus request metrics per route (SPEC §2 ``/metrics``)."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import Counter, Histogram

REQUESTS = Counter("parcours_http_requests_total", "HTTP requests",
                   ["method", "endpoint", "status"])
LATENCY = Histogram("parcours_http_request_duration_seconds", "HTTP request latency",
                    ["method", "endpoint"])


def init_app(app: Flask) -> None:
    """Time every request and count it by route template, not raw path (bounded labels)."""

    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        started = g.get("request_started")
        if started is not None:
            LATENCY.labels(request.method, endpoint).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        return response
