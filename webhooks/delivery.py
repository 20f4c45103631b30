"""The sender: claim due deliveries, sign and POST them, record the result.

Retry schedule (``PARCOURS_WEBHOOK_RETRY_SCHEDULE_S`` = ``s0,s1,…,s(k-1)``): a
delivery is due ``s0`` seconds after the event (attempt 1); when attempt ``n``
fails, attempt ``n+1`` is due ``s(n)`` seconds after that failure; after ``k``
failed attempts the delivery is ``failed``. The default ``0,5,300,1800,7200,
18000,36000`` means 7 attempts: at once, then 5 s, 5 min, 30 min, 2 h, 5 h and
10 h after each failure (an empty schedule still makes one attempt).

Claiming marks rows ``sending`` with a lease (``next_attempt_at`` = lease end) and
commits before any HTTP call, so no transaction or row lock is held while a
receiver answers; a sender that dies mid-way leaves rows whose lease expires and
another sender takes them (receivers dedupe by ``webhook-id``). On PostgreSQL the
candidate rows are locked ``FOR UPDATE SKIP LOCKED`` so concurrent senders split
the work; the claim ``UPDATE`` re-checks the state so SQLite stays correct too.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from flask import Flask, current_app, has_app_context
from sqlalchemy import select, update

import experiments
from experiments.auth import SYSTEM
from experiments.config import Config
from experiments.db import Database, get_db, utcnow
from webhooks.endpoints import disable_endpoint
from webhooks.models import WebhookDelivery, WebhookEndpoint
from webhooks.signing import signed_headers
from webhooks.ssrf import UnsafeUrl, check_url
from webhooks.transport import vetted_session

USER_AGENT = f"Parcours-Webhooks/{experiments.__version__}"
RESPONSE_BODY_LIMIT = 1024
DUE_STATES = ("pending", "sending")


@dataclass(frozen=True)
class DeliverySettings:
    """How the sender behaves; read from the app config once per run."""

    retry_schedule_s: tuple[int, ...] = Config.WEBHOOK_RETRY_SCHEDULE_S
    allow_private: bool = False
    timeout_s: float = 15.0
    batch_size: int = 10
    disable_after: timedelta = timedelta(days=5)

    @classmethod
    def from_app(cls, app: Flask) -> DeliverySettings:
        """``WEBHOOK_TIMEOUT_S`` is an internal knob (tests shorten it); the rest is Config."""
        config = app.config["PARCOURS"]
        return cls(retry_schedule_s=tuple(config.WEBHOOK_RETRY_SCHEDULE_S),
                   allow_private=config.WEBHOOK_ALLOW_PRIVATE,
                   timeout_s=float(app.config.get("WEBHOOK_TIMEOUT_S", cls.timeout_s)))

    @property
    def lease(self) -> timedelta:
        """Long enough for a whole batch to time out, so a live sender keeps its rows."""
        return timedelta(seconds=self.timeout_s * self.batch_size + 30)

    def first_delay_s(self) -> float:
        """Delay of attempt 1 after the event."""
        return float(self.retry_schedule_s[0]) if self.retry_schedule_s else 0.0

    def delay_after_failure(self, attempts: int) -> float | None:
        """Seconds until the next attempt after ``attempts`` failures, None when exhausted."""
        if attempts < len(self.retry_schedule_s):
            return float(self.retry_schedule_s[attempts])
        return None


def current_settings() -> DeliverySettings:
    """The settings of the current app, or the defaults outside one."""
    return DeliverySettings.from_app(current_app) if has_app_context() else DeliverySettings()


@dataclass(frozen=True)
class Claim:
    """What one attempt needs, copied out of the session before the HTTP call."""

    delivery_id: int
    endpoint_id: int
    message_id: str
    payload: dict[str, Any]
    url: str
    secret: str


@dataclass(frozen=True)
class Outcome:
    """The receiver's answer, or why there was none."""

    status_code: int | None = None
    body: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def claim_due(database: Database, settings: DeliverySettings, *, due_before: datetime,
              ids: list[int] | None = None) -> list[Claim]:
    """Mark up to one batch of due deliveries ``sending`` under a lease, and commit."""
    with database.session() as session:
        candidates = (
            select(WebhookDelivery.id).join(WebhookDelivery.endpoint)
            .where(WebhookDelivery.status.in_(DUE_STATES),
                   WebhookDelivery.next_attempt_at <= due_before,
                   WebhookEndpoint.enabled.is_(True))
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(settings.batch_size)
            .with_for_update(of=WebhookDelivery, skip_locked=True))
        if ids is not None:
            candidates = candidates.where(WebhookDelivery.id.in_(ids))
        candidate_ids = list(session.scalars(candidates))
        if not candidate_ids:
            return []
        now = utcnow()
        claimed = list(session.scalars(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(candidate_ids),
                   WebhookDelivery.status.in_(DUE_STATES),
                   WebhookDelivery.next_attempt_at <= due_before)
            .values(status="sending", attempts=WebhookDelivery.attempts + 1,
                    last_attempt_at=now, next_attempt_at=now + settings.lease)
            .returning(WebhookDelivery.id)
            .execution_options(synchronize_session=False)))
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.endpoint_id, WebhookDelivery.message_id,
                   WebhookDelivery.payload,
                   WebhookEndpoint.url, WebhookEndpoint.secret)
            .join(WebhookDelivery.endpoint).where(WebhookDelivery.id.in_(claimed))
            .order_by(WebhookDelivery.id)).all()
    return [Claim(*row) for row in rows]


