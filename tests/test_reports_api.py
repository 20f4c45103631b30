"""Reports API (SPEC §3/§6): analyze now, latest report, history, export; admin key only."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from sqlalchemy import select

from experiments.db import get_db, utcnow
from experiments.models import Event, Experiment, Exposure
from experiments.services.analysis import EXPORT_COLUMNS

BASE = "/api/v1/experiments/checkout-redesign"


def seed(app, units=20):
    """Half the units in each variant; every fourth unit (all in one-page) buys."""
    with get_db(app).session() as session:
        experiment = session.scalar(select(Experiment).where(
            Experiment.key == "checkout-redesign"))
        now = utcnow()
        for index in range(units):
            variant = "control" if index % 2 else "one-page"
            session.add(Exposure(experiment_id=experiment.id, unit_id=f"u{index}",
                                 variant_key=variant, exposed_at=now - timedelta(hours=3)))
            if index % 4 == 0:
                session.add(Event(event_id=f"e{index}", unit_id=f"u{index}", type="conversion",
                                  name="purchase", value=10.0,
                                  occurred_at=now - timedelta(hours=1)))


def test_analyze_returns_the_stored_report(app, client, admin_headers, started):
    seed(app)
    response = client.post(f"{BASE}/analyze", headers=admin_headers)
    assert response.status_code == 200
    report = response.get_json()
    assert report["experiment"] == "checkout-redesign" and isinstance(report["id"], int)
    assert report["units"] == {"control": 10, "one-page": 10}
    assert [m["key"] for m in report["metrics"]] == [m["key"] for m in started["metrics"]]
    purchase = report["metrics"][0]
    assert purchase["variants"][1]["estimate"] == pytest.approx(0.5)
    assert set(purchase["comparisons"][0]) == {
        "variant", "absolute_effect", "absolute_ci", "relative_effect", "relative_ci",
        "p_value", "adjusted_p_value", "chance_to_win", "expected_loss", "significant",
        "verdict"}
    assert report["decision"]["outcome"] == "keep_running"
    latest = client.get(f"{BASE}/report", headers=admin_headers).get_json()
    assert latest == report


def test_history_is_newest_first_and_paginated(app, client, admin_headers, started):
    ids = [client.post(f"{BASE}/analyze", headers=admin_headers).get_json()["id"]
           for _ in range(3)]
    page = client.get(f"{BASE}/reports?limit=2", headers=admin_headers).get_json()
    assert [item["id"] for item in page["items"]] == ids[::-1][:2]
    rest = client.get(f"{BASE}/reports?limit=2&cursor={page['next_cursor']}",
                      headers=admin_headers).get_json()
    assert [item["id"] for item in rest["items"]] == [ids[0]] and rest["next_cursor"] is None


def test_a_missing_report_or_experiment_is_404(client, admin_headers, started):
    assert client.get(f"{BASE}/report", headers=admin_headers).status_code == 404
    assert client.get(f"{BASE}/export", headers=admin_headers).status_code == 404
    for path in ("/api/v1/experiments/nope/report", "/api/v1/experiments/nope/reports"):
        response = client.get(path, headers=admin_headers)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "not_found"
    assert client.post("/api/v1/experiments/nope/analyze",
                       headers=admin_headers).status_code == 404


def test_export_gives_one_row_per_metric_and_variant(app, client, admin_headers, started):
    seed(app)
    client.post(f"{BASE}/analyze", headers=admin_headers)
    data = client.get(f"{BASE}/export?format=json", headers=admin_headers).get_json()
    assert len(data["rows"]) == 4 * 2
    treatment = next(r for r in data["rows"] if r["metric"] == "purchase"
                     and r["variant"] == "one-page")
    assert treatment["estimate"] == pytest.approx(0.5) and treatment["verdict"] is not None
    response = client.get(f"{BASE}/export?format=csv", headers=admin_headers)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == list(EXPORT_COLUMNS) and len(rows) == 1 + 8
    assert rows[1][:4] == ["purchase", "conversion", "primary", "control"]


def test_an_unknown_export_format_is_422(client, admin_headers, started):
    response = client.get(f"{BASE}/export?format=xml", headers=admin_headers)
    assert response.status_code == 422
    assert response.get_json()["error"]["details"][0]["field"] == "format"


def test_reports_need_an_admin_key(client, client_headers, started):
    assert client.post(f"{BASE}/analyze", headers=client_headers).status_code == 403
    assert client.get(f"{BASE}/report").status_code == 401


def test_openapi_documents_the_report_and_calculator_routes(client):
    document = client.get("/openapi.json").get_json()
    for path in ("/api/v1/experiments/{key}/analyze", "/api/v1/experiments/{key}/report",
                 "/api/v1/experiments/{key}/reports", "/api/v1/experiments/{key}/export",
                 "/api/v1/stats/analyze", "/api/v1/stats/power"):
        assert path in document["paths"], path
    schemas = document["components"]["schemas"]
    assert {"ReportOut", "StatsAnalyzeIn", "PowerOut"} <= set(schemas)


def test_the_api_serves_time_on_step_and_data_quality_as_stored(app, client, admin_headers,
                                                                started):
    """Fields the analysis stores must survive the response model: the funnel's time on
    step (SPEC §11) and the count of units left out for several variants."""
    seed(app)
    with get_db(app).session() as session:
        experiment = session.scalar(select(Experiment).where(
            Experiment.key == "checkout-redesign"))
        experiment.analysis = {**experiment.analysis, "time_on_step": True}
        start = utcnow() - timedelta(hours=3)
        for unit, (first, second) in {"u0": (100, 160), "u2": (200, 230)}.items():
            for name, seconds in (("cart", first), ("checkout", second)):
                session.add(Event(event_id=f"{unit}-{name}", unit_id=unit, type="step",
                                  name=name, step=name,
                                  occurred_at=start + timedelta(seconds=seconds)))
    report = client.post(f"{BASE}/analyze", headers=admin_headers).get_json()
    assert report["data_quality"] == {"multi_variant_units": 0}
    steps = {entry["step"]: entry for entry in report["funnel"]}
    assert "cart" in steps, started["journey"]
    cart = steps["cart"]["variants"]["one-page"]["time_on_step"]
    assert cart["n"] == 2
    assert (cart["p50"], cart["p90"]) == (pytest.approx(30.0), pytest.approx(60.0))
    assert steps["cart"]["variants"]["control"]["time_on_step"] == {"p50": None, "p90": None,
                                                                    "n": 0}
