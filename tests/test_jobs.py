"""The scheduler's lease, JobRun slots, built-in jobs and when the in-process scheduler starts."""

from __future__ import annotations

import importlib
import sys
import types
from datetime import UTC, datetime, timedelta

import click
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.jobs import (
    DIGEST_INTERVAL_S,
    JobFailed,
    JobSpec,
    build_digest,
    register_job,
    registered_jobs,
    report_summary,
    run_analysis,
)
from experiments.models import Experiment, JobRun, Report
from experiments.scheduler import (
    JobScheduler,
    acquire_lease,
    aligned_trigger,
    claim_slot,
    lease_holder,
    release_lease,
    run_job_once,
    serving_process,
    slot_for,
)
from experiments.services.lifecycle import create_experiment, transition
from tests.factories import experiment_payload

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
TTL = 30.0


@pytest.fixture
def analysis_service(monkeypatch):
    """The analysis service module to monkeypatch (a bare stand-in until part 1 lands)."""
    name = "experiments.services.analysis"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        module = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, module)
        return module


def lease(app, holder, at_s, *, ttl_s=TTL):
    """Try to take or renew the lease ``at_s`` seconds after T0, as ``holder``."""
    with get_db(app).session() as session:
        return acquire_lease(session, holder, ttl_s=ttl_s, now=T0 + timedelta(seconds=at_s))


def holder_at(app, at_s):
    with get_db(app).session() as session:
        return lease_holder(session, now=T0 + timedelta(seconds=at_s))


def job_runs(app):
    with get_db(app).session() as session:
        return session.scalars(select(JobRun).order_by(JobRun.id)).all()


def runs_total(job, result):
    return REGISTRY.get_sample_value("parcours_job_runs_total",
                                     {"job": job, "result": result}) or 0.0


# --- lease -----------------------------------------------------------------------------------

def test_only_one_of_two_lease_contenders_holds_it(app):
    assert lease(app, "a", 0) == T0 + timedelta(seconds=TTL)
    assert lease(app, "b", 1) is None
    assert holder_at(app, 2) == "a"


def test_an_expired_lease_lets_the_other_scheduler_take_over(app):
    lease(app, "a", 0)
    assert lease(app, "b", TTL - 1) is None
    assert lease(app, "b", TTL) == T0 + timedelta(seconds=2 * TTL)
    assert lease(app, "a", TTL + 1) is None
    assert holder_at(app, TTL + 1) == "b"


def test_renewing_the_lease_keeps_it_past_the_first_expiry(app):
    lease(app, "a", 0)
    assert lease(app, "a", 20) == T0 + timedelta(seconds=20 + TTL)
    assert lease(app, "b", TTL + 5) is None
    assert holder_at(app, TTL + 5) == "a"
    assert lease(app, "b", 20 + TTL) is not None


def test_releasing_the_lease_hands_it_over_at_once(app):
    lease(app, "a", 0)
    with get_db(app).session() as session:
        assert release_lease(session, "b") is False
        assert release_lease(session, "a") is True
    assert holder_at(app, 1) is None
    assert lease(app, "b", 1) is not None


def test_only_the_lease_holder_runs_jobs(app):
    calls = []
    job = JobSpec("probe", 60, lambda _app: calls.append(1))
    first = JobScheduler(app, holder="first", lease_ttl_s=TTL)
    second = JobScheduler(app, holder="second", lease_ttl_s=TTL)
    assert first.renew_lease(now=T0) is True
    assert second.renew_lease(now=T0) is False
    assert second.tick(job, now=T0) is None
    assert first.tick(job, now=T0) == "ok"
    assert first.is_leader(T0 + timedelta(seconds=TTL)) is False
    assert calls == [1]
    assert [(run.job, run.holder) for run in job_runs(app)] == [("probe", "first")]


def test_a_clean_shutdown_releases_the_lease(app):
    first = JobScheduler(app, holder="first", lease_ttl_s=TTL)
    first.renew_lease()
    first.shutdown()
    assert holder_at(app, 0) is None
    assert JobScheduler(app, holder="second", lease_ttl_s=TTL).renew_lease() is True


# --- slots -----------------------------------------------------------------------------------

