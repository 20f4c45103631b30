"""An analysis that fails stores an ``error`` report for that experiment only (SPEC §6)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from experiments.db import utcnow
from experiments.models import Experiment, Report
from experiments.services import analysis, report
from tests.factories import experiment_payload
from tests.test_aggregation import seed_traffic


def start(client: Any, headers: dict[str, str], db: Any, key: str) -> None:
    body = experiment_payload(key, layer=None)
    assert client.post("/api/v1/experiments", json=body, headers=headers).status_code == 201
    assert client.post(f"/api/v1/experiments/{key}/start", headers=headers).status_code == 200
    experiment = db.scalar(select(Experiment).where(Experiment.key == key))
    seed_traffic(db, experiment, units={"control": 50, "one-page": 50},
                 conversion={"control": 0.1, "one-page": 0.2}, start=utcnow() - timedelta(hours=2))


def fail_analysis_of(monkeypatch: pytest.MonkeyPatch, key: str, error: Exception) -> None:
    """Analysing experiment ``key`` raises ``error``; every other experiment is analysed."""
    original = analysis.build_report

    def build(experiment: Experiment, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if experiment.key == key:
            raise error
        return original(experiment, *args, **kwargs)

    monkeypatch.setattr(analysis, "build_report", build)


@pytest.fixture
def broken(client, admin_headers, db, monkeypatch) -> None:
    """Two running experiments; analysing ``a-broken`` overflows."""
    start(client, admin_headers, db, "a-broken")
    start(client, admin_headers, db, "b-fine")
    fail_analysis_of(monkeypatch, "a-broken", OverflowError("math range error"))


def test_analyze_returns_the_stored_error_report(client, admin_headers, broken):
    response = client.post("/api/v1/experiments/a-broken/analyze", headers=admin_headers)
    assert response.status_code == 200
    report = response.get_json()
    assert set(report) == {"id", "experiment", "computed_at", "error"}
    assert (report["experiment"], report["error"]) == ("a-broken",
                                                       "OverflowError: math range error")
    latest = client.get("/api/v1/experiments/a-broken/report", headers=admin_headers)
    assert latest.get_json() == report
    history = client.get("/api/v1/experiments/a-broken/reports", headers=admin_headers)
    assert history.get_json()["items"] == [report]


def test_the_cli_analyses_every_experiment_and_exits_1_when_one_failed(runner, db, broken):
    before = utcnow()
    result = runner.invoke(args=["analyze"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "a-broken: error: OverflowError: math range error"
    assert lines[1].startswith("b-fine: 100 units (control 50, one-page 50)")
    assert "1 of 2 analyses failed" in result.output
    db.expire_all()
    bodies = {r.body["experiment"]: r.body for r in db.scalars(select(Report))}
    assert bodies["a-broken"]["error"] == "OverflowError: math range error"
    assert bodies["b-fine"]["units"] == {"control": 50, "one-page": 50}
    assert bodies["b-fine"]["computed_at"] >= before.isoformat()


def test_a_later_sequential_report_skips_the_failed_one(client, admin_headers, db, broken,
                                                        monkeypatch):
    fine = client.post("/api/v1/experiments/b-fine/analyze", headers=admin_headers).get_json()
    experiment = db.scalar(select(Experiment).where(Experiment.key == "b-fine"))
    db.add(Report(experiment_id=experiment.id, method="sequential",
                  body={"experiment": "b-fine", "computed_at": utcnow().isoformat(),
                        "error": "OperationalError: warehouse down"}))
    db.commit()
    seen: list[Any] = []
    original = report.previous_p_values

    def spy(previous: Any, method: str) -> Any:
        seen.append(previous)
        return original(previous, method)

    monkeypatch.setattr(report, "previous_p_values", spy)
    again = client.post("/api/v1/experiments/b-fine/analyze", headers=admin_headers)
    assert again.status_code == 200 and "error" not in again.get_json()
    assert "error" not in seen[0]
    assert (datetime.fromisoformat(seen[0]["computed_at"])
            == datetime.fromisoformat(fine["computed_at"]))
