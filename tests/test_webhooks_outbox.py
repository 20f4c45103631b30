"""Transactional outbox: deliveries commit and roll back with the change that caused them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Flask
from sqlalchemy import select

from experiments import signals
from experiments.db import get_db
from experiments.models import Experiment
from tests.conftest import make_test_app
from tests.factories import experiment_payload
from tests.test_webhooks_api import admin_headers_for, create_endpoint
from webhooks.models import WebhookDelivery

LIFECYCLE_EVENTS = ["experiment.created", "experiment.started", "experiment.paused",
                    "experiment.concluded"]


def deliveries(app: Flask, endpoint_id: int | None = None) -> list[WebhookDelivery]:
    with get_db(app).sessionmaker() as session:
        query = select(WebhookDelivery).order_by(WebhookDelivery.id)
        if endpoint_id is not None:
            query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
        return list(session.scalars(query))


def run_lifecycle(client: Any, headers: dict[str, str]) -> None:
    assert client.post("/api/v1/experiments", json=experiment_payload(),
                       headers=headers).status_code == 201
    for action in ("start", "pause", "resume"):
        assert client.post(f"/api/v1/experiments/checkout-redesign/{action}",
                           headers=headers).status_code == 200
    conclude = client.post("/api/v1/experiments/checkout-redesign/conclude", headers=headers,
                           json={"outcome": "ship", "winner": "one-page", "learnings": "works"})
    assert conclude.status_code == 200


def test_lifecycle_changes_enqueue_their_event_types_with_experiment_data(
        app, client, admin_headers):
    endpoint = create_endpoint(client, admin_headers, events=LIFECYCLE_EVENTS).get_json()
    run_lifecycle(client, admin_headers)
    rows = deliveries(app, endpoint["id"])
    assert [row.event_type for row in rows] == [
        "experiment.created", "experiment.started", "experiment.paused", "experiment.started",
        "experiment.concluded"]
    assert [row.payload["data"]["experiment"]["status"] for row in rows] == [
        "draft", "running", "paused", "running", "concluded"]
    assert [row.payload["data"].get("action") for row in rows] == [
        None, "start", "pause", "resume", "conclude"]
    assert all(row.payload["data"]["experiment"]["key"] == "checkout-redesign" for row in rows)
    assert all(row.payload["type"] == row.event_type for row in rows)
    assert rows[-1].payload["data"]["experiment"]["decision"]["winner"] == "one-page"
    assert {row.status for row in rows} == {"pending"} and {row.attempts for row in rows} == {0}
    assert len({row.message_id for row in rows}) == 5


def test_endpoints_only_get_the_types_they_subscribed_to(app, client, admin_headers):
    paused_only = create_endpoint(client, admin_headers, events=["experiment.paused"]).get_json()
    decided_only = create_endpoint(client, admin_headers,
                                   events=["experiment.decided"]).get_json()
    run_lifecycle(client, admin_headers)
    assert [row.event_type for row in deliveries(app, paused_only["id"])] == [
        "experiment.paused"]
    assert deliveries(app, decided_only["id"]) == []


def test_disabled_endpoints_get_nothing(app, client, admin_headers):
    endpoint = create_endpoint(client, admin_headers, events=LIFECYCLE_EVENTS).get_json()
    client.patch(f"/api/v1/webhooks/{endpoint['id']}", json={"enabled": False},
                 headers=admin_headers)
    run_lifecycle(client, admin_headers)
    assert deliveries(app) == []


def test_one_event_fans_out_with_one_message_id(app, client, admin_headers):
    for _ in range(3):
        create_endpoint(client, admin_headers, events=["srm.detected"])
    with get_db(app).session() as session:
        signals.emit(signals.srm_detected, session, {"experiment": "checkout-redesign",
                                                     "p_value": 0.0001})
    rows = deliveries(app)
    assert len(rows) == 3 and len({row.endpoint_id for row in rows}) == 3
    assert len({row.message_id for row in rows}) == 1
    assert rows[0].payload["data"] == {"experiment": "checkout-redesign", "p_value": 0.0001}


def test_a_rolled_back_experiment_change_enqueues_nothing(app, client, admin_headers):
    create_endpoint(client, admin_headers, events=["experiment.started"])
    client.post("/api/v1/experiments", json=experiment_payload(), headers=admin_headers)
    with get_db(app).sessionmaker() as session:
        experiment = session.scalar(select(Experiment).where(Experiment.key == "checkout-redesign"))
        experiment.status = "running"
        signals.emit(signals.experiment_started, session, {"experiment": {"key": experiment.key}})
        session.flush()
        assert session.scalar(select(WebhookDelivery.event_type)) == "experiment.started"
        session.rollback()
    assert deliveries(app) == []
    status = client.get("/api/v1/experiments/checkout-redesign", headers=admin_headers)
    assert status.get_json()["status"] == "draft"


def test_an_illegal_transition_enqueues_nothing(app, client, admin_headers):
    create_endpoint(client, admin_headers, events=LIFECYCLE_EVENTS)
    client.post("/api/v1/experiments", json=experiment_payload(), headers=admin_headers)
    before = len(deliveries(app))
    response = client.post("/api/v1/experiments/checkout-redesign/pause", headers=admin_headers)
    assert response.status_code == 409
    assert len(deliveries(app)) == before == 1


def test_data_that_is_not_json_is_stored_as_text(app, client, admin_headers):
    create_endpoint(client, admin_headers, events=["analysis.completed"])
    computed_at = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    with get_db(app).session() as session:
        signals.emit(signals.analysis_completed, session, {"computed_at": computed_at})
    assert deliveries(app)[0].payload["data"] == {"computed_at": "2026-11-24 10:00:00+00:00"}


def test_the_first_attempt_waits_for_the_first_scheduled_delay(database_url, tmp_path):
    delayed = make_test_app(database_url, tmp_path, WEBHOOK_RETRY_SCHEDULE_S="60,5")
    try:
        headers = admin_headers_for(delayed)
        create_endpoint(delayed.test_client(), headers, events=["srm.detected"])
        with delayed.app_context(), get_db(delayed).session() as session:
            signals.emit(signals.srm_detected, session, {})
        row = deliveries(delayed)[0]
        assert 55 <= (row.next_attempt_at - row.created_at).total_seconds() <= 65
    finally:
        get_db(delayed).engine.dispose()

