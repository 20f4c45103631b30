"""kill -9 a gunicorn worker under load: every acknowledged batch and exposure is stored."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from bench.support import gunicorn
from experiments.models import Event, Exposure
from tests.factories import post_json
from tests.test_database_interruptions import running_experiment

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def worker_pids(master: int) -> list[int]:
    """Children of the gunicorn master, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                pids.append(int(entry.name))
    return pids




class Load:
    """Threads sending event batches and new-unit assignments, remembering what was acked."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.acked_events: list[str] = []
        self.acked_exposures: dict[str, str] = {}
        self.failures = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def events_loop(self) -> None:
        while not self.stop.is_set():
            ids = [uuid.uuid4().hex for _ in range(50)]
            batch = [{"event_id": i, "unit_id": f"u-{i[:6]}", "type": "step", "name": "cart",
                      "step": "cart"} for i in ids]
            self._send("/api/v1/events", {"events": batch},
                       lambda body, ids=ids: self.acked_events.extend(ids)
                       if body.get("accepted", 0) + body.get("duplicates", 0) == 50 else None)

    def assign_loop(self) -> None:
        while not self.stop.is_set():
            unit = uuid.uuid4().hex
            self._send("/api/v1/assign", {"unit_id": unit, "experiments": ["crash-test"]},
                       lambda body, unit=unit: self._remember_exposure(unit, body))

    def _remember_exposure(self, unit: str, body: dict) -> None:
        assignment = body["assignments"][0]
        if assignment["in_experiment"]:
            self.acked_exposures[unit] = assignment["variant"]

    def _send(self, path: str, body: dict, on_ok) -> None:
        try:
            status, answer = post_json(self.port, path, body, self.key)
        except (OSError, http.client.HTTPException, ValueError):
            with self.lock:
                self.failures += 1
            return
        if status == 200:
            with self.lock:
                on_ok(answer)


def test_acknowledged_writes_survive_a_killed_worker(postgres_database_url, tmp_path):
    key = running_experiment(postgres_database_url, tmp_path, "crash-test")
    env = {"PARCOURS_DATABASE_URL": postgres_database_url,
           "PARCOURS_INSTANCE_PATH": str(tmp_path), "PARCOURS_SECRET_KEY": "crash",
           "PARCOURS_LOG_LEVEL": "WARNING"}
    args = ["-c", str(ROOT / "gunicorn.conf.py"), "-w", "2", "--threads", "4"]
    with gunicorn("wsgi:app", env=env, cwd=ROOT, args=args) as (port, server):
        load = Load(port, key)
        threads = [threading.Thread(target=load.events_loop) for _ in range(3)]
        threads += [threading.Thread(target=load.assign_loop) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        victims = worker_pids(server.pid)
        assert victims, "gunicorn workers not found"
        os.kill(victims[0], signal.SIGKILL)
        time.sleep(2.5)
        load.stop.set()
        for thread in threads:
            thread.join(timeout=20)
    print(f"acked events={len(load.acked_events)} exposures={len(load.acked_exposures)} "
          f"failed requests={load.failures}")
    assert len(load.acked_events) > 500 and len(load.acked_exposures) > 100
    engine = create_engine(postgres_database_url)
    with engine.connect() as connection:
        stored_events = set(connection.scalars(select(Event.event_id)))
        stored_exposures = dict(connection.execute(select(Exposure.unit_id,
                                                          Exposure.variant_key)).all())
    engine.dispose()
    assert set(load.acked_events) <= stored_events
    assert all(stored_exposures.get(unit) == variant
               for unit, variant in load.acked_exposures.items())
