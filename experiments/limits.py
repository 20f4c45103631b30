"""Per-API-key rate limits on the public hot paths (ingestion and assignment).

Built on the `limits` library (the engine behind flask-limiter) so a limit can be
kept in process memory (default: per worker) or shared through
``PARCOURS_RATE_LIMIT_STORAGE`` (e.g. ``redis://127.0.0.1:6379``) across hosts.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from flask import Flask, request
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from experiments.errors import ApiError

# Route groups a limit applies to, by path prefix.
INGEST_PATHS = ("/api/v1/events", "/api/v1/identify")
ASSIGN_PATHS = ("/api/v1/assign", "/api/v1/exposures", "/ofrep/v1/")
EXTENSION_KEY = "parcours.rate_limits"
log = logging.getLogger(__name__)


def init_app(app: Flask, *, ingest: str, assign: str, storage_uri: str) -> None:
    """Enforce ``ingest``/``assign`` limits (e.g. ``"600/minute"``); empty means unlimited."""
    groups = [(prefixes, parse_many(rate)) for prefixes, rate in
              ((INGEST_PATHS, ingest), (ASSIGN_PATHS, assign)) if rate]
    if not groups:
        return
    limiter = MovingWindowRateLimiter(storage_from_string(storage_uri or "memory://"))
    limits = RateLimits(limiter, groups)

    @app.before_request
    def _rate_limit() -> None:
        limits.enforce(request.path, request.headers.get("Authorization", ""),
                       request.remote_addr)

    app.extensions[EXTENSION_KEY] = limits


class RateLimits:
    """The configured limits of each route group, enforced per caller."""

    def __init__(self, limiter: MovingWindowRateLimiter,
                 groups: list[tuple[tuple[str, ...], list[RateLimitItem]]]) -> None:
        self.limiter = limiter
        self.groups = groups

    def enforce(self, path: str, authorization: str, remote_addr: str | None) -> None:
        """Count one request to ``path``; 429 when a limit of its group is exhausted.

        A refused request is not counted (the moving window records accepted hits only).
        """
        for prefixes, items in self.groups:
            if path.startswith(prefixes):
                _check(self.limiter, items, prefixes[0], _caller_id(authorization, remote_addr))


def _caller_id(authorization: str, remote_addr: str | None) -> str:
    """Limit per API key (hashed: the raw key never reaches the storage), else per address."""
    if authorization:
        return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:32]
    return "ip:" + (remote_addr or "unknown")


def _check(limiter: MovingWindowRateLimiter, items: list[RateLimitItem], group: str,
           caller: str) -> None:
    for item in items:
        if not _admitted(limiter, item, group, caller):
            reset_at, _remaining = limiter.get_window_stats(item, group, caller)
            retry_after = max(1, math.ceil(reset_at - time.time()))
            raise ApiError(429, f"rate limit of {item} exceeded; retry later",
                           code="rate_limited", headers={"Retry-After": str(retry_after)})


def _admitted(limiter: MovingWindowRateLimiter, item: RateLimitItem, group: str,
              caller: str) -> bool:
    """Whether the limit admits one more hit; admitted when its storage is down.

    A rate limiter protects the service; an outage of its shared store (Redis) must not
    turn every event and assignment into an error, so the limit fails open and says so.
    """
    try:
        return bool(limiter.hit(item, group, caller))
    except Exception as exc:  # the storage driver's own errors (connection, timeout…)
        log.warning("rate-limit storage unavailable, request admitted: %s", exc)
        return True
