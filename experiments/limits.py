"""Per-API-key rate limits on the public hot paths (ingestion and assignment).

Built on the `limits` library (the engine behind flask-limiter) so a limit can be
kept in process memory (default: per worker) or shared through
``PARCOURS_RATE_LIMIT_STORAGE`` (e.g. ``redis://127.0.0.1:6379``) across hosts.
"""

from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, request
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from experiments.errors import ApiError

# Route groups a limit applies to, by path prefix.
INGEST_PATHS = ("/api/v1/events",)
ASSIGN_PATHS = ("/api/v1/assign", "/api/v1/exposures", "/ofrep/v1/")


def init_app(app: Flask, *, ingest: str, assign: str, storage_uri: str) -> None:
    """Enforce ``ingest``/``assign`` limits (e.g. ``"600/minute"``); empty means unlimited."""
    groups = [(prefixes, parse_many(rate)) for prefixes, rate in
              ((INGEST_PATHS, ingest), (ASSIGN_PATHS, assign)) if rate]
    if not groups:
        return
    limiter = MovingWindowRateLimiter(storage_from_string(storage_uri or "memory://"))

    @app.before_request
    def _rate_limit() -> None:
        for prefixes, items in groups:
            if request.path.startswith(prefixes):
                _check(limiter, items, prefixes[0])

    app.extensions["parcours.limiter"] = limiter


def _caller_id() -> str:
    """Limit per API key (hashed: the raw key never reaches the storage), else per address."""
    header = request.headers.get("Authorization", "")
    if header:
        return "key:" + hashlib.sha256(header.encode()).hexdigest()[:32]
    return "ip:" + (request.remote_addr or "unknown")


def _check(limiter: MovingWindowRateLimiter, items: list[RateLimitItem], group: str) -> None:
    caller = _caller_id()
    for item in items:
        if not limiter.hit(item, group, caller):
            reset_at, _remaining = limiter.get_window_stats(item, group, caller)
            retry_after = max(1, math.ceil(reset_at - time.time()))
            raise ApiError(429, f"rate limit of {item} exceeded; retry later",
                           code="rate_limited", headers={"Retry-After": str(retry_after)})
