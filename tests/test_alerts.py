"""Alerts, the guardrail webhook, early sequential rollback and risky ships (SPEC §3, §6, §7),
end to end through the API on both databases with a real HTTP webhook receiver."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from standardwebhooks import Webhook

from experiments.db import utcnow
from experiments.models import AuditEntry, Event, Experiment, GuardrailNotification
from experiments.schemas import AnalysisSettings
from experiments.services.decisions import decide
from tests.factories import experiment_payload
from tests.test_aggregation import seed_traffic
from tests.test_decisions import body as decision_body
from tests.test_decisions import comparison
from tests.test_webhooks_delivery import Receiver
from webhooks.delivery import deliver_due

KEY = "checkout-redesign"
REACH = {"landing": 1.0, "cart": 0.6, "checkout": 0.45, "payment": 0.4, "confirmation": 0.12}
HARMED = {("control", "payment", "error"): 0.05, ("one-page", "payment", "error"): 0.40}
BREACH = "guardrail payment-errors is significantly worse for one-page"


def start_harmed(client: Any, headers: dict[str, str], db: Any, *, method: str) -> Experiment:
    """A running experiment (min_days 7) whose treatment triples payment errors, 2 h old."""
    analysis = {**experiment_payload()["analysis"], "method": method, "min_days": 7,
                "min_units_per_variant": 1000, "cuped": False}
    body = experiment_payload(KEY, layer=None, analysis=analysis)
    assert client.post("/api/v1/experiments", json=body, headers=headers).status_code == 201
    assert client.post(f"/api/v1/experiments/{KEY}/start", headers=headers).status_code == 200
    experiment = db.scalar(select(Experiment).where(Experiment.key == KEY))
    seed_traffic(db, experiment, units={"control": 800, "one-page": 800},
                 conversion={"control": 0.10, "one-page": 0.12}, reach=REACH,
                 friction=HARMED, start=utcnow() - timedelta(hours=3))
    return experiment


def analyze(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    response = client.post(f"/api/v1/experiments/{KEY}/analyze", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def breach_alerts(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(a["kind"], a["metric"], a["variant"]) for a in report["alerts"]]


@pytest.mark.parametrize("method", ["frequentist", "sequential"])
def test_a_harmed_guardrail_alerts_on_the_first_report_and_is_announced_once(
        app: Flask, client, admin_headers, db, httpserver, method):
    receiver = Receiver(httpserver)
    hook = client.post("/api/v1/webhooks", headers=admin_headers, json={
        "url": receiver.url, "events": ["guardrail.breached"]}).get_json()
    start_harmed(client, admin_headers, db, method=method)

    first = analyze(client, admin_headers)
    assert breach_alerts(first) == [("guardrail_breach", "payment-errors", "one-page")]
    assert first["alerts"][0]["message"].startswith(BREACH)
    assert deliver_due(app) == Counter({"delivered": 1})
    headers, raw = receiver.requests[0]
    payload = Webhook(hook["secret"]).verify(raw, headers)
    assert payload["type"] == "guardrail.breached"
    assert (payload["data"]["experiment"], payload["data"]["metric"],
            payload["data"]["variant"]) == (KEY, "payment-errors", "one-page")
    assert payload["data"]["report_id"] == first["id"]
    assert payload["data"]["relative_effect"] > 3

    second = analyze(client, admin_headers)
    assert breach_alerts(second) == breach_alerts(first)
    assert deliver_due(app) == Counter()
    assert len(receiver.requests) == 1
    db.expire_all()
    assert [(n.metric_key, n.variant_key, n.report_id) for n in
            db.scalars(select(GuardrailNotification))] == [
        ("payment-errors", "one-page", first["id"])]


def test_a_sequential_experiment_rolls_back_before_min_days(client, admin_headers, db):
    start_harmed(client, admin_headers, db, method="sequential")
    decision = analyze(client, admin_headers)["decision"]
    assert (decision["outcome"], decision["winner"]) == ("rollback", None)
    assert decision["reasons"][0].startswith(
        "guardrail payment-errors significantly worse for one-page")
    assert decision["reasons"][1] == (
        "the sequential test is valid at any time, so the rollback does not wait for "
        "1000 units per variant and 7 days of data")
    stored = client.get(f"/api/v1/experiments/{KEY}", headers=admin_headers).get_json()
    assert stored["decision"]["outcome"] == "rollback"


def test_a_frequentist_experiment_keeps_running_before_min_days(client, admin_headers, db):
    start_harmed(client, admin_headers, db, method="frequentist")
    report = analyze(client, admin_headers)
    assert report["decision"]["outcome"] == "keep_running"
    assert report["decision"]["reasons"][0].startswith("waiting for 1000 units per variant")
    assert breach_alerts(report) == [("guardrail_breach", "payment-errors", "one-page")]


def test_shipping_the_harmful_variant_needs_acknowledged_risks(client, admin_headers, db):
    start_harmed(client, admin_headers, db, method="frequentist")
    analyze(client, admin_headers)
    url = f"/api/v1/experiments/{KEY}/conclude"
    refused = client.post(url, headers=admin_headers,
                          json={"outcome": "ship", "winner": "one-page"})
    assert refused.status_code == 409
    error = refused.get_json()["error"]
    assert error["code"] == "risky_ship"
    assert BREACH in error["message"]
    assert [(r["kind"], r["metric"], r["variant"]) for r in error["details"]] == [
        ("guardrail_breach", "payment-errors", "one-page")]
    still = client.get(f"/api/v1/experiments/{KEY}", headers=admin_headers).get_json()
    assert still["status"] == "running"

    shipped = client.post(url, headers=admin_headers, json={
        "outcome": "ship", "winner": "one-page", "acknowledge_risks": True})
    assert shipped.status_code == 200, shipped.get_json()
    concluded = shipped.get_json()
    assert (concluded["status"], concluded["decision"]["winner"]) == ("concluded", "one-page")
    acknowledged = [r for r in concluded["decision"]["reasons"]
                    if r.startswith("risk acknowledged: ")]
    assert len(acknowledged) == 1 and BREACH in acknowledged[0]
    db.expire_all()
    audit = db.scalar(select(AuditEntry).where(AuditEntry.action == "experiment.conclude"))
    assert acknowledged[0] in audit.after["decision"]["reasons"]


def test_shipping_the_control_or_rolling_back_is_not_risky(client, admin_headers, db):
    start_harmed(client, admin_headers, db, method="frequentist")
    analyze(client, admin_headers)
    response = client.post(f"/api/v1/experiments/{KEY}/conclude", headers=admin_headers,
                           json={"outcome": "ship", "winner": "control"})
    assert response.status_code == 200
    assert not [r for r in response.get_json()["decision"]["reasons"] if "risk" in r]


def test_shipping_under_sample_ratio_mismatch_is_risky(client, admin_headers, db):
    body = experiment_payload(KEY, layer=None)
    client.post("/api/v1/experiments", json=body, headers=admin_headers)
    client.post(f"/api/v1/experiments/{KEY}/start", headers=admin_headers)
    experiment = db.scalar(select(Experiment).where(Experiment.key == KEY))
    seed_traffic(db, experiment, units={"control": 1100, "one-page": 900},
                 conversion={"control": 0.1, "one-page": 0.1}, start=utcnow() - timedelta(hours=3))
    report = analyze(client, admin_headers)
    assert [a["kind"] for a in report["alerts"]] == ["srm"]
    refused = client.post(f"/api/v1/experiments/{KEY}/conclude", headers=admin_headers,
                          json={"outcome": "ship", "winner": "control"})
    assert refused.status_code == 409
    assert [r["kind"] for r in refused.get_json()["error"]["details"]] == ["srm"]


def test_events_before_exposure_alert_names_the_variant(client, admin_headers, db):
    start_harmed(client, admin_headers, db, method="frequentist")
    rows = db.execute(select(Event.unit_id, Event.occurred_at)
                      .where(Event.name == "purchase", Event.unit_id.like(f"{KEY}-control-%"))
                      ).all()
    db.execute(Event.__table__.insert(), [
        {"event_id": f"early-{index}", "unit_id": unit, "type": "conversion",
         "name": "purchase", "occurred_at": at - timedelta(hours=4), "properties": {}}
        for index, (unit, at) in enumerate(rows)])
    db.commit()
    report = analyze(client, admin_headers)
    early = [a for a in report["alerts"] if a["kind"] == "events_before_exposure"]
    assert [(a["metric"], a["variant"]) for a in early] == [(None, "control")]
    assert "happened before the unit's exposure" in early[0]["message"]


def test_a_breach_under_srm_does_not_roll_back_early():
    settings = AnalysisSettings(method="sequential", min_units_per_variant=1000, min_days=7)
    harmed = decision_body([comparison("b", "flat")], [comparison("b", "worse")])
    assert decide(settings, harmed, days=1).outcome == "rollback"
    under_srm = decision_body([comparison("b", "flat")], [comparison("b", "worse")], srm=True)
    assert decide(settings, under_srm, days=1).outcome == "keep_running"
    frequentist = AnalysisSettings(method="frequentist", min_units_per_variant=1000, min_days=7)
    assert decide(frequentist, harmed, days=1).outcome == "keep_running"


@pytest.mark.parametrize("cuped", [False, True])
def test_metric_events_before_and_after_exposure_are_counted_in_the_pass(db, cuped):
    from tests.test_aggregation import aggregates, make_experiment, seed_dataset

    experiment = make_experiment(db)
    seed_dataset(db, experiment)
    # c2's purchase 1 h before its exposure is early; events after the window, friction
    # at a step no metric reads and the override unit's events never count
    assert aggregates(db, experiment, cuped=cuped).timing == {
        "control": [1.0, 11.0], "one-page": [0.0, 6.0]}
