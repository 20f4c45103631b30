"""The job runner: APScheduler ticks, a database lease and one JobRun row per interval slot.

Two guards make "each job runs once per interval" hold with any number of scheduler
processes (or gunicorn workers with ``PARCOURS_SCHEDULER=on``):

1. the **lease** (``scheduler_leases`` row): only the process holding an unexpired lease
   runs jobs at all, so the others stay idle standbys that take over when it expires;
2. the **slot claim** (``job_runs`` unique ``(job, slot)``, ``slot = floor(epoch / interval)``):
   a run is inserted *before* the job starts and skipped on conflict, so even a paused
   ex-leader whose lease expired under it (or clock skew between hosts) cannot run a
   slot twice. Counting ``job_runs`` rows per slot checks the guarantee.
"""

from __future__ import annotations

import atexit
import gc
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from flask import Flask
from flask.cli import get_debug_flag
from prometheus_client import Counter, Histogram
from sqlalchemy import delete, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from werkzeug.serving import is_running_from_reloader

from experiments.db import dialect_insert, get_db, utcnow
from experiments.jobs import JobSpec, registered_jobs
from experiments.models import JobRun, SchedulerLease

logger = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
DEFAULT_LEASE_TTL_S = 30.0
SCHEDULER_KEY = "parcours.scheduler"

JOB_DURATION = Histogram("parcours_job_duration_seconds", "Duration of scheduled job runs",
                         ["job"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300,
                                           600, 1800))
JOB_RUNS = Counter("parcours_job_runs_total", "Scheduled job runs by result (ok|error|skipped)",
                   ["job", "result"])


def default_holder() -> str:
    """A holder name unique per process and readable in the lease table: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _insert(session: Session) -> Any:
    """The dialect's INSERT for this session's database."""
    return dialect_insert(session.get_bind().dialect.name)


# --- lease -----------------------------------------------------------------------------------

def acquire_lease(session: Session, holder: str, *, ttl_s: float = DEFAULT_LEASE_TTL_S,
                  now: datetime | None = None, name: str = LEASE_NAME) -> datetime | None:
    """Take the lease if free, expired or already ours (renewal); its expiry, or None if not ours.

    One atomic upsert, so two contenders can never both win; commit the session to keep it.
    """
    now = now or utcnow()
    expires_at = now + timedelta(seconds=ttl_s)
    table = SchedulerLease.__table__
    statement = _insert(session)(table).values(
        name=name, holder=holder, expires_at=expires_at, renewed_at=now)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.name],
        set_={"holder": holder, "expires_at": expires_at, "renewed_at": now},
        where=(table.c.holder == holder) | (table.c.expires_at <= now),
    ).returning(table.c.holder)
    won = session.execute(statement).scalar_one_or_none() == holder
    return expires_at if won else None


def release_lease(session: Session, holder: str, *, name: str = LEASE_NAME) -> bool:
    """Give the lease up (clean stop) so a standby takes over without waiting for expiry."""
    result = session.execute(delete(SchedulerLease).where(
        SchedulerLease.name == name, SchedulerLease.holder == holder))
    return bool(result.rowcount)


def lease_holder(session: Session, *, now: datetime | None = None,
                 name: str = LEASE_NAME) -> str | None:
    """Who holds the unexpired lease now, if anyone (status, tests)."""
    return session.scalar(select(SchedulerLease.holder).where(
        SchedulerLease.name == name, SchedulerLease.expires_at > (now or utcnow())))


# --- slots -----------------------------------------------------------------------------------

def slot_for(now: datetime, interval_s: float) -> int:
    """The interval slot a time falls in: floor(epoch seconds / interval)."""
    return math.floor(now.timestamp() / interval_s)


def claim_slot(session: Session, job: str, slot: int, holder: str,
               now: datetime | None = None) -> int | None:
    """Insert the JobRun of ``(job, slot)``; its id, or None when someone already claimed it."""
    table = JobRun.__table__
    statement = (_insert(session)(table)
                 .values(job=job, slot=slot, holder=holder, started_at=now or utcnow())
                 .on_conflict_do_nothing(index_elements=[table.c.job, table.c.slot])
                 .returning(table.c.id))
    return session.execute(statement).scalar_one_or_none()


def run_job_once(app: Flask, job: JobSpec, *, holder: str, now: datetime | None = None) -> str:
    """Run ``job`` for the slot ``now`` falls in unless already claimed: "ok", "error", "skipped".

    A failing job is logged and its error stored on the JobRun; it never propagates, so one
    bad job cannot stop the scheduler.
    """
    now = now or utcnow()
    database = get_db(app)
    with database.session() as session:
        run_id = claim_slot(session, job.name, slot_for(now, job.interval_s), holder, now)
    if run_id is None:
        JOB_RUNS.labels(job.name, "skipped").inc()
        return "skipped"
    error = _timed_run(app, job)
    with database.session() as session:
        session.execute(update(JobRun).where(JobRun.id == run_id)
                        .values(finished_at=utcnow(), error=error))
    result = "error" if error else "ok"
    JOB_RUNS.labels(job.name, result).inc()
    return result


def _timed_run(app: Flask, job: JobSpec) -> str | None:
    """Run the job in an app context, observe its duration; the error text or None."""
    started = time.perf_counter()
    try:
        with app.app_context():
            job.run(app)
    except Exception as exc:
        logger.exception("job %s failed", job.name)
        return f"{type(exc).__name__}: {exc}"[:10_000]
    finally:
        JOB_DURATION.labels(job.name).observe(time.perf_counter() - started)
    return None


# --- the runner ------------------------------------------------------------------------------

def aligned_trigger(interval_s: float) -> IntervalTrigger:
    """Fire just after each slot boundary (not at start-up + n·interval), so every scheduler
    process agrees on the slot and jitter never lands two runs in one slot."""
    offset = min(interval_s * 0.1, 5.0)
    start = datetime.fromtimestamp(offset, UTC)
    return IntervalTrigger(seconds=interval_s, start_date=start, timezone=UTC)


class JobScheduler:
    """APScheduler driving the app's registered jobs; only the lease holder runs them."""

    def __init__(self, app: Flask, *, holder: str | None = None,
                 lease_ttl_s: float | None = None) -> None:
        self.app = app
        self.holder = holder or default_holder()
        self.lease_ttl_s = float(lease_ttl_s or DEFAULT_LEASE_TTL_S)
        self.jobs = registered_jobs(app)
        self._lease_until: datetime | None = None
        self._stopped = False
        self._aps = BackgroundScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1})

    def is_leader(self, now: datetime | None = None) -> bool:
        """True while our last successful lease renewal has not expired."""
        until = self._lease_until
        return until is not None and (now or utcnow()) < until

    def renew_lease(self, now: datetime | None = None) -> bool:
        """Take or renew the lease; on a database error keep what we had until it expires."""
        try:
            with get_db(self.app).session() as session:
                expires_at = acquire_lease(session, self.holder, ttl_s=self.lease_ttl_s, now=now)
        except SQLAlchemyError:
            logger.exception("scheduler %s could not renew its lease", self.holder)
            return self.is_leader(now)
        if bool(expires_at) != self.is_leader(now):
            logger.info("scheduler %s is now %s", self.holder,
                        "active (lease holder)" if expires_at else "standby")
        self._lease_until = expires_at
        return expires_at is not None

    def tick(self, job: JobSpec, now: datetime | None = None) -> str | None:
        """One scheduled firing of ``job``: its result, or None on a standby."""
        if not self.is_leader(now):
            return None
        try:
            return run_job_once(self.app, job, holder=self.holder, now=now)
        except SQLAlchemyError:
            # The database is unreachable: nothing was claimed, the next slot will try again.
            logger.exception("job %s could not be claimed", job.name)
            return None

    def start(self) -> None:
        """Take the lease if free, then tick the lease and every job in a background thread."""
        # APScheduler logs every firing at INFO; our own lines say what matters.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self.renew_lease()
        self._aps.add_job(self.renew_lease, IntervalTrigger(seconds=self.lease_ttl_s / 3),
                          id="lease-renewal")
        for job in self.jobs:
            self._aps.add_job(self.tick, aligned_trigger(job.interval_s), args=[job], id=job.name,
                              misfire_grace_time=max(1, int(job.interval_s / 2)))
        self._aps.start()
        logger.info("scheduler %s started (%s) with jobs %s", self.holder,
                    "active" if self.is_leader() else "standby", self.describe_jobs())

    def describe_jobs(self) -> str:
        """``analysis every 300s, digest every 86400s`` for logs and the CLI banner."""
        return ", ".join(f"{job.name} every {job.interval_s:g}s" for job in self.jobs) or "none"

    def shutdown(self) -> None:
        """Wait for running jobs, then release the lease so a standby takes over at once."""
        if self._stopped:
            return  # idempotent: the CLI's finally and atexit may both call it
        self._stopped = True
        if self._aps.running:
            self._aps.shutdown(wait=True)
        if self._lease_until is not None:
            try:
                with get_db(self.app).session() as session:
                    release_lease(session, self.holder)
            except SQLAlchemyError:
                logger.exception("scheduler %s could not release its lease", self.holder)
            self._lease_until = None
        logger.info("scheduler %s stopped", self.holder)


