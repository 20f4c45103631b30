"""`flask --app wsgi analyze [--experiment KEY]`: one summary line per experiment."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from experiments.auth import SYSTEM
from experiments.db import utcnow
from experiments.models import Event, Experiment, Exposure, Report
from experiments.services.lifecycle import create_experiment, transition
from tests.factories import experiment_payload
from tests.test_jobs import REPORT_BODY, analysis_service  # noqa: F401  (fixture)


def start_experiments(db, running, draft=()):
    for key in (*running, *draft):
        create_experiment(db, experiment_payload(key, layer=None), SYSTEM)
    for key in running:
        transition(db, key, "start", SYSTEM)
    db.commit()


def fake_analysis(monkeypatch, service, failing=()):
    """Replace analyze_experiment: store REPORT_BODY, or raise for the ``failing`` keys."""
    calls = []

    def analyze_experiment(session, key, *, now=None):
        calls.append(key)
        if key in failing:
            raise RuntimeError(f"cannot analyse {key}")
        experiment = session.scalar(select(Experiment).where(Experiment.key == key))
        report = Report(experiment_id=experiment.id, method="sequential", body=REPORT_BODY)
        session.add(report)
        session.commit()
        return report

    monkeypatch.setattr(service, "analyze_experiment", analyze_experiment, raising=False)
    return calls


def test_analyze_summarises_each_running_experiment_and_one_failure_stops_nothing(
        runner, db, monkeypatch, analysis_service):  # noqa: F811
    start_experiments(db, running=("a-broken", "b-fine", "c-fine"), draft=("d-draft",))
    calls = fake_analysis(monkeypatch, analysis_service, failing={"a-broken"})
    result = runner.invoke(args=["analyze"])
    assert calls == ["a-broken", "b-fine", "c-fine"]
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "a-broken: error: RuntimeError: cannot analyse a-broken",
        "b-fine: 10000 units (control 5012, one-page 4988) · SRM ok · "
        "purchase: one-page +11.8% better (p=0.030) · decision ship one-page",
        "c-fine: 10000 units (control 5012, one-page 4988) · SRM ok · "
        "purchase: one-page +11.8% better (p=0.030) · decision ship one-page"]
    assert "1 of 3 analyses failed" in result.output
    assert db.scalar(select(func.count()).select_from(Report)) == 2


def test_analyze_one_experiment_by_key(runner, db, monkeypatch, analysis_service):  # noqa: F811
    start_experiments(db, running=("a-running",), draft=("b-draft",))
    calls = fake_analysis(monkeypatch, analysis_service)
    result = runner.invoke(args=["analyze", "--experiment", "b-draft"])
    assert result.exit_code == 0, result.output
    assert calls == ["b-draft"]
    assert result.stdout.startswith("b-draft: 10000 units")


def test_analyze_without_running_experiments_says_so(runner, monkeypatch,
                                                     analysis_service):  # noqa: F811
    calls = fake_analysis(monkeypatch, analysis_service)
    result = runner.invoke(args=["analyze"])
    assert result.exit_code == 0 and calls == []
    assert "no running experiment to analyse" in result.stdout


def seed_traffic(db, key, units=40):
    """Exposures split over both variants and purchases for a quarter of the units."""
    experiment = db.scalar(select(Experiment).where(Experiment.key == key))
    exposed_at = utcnow() - timedelta(hours=2)
    for index in range(units):
        unit = f"unit-{index}"
        variant = "control" if index % 2 else "one-page"
        db.add(Exposure(experiment_id=experiment.id, unit_id=unit, variant_key=variant,
                        exposed_at=exposed_at))
        if index % 4 == 0:
            db.add(Event(event_id=f"e-{index}", unit_id=unit, type="conversion", name="purchase",
                         value=10.0, occurred_at=exposed_at + timedelta(minutes=5)))
    db.commit()


def test_analyze_stores_a_report_for_a_running_experiment(runner, db):
    start_experiments(db, running=("checkout-redesign",))
    seed_traffic(db, "checkout-redesign")
    result = runner.invoke(args=["analyze", "--experiment", "checkout-redesign"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("checkout-redesign: 40 units (control 20, one-page 20)")
    report = db.scalar(select(Report))
    assert report.body["units"] == {"control": 20, "one-page": 20}


def test_analyze_an_unknown_experiment_fails_with_its_message(runner):
    result = runner.invoke(args=["analyze", "--experiment", "nope"])
    assert result.exit_code == 1
    assert "nope: error: no experiment with key 'nope'" in result.stdout
