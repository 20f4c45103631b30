"""gunicorn.conf.py: workers and threads per database; start-up objects out of the GC."""

from __future__ import annotations

import gc
import multiprocessing
import runpy
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"


@pytest.mark.parametrize(("database_url", "workers", "threads"), [
    (None, 2 * 4 + 1, 1),
    ("sqlite:////var/lib/parcours/parcours.db", 2 * 4 + 1, 1),
    ("postgresql+psycopg://parcours@db/parcours", 4, 16),
])
def test_sqlite_workers_serve_one_request_at_a_time_postgres_workers_many(
        monkeypatch, database_url, workers, threads):
    monkeypatch.delenv("PARCOURS_THREADS", raising=False)
    monkeypatch.delenv("PARCOURS_WORKERS", raising=False)
    monkeypatch.setattr(multiprocessing, "cpu_count", lambda: 4)
    if database_url is None:
        monkeypatch.delenv("PARCOURS_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("PARCOURS_DATABASE_URL", database_url)
    conf = runpy.run_path(str(CONFIG))
    assert (conf["workers"], conf["threads"]) == (workers, threads)


def test_a_single_core_still_gets_two_postgres_workers(monkeypatch):
    monkeypatch.delenv("PARCOURS_WORKERS", raising=False)
    monkeypatch.setattr(multiprocessing, "cpu_count", lambda: 1)
    monkeypatch.setenv("PARCOURS_DATABASE_URL", "postgresql+psycopg://parcours@db/parcours")
    assert runpy.run_path(str(CONFIG))["workers"] == 2  # one can restart while one serves


def test_the_thread_count_can_still_be_chosen(monkeypatch):
    monkeypatch.setenv("PARCOURS_DATABASE_URL", "sqlite:///x.db")
    monkeypatch.setenv("PARCOURS_THREADS", "8")
    assert runpy.run_path(str(CONFIG))["threads"] == 8


def test_a_started_worker_freezes_its_start_up_objects():
    try:
        runpy.run_path(str(CONFIG))["post_worker_init"](None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
