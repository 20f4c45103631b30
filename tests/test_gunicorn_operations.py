"""The deployed server (gunicorn.conf.py, 2 workers) as an operator runs it (SPEC §1, §2).

One scrape of ``/metrics`` is the whole server, a ``5/minute`` limit kept in Redis admits
exactly 5 requests whichever worker serves them, and API keys never reach the access log.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.support import gunicorn
from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.services.accounts import create_api_key
from experiments.services.lifecycle import create_experiment, transition
from tests.conftest import make_test_app
from tests.factories import experiment_payload

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/0"
pytestmark = pytest.mark.slow


def prepare(database_url: str, tmp_path: Path) -> str:
    """A running experiment for everyone; a client key."""
    app = make_test_app(database_url, tmp_path)
    with get_db(app).session() as session:
        key = create_api_key(session, name="ops", role="client", principal=SYSTEM)[1]
        create_experiment(session, experiment_payload(key="ops-exp", targeting=[], overrides={},
                                                      layer=None), SYSTEM)
        transition(session, "ops-exp", "start", SYSTEM)
    get_db(app).engine.dispose()
    return key


@contextmanager
def serve(database_url: str, tmp_path: Path, *args: str, **env: str
          ) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """gunicorn with the project's config and two workers."""
    environment = {"PARCOURS_DATABASE_URL": database_url, "PARCOURS_WORKERS": "2",
                   "PARCOURS_INSTANCE_PATH": str(tmp_path), "PARCOURS_SECRET_KEY": "ops",
                   "PARCOURS_LOG_LEVEL": "WARNING", **env}
    config = ["-c", str(ROOT / "gunicorn.conf.py")]
    with gunicorn("wsgi:app", env=environment, cwd=ROOT,
                  args=[*config, "--access-logfile", "/dev/null", *args]) as served:
        yield served


def call(port: int, method: str, path: str, body: object = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request on a new connection (so that requests spread over the workers)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, None if body is None else json.dumps(body),
                           {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def exposures_recorded(port: int) -> float:
    status, body = call(port, "GET", "/metrics")
    assert status == 200
    return sum(sample.value for family in text_string_to_metric_families(body.decode())
               for sample in family.samples
               if sample.name == "parcours_exposures_recorded_total")


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def test_every_scrape_counts_every_workers_assignments_even_after_one_dies(
        database_url, tmp_path):
    key = prepare(database_url, tmp_path)
    auth = {"Authorization": f"Bearer {key}"}
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale, from an earlier run")
    with serve(database_url, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as (
            port, server):
        for index in range(20):
            status, _ = call(port, "POST", "/api/v1/assign", {"unit_id": f"m-{index}"}, auth)
            assert status == 200
        assert [exposures_recorded(port) for _ in range(8)] == [20.0] * 8
        first = worker_pids(server.pid)
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not any((metrics_dir / f"counter_{pid}.db").exists()
                      for pid in set(worker_pids(server.pid)) - set(first)):
            assert time.monotonic() < deadline, "gunicorn did not replace the worker"
            time.sleep(0.2)
        for index in range(20, 25):
            status, _ = call(port, "POST", "/api/v1/assign", {"unit_id": f"m-{index}"}, auth)
            assert status == 200
        assert [exposures_recorded(port) for _ in range(8)] == [25.0] * 8
    assert not (metrics_dir / "counter_1.db").exists()


def test_a_redis_rate_limit_admits_exactly_its_count_across_workers(database_url, tmp_path):
    key = prepare(database_url, tmp_path)
    auth = {"Authorization": f"Bearer {key}"}
    event = {"events": [{"unit_id": "r-1", "type": "conversion", "name": "purchase"}]}
    store = redis.Redis.from_url(REDIS_URL)
    caller = hashlib.sha256(f"Bearer {key}".encode()).hexdigest()[:32]
    try:
        with serve(database_url, tmp_path, PARCOURS_RATE_LIMIT_STORAGE=REDIS_URL,
                   PARCOURS_RATE_LIMIT_INGEST="5/minute") as (port, _server):
            statuses = [call(port, "POST", "/api/v1/events", event, auth)[0]
                        for _ in range(16)]
    finally:
        for stored in store.scan_iter(f"*{caller}*"):  # only this test's caller
            store.delete(stored)
        store.close()
    assert statuses == [202] * 5 + [429] * 11 or statuses == [200] * 5 + [429] * 11


def test_the_access_log_never_shows_a_key_query_value(database_url, tmp_path):
    log = tmp_path / "access.log"
    secret = "sk_live_9f8e7d6c5b4a3210"
    with serve(database_url, tmp_path, "--access-logfile", str(log),
               "--access-logformat", '%(r)s %(q)s %(f)s %({authorization}i)s') as (port, _):
        call(port, "GET", f"/api/v1/experiments?limit=5&key={secret}",
             headers={"Referer": f"https://shop.example/?key={secret}",
                      "Authorization": f"Bearer {secret}"})
        call(port, "GET", f"/healthz?KEY={secret}")
    time.sleep(0.2)
    text = log.read_text()
    assert "/api/v1/experiments?limit=5&key=[redacted]" in text
    assert "limit=5&key=[redacted] https://shop.example/?key=[redacted] [redacted]" in text
    assert "/healthz?KEY=[redacted]" in text
    assert secret not in text