def send(http: requests.Session, claim: Claim, settings: DeliverySettings) -> Outcome:
    """POST the signed body once; never raises for a network or receiver problem."""
    try:
        check_url(claim.url, allow_private=settings.allow_private)
    except UnsafeUrl as exc:
        return Outcome(error=f"refused by the SSRF guard: {exc}")
    body = json.dumps(claim.payload, separators=(",", ":"), ensure_ascii=False)
    headers = {**signed_headers(claim.secret, claim.message_id, int(time.time()), body),
               "content-type": "application/json", "user-agent": USER_AGENT}
    try:
        with http.post(claim.url, data=body.encode(), headers=headers,
                       timeout=settings.timeout_s, allow_redirects=False,
                       stream=True) as response:
            prefix = next(response.iter_content(RESPONSE_BODY_LIMIT), b"")
            return Outcome(status_code=response.status_code, body=_text(prefix))
    except UnsafeUrl as exc:  # the address vetted at connection time (DNS rebinding)
        return Outcome(error=f"refused by the SSRF guard: {exc}")
    except requests.Timeout:
        return Outcome(error=f"timed out after {settings.timeout_s:g} s")
    except (requests.RequestException, OSError, ValueError) as exc:
        return Outcome(error=_text(f"{type(exc).__name__}: {exc}".encode()))


def _text(raw: bytes) -> str:
    """At most 1 KiB of text, without the NUL characters PostgreSQL refuses."""
    return raw[:RESPONSE_BODY_LIMIT].decode("utf-8", "replace").replace("\x00", "")


def record_result(database: Database, settings: DeliverySettings, claim: Claim,
                  outcome: Outcome) -> tuple[str, bool]:
    """Store the attempt's result, schedule the retry, disable hopeless endpoints.

    Returns the delivery's new status and whether its endpoint is still enabled.
    """
    with database.session() as session:
        delivery = session.get(WebhookDelivery, claim.delivery_id)
        if delivery is None:  # endpoint deleted while we were sending
            return "deleted", False
        endpoint = delivery.endpoint
        now = utcnow()
        delivery.response_status = outcome.status_code
        delivery.response_body = outcome.body
        delivery.last_error = outcome.error or _status_error(outcome)
        if outcome.ok:
            delivery.status, delivery.next_attempt_at = "delivered", None
            endpoint.failing_since = None
            return delivery.status, endpoint.enabled
        if outcome.status_code == 410:
            delivery.status, delivery.next_attempt_at = "failed", None
            disable_endpoint(session, endpoint, "the receiver answered 410 Gone", SYSTEM)
            return delivery.status, False
        delay = settings.delay_after_failure(delivery.attempts)
        if delay is None:
            delivery.status, delivery.next_attempt_at = "failed", None
        else:
            delivery.status, delivery.next_attempt_at = "pending", now + timedelta(seconds=delay)
        _note_failure(session, endpoint, settings, now)
        return delivery.status, endpoint.enabled


def _status_error(outcome: Outcome) -> str | None:
    if outcome.ok or outcome.status_code is None:
        return None
    return f"the receiver answered HTTP {outcome.status_code}"


def _note_failure(session: Any, endpoint: WebhookEndpoint, settings: DeliverySettings,
                  now: datetime) -> None:
    """An endpoint that has failed every attempt for ``disable_after`` is disabled."""
    if endpoint.failing_since is None:
        endpoint.failing_since = now
    elif now - endpoint.failing_since >= settings.disable_after:
        days = settings.disable_after.total_seconds() / 86400
        disable_endpoint(session, endpoint,
                         f"every delivery failed for {days:g} days (since "
                         f"{endpoint.failing_since.isoformat()})", SYSTEM)


def release(database: Database, claim: Claim) -> None:
    """Give back an unsent claim (its endpoint was disabled meanwhile): not an attempt."""
    with database.session() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == claim.delivery_id, WebhookDelivery.status == "sending")
            .values(status="pending", attempts=WebhookDelivery.attempts - 1,
                    next_attempt_at=utcnow())
            .execution_options(synchronize_session=False))


def deliver_due(app: Flask, *, ids: list[int] | None = None) -> Counter[str]:
    """Send everything due now (once each per call); returns counts by resulting status."""
    settings = DeliverySettings.from_app(app)
    database = get_db(app)
    due_before = utcnow()  # retries scheduled during this run wait for the next one
    totals: Counter[str] = Counter()
    disabled: set[int] = set()
    with vetted_session(allow_private=settings.allow_private) as http:
        while claims := claim_due(database, settings, due_before=due_before, ids=ids):
            for claim in claims:
                if claim.endpoint_id in disabled:
                    release(database, claim)
                    continue
                status, enabled = record_result(database, settings, claim,
                                                send(http, claim, settings))
                totals[status] += 1
                if not enabled:
                    disabled.add(claim.endpoint_id)
    return totals


def run_job(app: Flask) -> None:
    """The ``webhooks.deliver`` scheduler job."""
    with app.app_context():
        totals = deliver_due(app)
    if totals:
        app.logger.info("webhook deliveries: %s", dict(totals))