def test_slots_are_floor_of_epoch_seconds_over_the_interval():
    assert slot_for(T0, 60) == int(T0.timestamp()) // 60
    assert slot_for(T0 + timedelta(seconds=59.9), 60) == slot_for(T0, 60)
    assert slot_for(T0 + timedelta(seconds=60), 60) == slot_for(T0, 60) + 1


def test_a_slot_is_claimed_once(app):
    with get_db(app).session() as session:
        first = claim_slot(session, "analysis", 7, "a", T0)
        second = claim_slot(session, "analysis", 7, "b", T0)
        other_job = claim_slot(session, "digest", 7, "b", T0)
    assert isinstance(first, int) and second is None and isinstance(other_job, int)


def test_the_same_slot_runs_once_when_two_schedulers_fire_it(app):
    calls = []
    job = JobSpec("probe", 60, lambda _app: calls.append(1))
    skipped_before = runs_total("probe", "skipped")
    assert run_job_once(app, job, holder="a", now=T0) == "ok"
    assert run_job_once(app, job, holder="b", now=T0 + timedelta(seconds=1)) == "skipped"
    assert run_job_once(app, job, holder="b", now=T0 + timedelta(seconds=60)) == "ok"
    assert calls == [1, 1]
    runs = job_runs(app)
    assert [(run.slot, run.holder, run.error) for run in runs] == [
        (slot_for(T0, 60), "a", None), (slot_for(T0, 60) + 1, "b", None)]
    assert all(run.finished_at is not None for run in runs)
    assert runs_total("probe", "skipped") == skipped_before + 1


def test_a_failing_job_records_its_error_and_the_scheduler_goes_on(app):
    def explode(_app):
        raise RuntimeError("analysis backend down")

    errors_before = runs_total("exploding", "error")
    scheduler = JobScheduler(app, holder="solo", lease_ttl_s=TTL)
    scheduler.renew_lease(now=T0)
    failing = JobSpec("exploding", 60, explode)
    healthy = JobSpec("healthy", 60, lambda _app: None)
    assert scheduler.tick(failing, now=T0) == "error"
    assert scheduler.tick(healthy, now=T0) == "ok"
    assert scheduler.tick(failing, now=T0 + timedelta(seconds=60)) is None  # lease expired
    scheduler.renew_lease(now=T0 + timedelta(seconds=60))
    assert scheduler.tick(failing, now=T0 + timedelta(seconds=60)) == "error"
    errors = {(run.job, run.slot): run.error for run in job_runs(app)}
    assert errors[("exploding", slot_for(T0, 60))] == "RuntimeError: analysis backend down"
    assert errors[("healthy", slot_for(T0, 60))] is None
    assert runs_total("exploding", "error") == errors_before + 2
    assert REGISTRY.get_sample_value("parcours_job_duration_seconds_count",
                                     {"job": "healthy"}) >= 1


def test_jobs_fire_just_after_each_slot_boundary():
    trigger = aligned_trigger(2.0)
    now = datetime(2026, 11, 24, 10, 0, 1, 500_000, tzinfo=UTC)
    fire = trigger.get_next_fire_time(None, now)
    assert fire == datetime(2026, 11, 24, 10, 0, 2, 200_000, tzinfo=UTC)
    assert slot_for(fire, 2.0) == slot_for(now, 2.0) + 1
    daily = aligned_trigger(DIGEST_INTERVAL_S).get_next_fire_time(None, now)
    assert daily == datetime(2026, 11, 25, 0, 0, 5, tzinfo=UTC)


# --- built-in jobs ---------------------------------------------------------------------------

def test_analysis_and_digest_are_registered_with_their_intervals(database_url, tmp_path):
    from tests.conftest import make_test_app

    app = make_test_app(database_url, tmp_path, ANALYSIS_INTERVAL_S=42)
    jobs = {job.name: job.interval_s for job in registered_jobs(app)}
    assert jobs["analysis"] == 42.0 and jobs["digest"] == DIGEST_INTERVAL_S
    register_job(app, JobSpec("deliver", 5, lambda _app: None))
    assert [job.name for job in registered_jobs(app)][-1] == "deliver"
    get_db(app).engine.dispose()


def test_the_analysis_job_reports_failed_experiments_after_running_all(
        app, monkeypatch, analysis_service):
    monkeypatch.setattr(analysis_service, "analyze_running", raising=False,
                        value=lambda factory, now=None: {"a": "ok", "b": "error: boom", "c": "ok"})
    with pytest.raises(JobFailed, match=r"1 of 3 experiment\(s\) failed: b: error: boom"):
        run_analysis(app)
    monkeypatch.setattr(analysis_service, "analyze_running",
                        lambda factory, now=None: {"a": "ok"})
    assert run_job_once(app, JobSpec("analysis", 60, run_analysis), holder="x", now=T0) == "ok"


