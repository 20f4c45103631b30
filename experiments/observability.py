"""Observability: Prometheus request metrics per route and JSON logs with request ids."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

REQUESTS = Counter("parcours_http_requests_total", "HTTP requests",
                   ["method", "endpoint", "status"])
LATENCY = Histogram("parcours_http_request_duration_seconds", "HTTP request latency",
                    ["method", "endpoint"])
REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# What log lines of a request served outside Flask (the assignment fast path) carry
# instead of the request context: request_id, method and path.
REQUEST_LOG_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("request_log_context",
                                                                    default=None)
# Anything that looks like a credential is masked before a log line is written.
_SECRETS = re.compile(r"(Bearer\s+|whsec_|sk_|pk_)[A-Za-z0-9+/=_-]{6,}")


def redact(text: str) -> str:
    """Mask API keys, bearer tokens and webhook secrets in a log message."""
    return _SECRETS.sub(lambda match: match.group(1) + "[redacted]", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id when there is a request."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if has_request_context():
            entry["request_id"] = g.get("request_id")
            entry["method"] = request.method
            entry["path"] = request.path
        else:
            entry.update(REQUEST_LOG_CONTEXT.get() or {})
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """Install the JSON (or plain) formatter on the root logger once per process."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    formatter: logging.Formatter = (JsonFormatter() if log_format == "json" else
                                    logging.Formatter("%(asctime)s %(levelname)s %(name)s "
                                                      "%(message)s"))
    handler = next((h for h in root.handlers if getattr(h, "parcours", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.parcours = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(formatter)


def init_app(app: Flask) -> None:
    """Request ids, timing and counting of every request by route template (bounded labels)."""

    @app.before_request
    def _start_request() -> None:
        g.request_started = time.perf_counter()
        g.request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))

    @app.after_request
    def _observe(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        observe_request(request.method, endpoint, response.status_code,
                        g.get("request_started"))
        if "request_id" in g:
            response.headers[REQUEST_ID_HEADER] = g.request_id
        return response


def request_id_for(incoming: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is safe to echo and log, else a new one."""
    if incoming and _SAFE_REQUEST_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def observe_request(method: str, endpoint: str, status: int, started: float | None) -> None:
    """Count a request and its latency by route template (bounded labels)."""
    if started is not None:
        LATENCY.labels(method, endpoint).observe(time.perf_counter() - started)
    REQUESTS.labels(method, endpoint, str(status)).inc()


def exposition() -> bytes:
    """The Prometheus text of the whole server, not only of the worker that is asked."""
    return generate_latest(metrics_registry())


def metrics_registry() -> CollectorRegistry:
    """What a scrape reads: every process's files in multiprocess mode, else this process.

    Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` (managed by gunicorn.conf.py) holds every
    worker's values, dead workers' included, so counters never go back.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY
