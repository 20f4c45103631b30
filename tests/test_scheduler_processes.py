"""Two real `flask --app wsgi scheduler` processes on one PostgreSQL: each slot runs once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from experiments.auth import SYSTEM
from experiments.db import get_db, utcnow
from experiments.models import JobRun, Report
from experiments.scheduler import slot_for
from experiments.services.lifecycle import create_experiment, transition
from tests.conftest import make_test_app
from tests.factories import experiment_payload

ROOT = Path(__file__).resolve().parent.parent
INTERVAL_S = 2
pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]


def slot_for_now() -> int:
    return slot_for(utcnow(), INTERVAL_S)


def start_scheduler(database_url: str, log_dir: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """Start one scheduler process whose stdout/stderr go to files (never a full pipe)."""
    env = {**os.environ, "PARCOURS_DATABASE_URL": database_url,
           "PARCOURS_ANALYSIS_INTERVAL_S": str(INTERVAL_S), "PARCOURS_SCHEDULER": "off",
           "PARCOURS_INSTANCE_PATH": str(log_dir), "PARCOURS_SECRET_KEY": "test-secret"}
    stdout = log_dir / f"{name}.out"
    with open(stdout, "w") as out, open(log_dir / f"{name}.err", "w") as err:
        process = subprocess.Popen([str(ROOT / ".venv/bin/flask"), "--app", "wsgi", "scheduler"],
                                   cwd=ROOT, env=env, stdout=out, stderr=err)
    return process, stdout


def wait_for_banner(process: subprocess.Popen, stdout: Path, timeout_s: float = 20) -> str:
    """The 'scheduler … running (active|standby)' line, once the process printed it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = stdout.read_text()
        if "running (" in text:
            return text
        assert process.poll() is None, f"scheduler exited early: {stdout.with_suffix('.err')}"
        time.sleep(0.1)
    raise AssertionError(f"no banner from the scheduler in {timeout_s}s")


def test_two_scheduler_processes_run_each_analysis_interval_exactly_once(
        postgres_database_url, tmp_path):
    app = make_test_app(postgres_database_url, tmp_path)
    with get_db(app).session() as session:
        create_experiment(session, experiment_payload(), SYSTEM)
        transition(session, "checkout-redesign", "start", SYSTEM)
    processes = [start_scheduler(postgres_database_url, tmp_path, f"s{i}") for i in range(2)]
    try:
        banners = [wait_for_banner(process, stdout) for process, stdout in processes]
        assert sorted("(active)" in banner for banner in banners) == [False, True]
        first_full_slot = slot_for_now() + 1
        time.sleep(3 * INTERVAL_S + 0.8)
        last_full_slot = slot_for_now() - 1
        # Standby first, so it cannot take over the lease the active one releases.
        for process, _ in sorted(processes, key=lambda p: "(active)" in p[1].read_text()):
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
    with get_db(app).session() as session:
        runs = session.scalars(select(JobRun).where(JobRun.job == "analysis")
                               .order_by(JobRun.slot)).all()
        reports = session.scalar(select(func.count()).select_from(Report))
    get_db(app).engine.dispose()
    slots = [run.slot for run in runs]
    assert set(range(first_full_slot, last_full_slot + 1)) <= set(slots)
    assert slots == list(range(slots[0], slots[0] + len(slots)))  # once per slot, none missed
    assert len(slots) >= 3
    assert len({run.holder for run in runs}) == 1  # only the lease holder ran jobs
    assert [run.error for run in runs] == [None] * len(runs)
    assert reports == len(runs)  # each run analysed the one running experiment once