def run_foreground(app: Flask, *, ready: Any = None) -> None:
    """``flask scheduler``: run until SIGTERM/SIGINT, then stop cleanly (exit code 0)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    scheduler = JobScheduler(app)
    # What start-up built (app, models, the analysis stack: ~200k objects) lives as long as
    # the process: frozen, each full collection no longer re-scans it (a gen-2 pass cost a
    # first warehouse report at 1 M units ~0.09 s, one report in two; bench_warehouse).
    gc.freeze()
    scheduler.start()
    if ready is not None:
        ready(scheduler)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        scheduler.shutdown()


# --- in-process start (PARCOURS_SCHEDULER=on) --------------------------------------------------

def serving_process() -> bool:
    """Whether this process serves HTTP: a WSGI server or ``flask run``, not another CLI command.

    ``flask db upgrade``, ``analyze``, ``scheduler``, ``shell``… load the app from inside the
    ``flask`` command group, so the current click command is not ``run``; a WSGI server
    imports ``wsgi.py`` outside any click context. Under ``flask run --reload`` only the
    reloader's child process serves, so the watching parent does not start a scheduler.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return True
    if ctx.command.name != "run":
        return False
    reload = ctx.params.get("reload")
    if reload is None:
        reload = get_debug_flag()
    return not reload or is_running_from_reloader()


def init_app(app: Flask) -> JobScheduler | None:
    """Start the in-process scheduler when ``SCHEDULER`` is on, not TESTING, and we serve HTTP."""
    settings = app.config["PARCOURS"]
    if not settings.SCHEDULER or settings.TESTING or not serving_process():
        return None
    scheduler = JobScheduler(app)
    scheduler.start()
    app.extensions[SCHEDULER_KEY] = scheduler
    atexit.register(scheduler.shutdown)
    return scheduler
