"""gunicorn.conf.py: thread count per database, start-up objects kept out of the collector."""

from __future__ import annotations

import gc
import runpy
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"


@pytest.mark.parametrize(("database_url", "threads"), [
    (None, 1),
    ("sqlite:////var/lib/parcours/parcours.db", 1),
    ("postgresql+psycopg://parcours@db/parcours", 4),
])
def test_sqlite_workers_serve_one_request_at_a_time(monkeypatch, database_url, threads):
    monkeypatch.delenv("PARCOURS_THREADS", raising=False)
    if database_url is None:
        monkeypatch.delenv("PARCOURS_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("PARCOURS_DATABASE_URL", database_url)
    assert runpy.run_path(str(CONFIG))["threads"] == threads


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
