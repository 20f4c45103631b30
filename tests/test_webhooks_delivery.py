"""The sender against a real HTTP receiver: signing, retries, 410, timeouts, SSRF, concurrency."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from werkzeug import Request, Response

import experiments
from experiments import signals
from experiments.db import get_db, utcnow
from experiments.models import AuditEntry
from tests.conftest import make_test_app
from tests.test_webhooks_api import admin_headers_for, create_endpoint
from webhooks import DELIVER_JOB, ssrf
from webhooks.delivery import deliver_due
from webhooks.models import WebhookDelivery, WebhookEndpoint

# A loaded CI machine (2 cores, the suite in parallel) can take longer than 0.3 s to answer
# on loopback: a short default timeout left a delivered webhook "pending" (the receiver
# had it). Only the timeout test shortens it.
TIMEOUT_S = 10.0
SHORT_TIMEOUT_S = 0.3


@pytest.fixture
def app(database_url, tmp_path) -> Iterator[Flask]:
    """Immediate retries (0,0,0) so the retry tests are fast."""
    app = make_test_app(database_url, tmp_path, WEBHOOK_RETRY_SCHEDULE_S="0,0,0",
                        WEBHOOK_TIMEOUT_S=TIMEOUT_S)
    yield app
    get_db(app).engine.dispose()


class Receiver:
    """Answers with the scripted statuses in turn (200 afterwards) and keeps every request."""

    def __init__(self, server: HTTPServer, statuses: list[int] | None = None,
                 delays: list[float] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.delays = list(delays or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.url = server.url_for("/hook")
        server.expect_request("/hook", method="POST").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        with self.lock:
            self.requests.append((dict(request.headers), request.get_data()))
            status = self.statuses.pop(0) if self.statuses else 200
            delay = self.delays.pop(0) if self.delays else 0.0
        time.sleep(delay)
        return Response("ok" if status < 300 else "nope", status=status)

    def ids(self) -> list[str]:
        return [headers["Webhook-Id"] for headers, _ in self.requests]


@pytest.fixture
def make_endpoint(client, admin_headers) -> Callable[..., dict[str, Any]]:
    def make(url: str, events: tuple[str, ...] = ("srm.detected",)) -> dict[str, Any]:
        response = create_endpoint(client, admin_headers, url=url, events=list(events))
        assert response.status_code == 201
        return response.get_json()
    return make


def emit(app: Flask, count: int = 1, signal: Any = signals.srm_detected) -> None:
    with app.app_context(), get_db(app).session() as session:
        for index in range(count):
            signals.emit(signal, session, {"experiment": "checkout-redesign", "index": index})


def only_delivery(app: Flask) -> WebhookDelivery:
    with get_db(app).sessionmaker() as session:
        (delivery,) = session.scalars(select(WebhookDelivery)).all()
        return delivery


def endpoint_row(app: Flask, endpoint_id: int) -> WebhookEndpoint:
    with get_db(app).sessionmaker() as session:
        return session.get(WebhookEndpoint, endpoint_id)


def test_the_standardwebhooks_library_verifies_what_we_send(app, httpserver, make_endpoint):
    receiver = Receiver(httpserver)
    secret = make_endpoint(receiver.url)["secret"]
    emit(app)
    assert deliver_due(app) == Counter({"delivered": 1})
    headers, body = receiver.requests[0]
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "srm.detected"
    assert payload["data"] == {"experiment": "checkout-redesign", "index": 0}
    assert payload["timestamp"].endswith("+00:00")
    assert headers["User-Agent"] == f"Parcours-Webhooks/{experiments.__version__}"
    assert headers["Content-Type"] == "application/json"
    assert headers["Webhook-Id"] == only_delivery(app).message_id
    assert headers["Webhook-Signature"].startswith("v1,")
    assert abs(int(headers["Webhook-Timestamp"]) - time.time()) < 60


def test_a_tampered_body_or_another_secret_is_rejected(app, httpserver, make_endpoint):
    receiver = Receiver(httpserver)
    make_endpoint(receiver.url)
    emit(app)
    deliver_due(app)
    headers, body = receiver.requests[0]
    secret = endpoint_row(app, only_delivery(app).endpoint_id).secret
    tampered = body.replace(b"checkout-redesign", b"checkout-hacked")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers)
    other_secret = make_endpoint("http://127.0.0.1:9/x")["secret"]
    with pytest.raises(WebhookVerificationError):
        Webhook(other_secret).verify(body, headers)


def test_failures_are_retried_with_the_same_webhook_id_until_delivered(
        app, client, admin_headers, httpserver, make_endpoint):
    receiver = Receiver(httpserver, statuses=[500, 500, 200])
    endpoint = make_endpoint(receiver.url)
    emit(app)
    results = [deliver_due(app) for _ in range(4)]
    assert results == [Counter({"pending": 1}), Counter({"pending": 1}),
                       Counter({"delivered": 1}), Counter()]
    assert len(receiver.ids()) == 3 and len(set(receiver.ids())) == 1
    bodies = {body for _, body in receiver.requests}
    assert len(bodies) == 1
    log = client.get(f"/api/v1/webhooks/{endpoint['id']}/deliveries",
                     headers=admin_headers).get_json()["items"]
    assert len(log) == 1
    assert (log[0]["status"], log[0]["attempts"], log[0]["response_status"]) == (
        "delivered", 3, 200)
    assert log[0]["response_body"] == "ok" and log[0]["last_error"] is None
    assert log[0]["message_id"] == receiver.ids()[0]


def test_a_delivery_fails_after_the_last_scheduled_attempt(app, httpserver, make_endpoint):
    receiver = Receiver(httpserver, statuses=[503, 503, 503, 503])
    make_endpoint(receiver.url)
    emit(app)
    results = [deliver_due(app) for _ in range(4)]
    assert results == [Counter({"pending": 1}), Counter({"pending": 1}),
                       Counter({"failed": 1}), Counter()]
    delivery = only_delivery(app)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("failed", 3, 503)
    assert delivery.last_error == "the receiver answered HTTP 503"
    assert delivery.response_body == "nope" and delivery.next_attempt_at is None


def test_a_retry_waits_for_its_scheduled_delay(database_url, tmp_path, httpserver):
    slow = make_test_app(database_url, tmp_path, WEBHOOK_RETRY_SCHEDULE_S="0,300")
    try:
        receiver = Receiver(httpserver, statuses=[500])
        create_endpoint(slow.test_client(), admin_headers_for(slow), url=receiver.url,
                        events=["srm.detected"])
        emit(slow)
        assert deliver_due(slow) == Counter({"pending": 1})
        assert deliver_due(slow) == Counter()
        delivery = only_delivery(slow)
        wait = (delivery.next_attempt_at - delivery.last_attempt_at).total_seconds()
        assert 299 <= wait <= 301 and len(receiver.requests) == 1
    finally:
        get_db(slow).engine.dispose()


def test_410_gone_disables_the_endpoint_visibly_and_in_the_audit_log(
        app, client, admin_headers, httpserver, make_endpoint):
    receiver = Receiver(httpserver, statuses=[410])
    endpoint = make_endpoint(receiver.url)
    emit(app, count=2)
    assert deliver_due(app) == Counter({"failed": 1})  # the second waits: endpoint disabled
    shown = client.get(f"/api/v1/webhooks/{endpoint['id']}", headers=admin_headers).get_json()
    assert shown["enabled"] is False
    assert shown["disabled_reason"] == "the receiver answered 410 Gone"
    with get_db(app).sessionmaker() as session:
        entry = session.scalars(select(AuditEntry).where(
            AuditEntry.action == "webhook.disable")).one()
        assert entry.actor == "system:parcours" and entry.target_id == str(endpoint["id"])
    emit(app)
    assert deliver_due(app) == Counter() and len(receiver.requests) == 1


def test_an_endpoint_failing_every_delivery_for_5_days_is_disabled(
        app, client, admin_headers, httpserver, make_endpoint):
    receiver = Receiver(httpserver, statuses=[500, 500])
    endpoint = make_endpoint(receiver.url)
    emit(app)
    deliver_due(app)
    assert endpoint_row(app, endpoint["id"]).failing_since is not None
    assert endpoint_row(app, endpoint["id"]).enabled is True
    with get_db(app).session() as session:
        session.get(WebhookEndpoint, endpoint["id"]).failing_since = utcnow() - timedelta(days=5)
    deliver_due(app)
    shown = client.get(f"/api/v1/webhooks/{endpoint['id']}", headers=admin_headers).get_json()
    assert shown["enabled"] is False
    assert shown["disabled_reason"].startswith("every delivery failed for 5 days")


def test_a_success_clears_the_failing_streak(app, httpserver, make_endpoint):
    receiver = Receiver(httpserver, statuses=[500, 200])
    endpoint = make_endpoint(receiver.url)
    emit(app)
    deliver_due(app)
    deliver_due(app)
    row = endpoint_row(app, endpoint["id"])
    assert row.failing_since is None and row.enabled is True


def test_a_timeout_is_retried(app, httpserver, make_endpoint):
    app.config["WEBHOOK_TIMEOUT_S"] = SHORT_TIMEOUT_S
    receiver = Receiver(httpserver, delays=[SHORT_TIMEOUT_S * 3])
    make_endpoint(receiver.url)
    emit(app)
    assert deliver_due(app) == Counter({"pending": 1})
    delivery = only_delivery(app)
    assert delivery.last_error == f"timed out after {SHORT_TIMEOUT_S:g} s"
    assert delivery.response_status is None
    time.sleep(SHORT_TIMEOUT_S * 3)  # the single-threaded receiver finishes the slow answer
    app.config["WEBHOOK_TIMEOUT_S"] = TIMEOUT_S
    assert deliver_due(app) == Counter({"delivered": 1})
    assert len(set(receiver.ids())) == 1 and len(receiver.ids()) == 2


def test_redirects_are_not_followed(app, httpserver, make_endpoint):
    httpserver.expect_request("/moved").respond_with_response(
        Response("", status=302, headers={"Location": "http://127.0.0.1:9/elsewhere"}))
    make_endpoint(httpserver.url_for("/moved"))
    emit(app)
    assert deliver_due(app) == Counter({"pending": 1})
    delivery = only_delivery(app)
    assert delivery.response_status == 302
    assert delivery.last_error == "the receiver answered HTTP 302"


def test_an_unreachable_receiver_is_recorded_as_an_error(app, make_endpoint):
    make_endpoint("http://127.0.0.1:9/closed")
    emit(app)
    assert deliver_due(app) == Counter({"pending": 1})
    assert only_delivery(app).last_error.startswith("ConnectionError")


def test_only_the_first_kib_of_the_response_body_is_kept(app, httpserver, make_endpoint):
    httpserver.expect_request("/big").respond_with_data("é" * 5000 + "\x00", status=500)
    make_endpoint(httpserver.url_for("/big"))
    emit(app)
    deliver_due(app)
    body = only_delivery(app).response_body
    assert len(body.encode()) <= 1024 and body.startswith("é" * 500)


def deliver_strictly(database_url: str, tmp_path: Any) -> Counter[str]:
    """Send what is due with an app that refuses internal addresses (no retries)."""
    strict = make_test_app(database_url, tmp_path, WEBHOOK_ALLOW_PRIVATE=False,
                           WEBHOOK_RETRY_SCHEDULE_S="0,0")
    try:
        return deliver_due(strict)
    finally:
        get_db(strict).engine.dispose()


def test_the_ssrf_guard_runs_again_at_send_time(app, database_url, tmp_path, httpserver,
                                                make_endpoint):
    receiver = Receiver(httpserver)
    make_endpoint(receiver.url)  # allowed when it was created
    emit(app)
    assert deliver_strictly(database_url, tmp_path) == Counter({"pending": 1})
    delivery = only_delivery(app)
    assert delivery.last_error.startswith("refused by the SSRF guard: localhost resolves to "
                                          "loopback address")
    assert receiver.requests == [] and delivery.attempts == 1


def test_retry_route_sends_a_failed_delivery_again(app, client, admin_headers, httpserver,
                                                   make_endpoint):
    receiver = Receiver(httpserver, statuses=[500, 500, 500, 200])
    endpoint = make_endpoint(receiver.url)
    emit(app)
    for _ in range(3):
        deliver_due(app)
    delivery = only_delivery(app)
    assert delivery.status == "failed"
    response = client.post(f"/api/v1/webhooks/{endpoint['id']}/deliveries/{delivery.id}/retry",
                           headers=admin_headers)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["status"], body["attempts"], body["response_status"]) == ("delivered", 4, 200)
    assert len(set(receiver.ids())) == 1 and len(receiver.ids()) == 4
    with get_db(app).sessionmaker() as session:
        actions = session.scalars(select(AuditEntry.action)).all()
    assert "webhook.retry" in actions


def test_retry_on_a_disabled_endpoint_is_a_conflict(app, client, admin_headers, make_endpoint):
    endpoint = make_endpoint("http://127.0.0.1:9/x")
    emit(app)
    client.patch(f"/api/v1/webhooks/{endpoint['id']}", json={"enabled": False},
                 headers=admin_headers)
    delivery = only_delivery(app)
    response = client.post(f"/api/v1/webhooks/{endpoint['id']}/deliveries/{delivery.id}/retry",
                           headers=admin_headers)
    assert response.status_code == 409 and "disabled" in response.get_json()["error"]["message"]
    assert only_delivery(app).attempts == 0


def test_test_route_sends_webhook_test_whatever_the_filter(app, client, admin_headers,
                                                           httpserver, make_endpoint):
    receiver = Receiver(httpserver)
    endpoint = make_endpoint(receiver.url, events=("experiment.decided",))
    response = client.post(f"/api/v1/webhooks/{endpoint['id']}/test", headers=admin_headers)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["event_type"], body["status"], body["attempts"]) == (
        "webhook.test", "delivered", 1)
    headers, raw = receiver.requests[0]
    payload = Webhook(endpoint["secret"]).verify(raw, headers)
    assert payload["type"] == "webhook.test"
    assert payload["data"] == {"endpoint_id": endpoint["id"],
                               "requested_by": "api_key:test admin"}
    audit = client.get("/api/v1/audit", headers=admin_headers).get_json()["items"]
    assert audit[0]["action"] == "webhook.test"
    assert audit[0]["actor"] == "api_key:test admin"
    assert audit[0]["after"] == {"endpoint_id": endpoint["id"]}


def test_deliveries_log_is_paginated_newest_first_and_filterable(
        app, client, admin_headers, httpserver, make_endpoint):
    receiver = Receiver(httpserver, statuses=[500])
    endpoint = make_endpoint(receiver.url)
    emit(app, count=3)
    deliver_due(app)
    path = f"/api/v1/webhooks/{endpoint['id']}/deliveries"
    page = client.get(f"{path}?limit=2", headers=admin_headers).get_json()
    ids = [item["id"] for item in page["items"]]
    assert ids == sorted(ids, reverse=True) and page["next_cursor"]
    rest = client.get(f"{path}?limit=2&cursor={page['next_cursor']}",
                      headers=admin_headers).get_json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    pending = client.get(f"{path}?status=pending", headers=admin_headers).get_json()["items"]
    assert [item["response_status"] for item in pending] == [500]
    assert client.get(f"{path}?status=lost", headers=admin_headers).status_code == 422


def test_cli_deliver_sends_what_is_due(app, runner, httpserver, make_endpoint):
    receiver = Receiver(httpserver, statuses=[200, 500])
    make_endpoint(receiver.url)
    emit(app, count=2)
    result = runner.invoke(args=["webhooks", "deliver"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "webhook deliveries: 1 delivered, 1 pending"
    assert runner.invoke(args=["webhooks", "deliver"]).output.strip() == (
        "webhook deliveries: 1 delivered")
    assert runner.invoke(args=["webhooks", "deliver"]).output.strip() == (
        "webhook deliveries: nothing due")


def test_the_delivery_job_is_registered_and_sends(app, httpserver, make_endpoint):
    from experiments.jobs import registered_jobs

    receiver = Receiver(httpserver)
    make_endpoint(receiver.url)
    emit(app)
    (job,) = [job for job in registered_jobs(app) if job.name == DELIVER_JOB]
    assert job.interval_s == 5
    job.run(app)
    assert len(receiver.requests) == 1 and only_delivery(app).status == "delivered"


def test_an_expired_lease_is_taken_over(app, httpserver, make_endpoint):
    receiver = Receiver(httpserver)
    make_endpoint(receiver.url)
    emit(app)
    with get_db(app).session() as session:  # a sender that claimed it and died
        delivery = session.scalars(select(WebhookDelivery)).one()
        delivery.status, delivery.attempts = "sending", 1
        delivery.next_attempt_at = utcnow() + timedelta(minutes=5)
    assert deliver_due(app) == Counter()
    with get_db(app).session() as session:
        session.scalars(select(WebhookDelivery)).one().next_attempt_at = utcnow()
    assert deliver_due(app) == Counter({"delivered": 1})
    assert only_delivery(app).attempts == 2


@pytest.mark.postgres_only
def test_two_concurrent_senders_deliver_each_event_exactly_once(postgres_database_url, tmp_path):
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    senders = [make_test_app(postgres_database_url, tmp_path / str(index))
               for index in range(2)]
    try:
        receiver = Receiver(server)
        create_endpoint(senders[0].test_client(), admin_headers_for(senders[0]),
                        url=receiver.url, events=["analysis.completed"])
        emit(senders[0], count=200, signal=signals.analysis_completed)
        barrier = threading.Barrier(2)
        results: list[Counter[str]] = []

        def run(sender: Flask) -> None:
            barrier.wait()
            results.append(deliver_due(sender))

        threads = [threading.Thread(target=run, args=(sender,)) for sender in senders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        hits = Counter(receiver.ids())
        assert len(hits) == 200 and set(hits.values()) == {1}
        assert sum(results, Counter()) == Counter({"delivered": 200})
        assert all(result["delivered"] > 0 for result in results)  # the work was shared
        indexes = sorted(json.loads(body)["data"]["index"] for _, body in receiver.requests)
        assert indexes == list(range(200))
    finally:
        server.stop()
        for sender in senders:
            get_db(sender).engine.dispose()


def test_a_host_rebound_to_an_internal_address_after_the_check_is_not_reached(
        app, database_url, tmp_path, httpserver, make_endpoint, monkeypatch):
    receiver = Receiver(httpserver)
    make_endpoint(receiver.url.replace("localhost", "hooks.example.com"))
    emit(app)
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # public for the check, then rebound
    monkeypatch.setattr(ssrf, "resolve_host", lambda host, port: next(answers))
    assert deliver_strictly(database_url, tmp_path) == Counter({"pending": 1})
    delivery = only_delivery(app)
    assert delivery.last_error == (
        "refused by the SSRF guard: hooks.example.com resolves to loopback address 127.0.0.1; "
        "webhooks may only target public addresses (set PARCOURS_WEBHOOK_ALLOW_PRIVATE=1 "
        "to allow internal targets)")
    assert receiver.requests == []


def test_deliveries_connect_to_the_address_the_guard_resolved(app, httpserver, make_endpoint,
                                                              monkeypatch):
    receiver = Receiver(httpserver)
    make_endpoint(receiver.url.replace("localhost", "hooks.example.com"))
    emit(app)
    resolved = []
    monkeypatch.setattr(ssrf, "resolve_host",
                        lambda host, port: resolved.append((host, port)) or ["127.0.0.1"])
    assert deliver_due(app) == Counter({"delivered": 1})
    assert resolved == [("hooks.example.com", httpserver.port)]
    assert len(receiver.requests) == 1
    assert receiver.requests[0][0]["Host"] == f"hooks.example.com:{httpserver.port}"