REPORT_BODY = {
    "units": {"control": 5012, "one-page": 4988},
    "srm": {"p_value": 0.81, "detected": False},
    "metrics": [
        {"key": "revenue", "role": "secondary", "comparisons": []},
        {"key": "purchase", "role": "primary", "comparisons": [
            {"variant": "one-page", "relative_effect": 0.118, "p_value": 0.03,
             "adjusted_p_value": 0.03, "verdict": "better"}]}],
    "decision": {"outcome": "ship", "winner": "one-page"},
}


def test_a_report_summary_names_units_srm_primary_verdict_and_decision():
    assert report_summary(REPORT_BODY) == (
        "10000 units (control 5012, one-page 4988) · SRM ok · "
        "purchase: one-page +11.8% better (p=0.030) · decision ship one-page")
    degenerate = {"units": {"control": 0, "one-page": 0}, "srm": {"detected": None},
                  "metrics": [{"key": "purchase", "role": "primary", "comparisons": [
                      {"variant": "one-page", "relative_effect": None, "p_value": None,
                       "verdict": None}]}]}
    assert report_summary(degenerate) == (
        "0 units (control 0, one-page 0) · SRM ok · purchase: one-page n/a inconclusive")


def test_the_digest_lists_running_experiments_with_their_latest_report(app, db):
    for key in ("checkout-redesign", "address-autocomplete", "draft-only"):
        create_experiment(db, experiment_payload(key, layer=None), SYSTEM)
    for key in ("checkout-redesign", "address-autocomplete"):
        transition(db, key, "start", SYSTEM)
    db.commit()
    experiment = db.scalar(select(Experiment).where(Experiment.key == "checkout-redesign"))
    db.add(Report(experiment_id=experiment.id, method="sequential", body={"units": {}},
                  computed_at=T0 - timedelta(days=1)))
    db.add(Report(experiment_id=experiment.id, method="sequential", body=REPORT_BODY,
                  computed_at=T0))
    db.commit()
    now = experiment.started_at + timedelta(days=3, hours=1)
    lines = build_digest(db, now=now)
    assert lines[0] == f"2 running experiment(s) on {now:%Y-%m-%d}"
    assert lines[1] == "address-autocomplete (day 3): no report yet"
    assert lines[2] == "checkout-redesign (day 3): " + report_summary(REPORT_BODY)


# --- in-process start ------------------------------------------------------------------------

def test_the_in_process_scheduler_starts_only_in_a_serving_process(monkeypatch):
    monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    assert serving_process() is True  # imported by gunicorn or another WSGI server
    for name, params, expected in [("upgrade", {}, False), ("analyze", {}, False),
                                   ("scheduler", {}, False), ("run", {"reload": False}, True),
                                   ("run", {"reload": True}, False)]:
        ctx = click.Context(click.Command(name), info_name=name)
        ctx.params.update(params)
        with ctx:
            assert serving_process() is expected, name
    monkeypatch.setenv("WERKZEUG_RUN_MAIN", "true")
    ctx = click.Context(click.Command("run"), info_name="run")
    ctx.params["reload"] = True
    with ctx:
        assert serving_process() is True  # the reloader's child serves


def test_the_scheduler_never_starts_under_testing(database_url, tmp_path):
    from tests.conftest import make_test_app

    app = make_test_app(database_url, tmp_path, SCHEDULER=True)
    assert "parcours.scheduler" not in app.extensions
    get_db(app).engine.dispose()


def test_scheduler_on_in_a_serving_process_starts_and_stops(database_url, tmp_path):
    from tests.conftest import make_test_app

    app = make_test_app(database_url, tmp_path, SCHEDULER=True, TESTING=False)
    scheduler = app.extensions["parcours.scheduler"]
    try:
        assert scheduler.is_leader()
        with get_db(app).session() as session:
            assert lease_holder(session) == scheduler.holder
    finally:
        scheduler.shutdown()
    with get_db(app).session() as session:
        assert lease_holder(session) is None
    get_db(app).engine.dispose()
