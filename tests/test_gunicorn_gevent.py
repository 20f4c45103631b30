"""The deployed PostgreSQL server (gunicorn.conf.py: gevent workers), end to end.

Many clients ask for the same new units at once, across two workers and many greenlets
per worker: each unit gets one stored exposure and one variant in every answer, and
event batches are accepted by the same workers meanwhile. (The login's argon2 offload
is tested in test_gunicorn_config.py.)
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from bench.support import gunicorn, gunicorn_defaults
from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import Experiment, Exposure
from experiments.services.accounts import create_api_key
from experiments.services.lifecycle import create_experiment, transition
from tests.conftest import make_test_app
from tests.factories import experiment_payload

ROOT = Path(__file__).resolve().parent.parent
UNITS = [f"racer-{index}" for index in range(150)]
CLIENTS = 12
pytestmark = pytest.mark.slow


def request(port: int, method: str, path: str, body: object, key: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, json.dumps(body),
                           {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_gevent_workers_store_one_exposure_per_unit_under_racing_first_requests(
        postgres_database_url, tmp_path):
    app = make_test_app(postgres_database_url, tmp_path)
    with get_db(app).session() as session:
        key = create_api_key(session, name="racers", role="client", principal=SYSTEM)[1]
        for name in ("race-a", "race-b"):
            create_experiment(session, experiment_payload(key=name, targeting=[], overrides={},
                                                          layer=None), SYSTEM)
            transition(session, name, "start", SYSTEM)
    get_db(app).engine.dispose()
    env = {"PARCOURS_DATABASE_URL": postgres_database_url, "PARCOURS_WORKERS": "2",
           "PARCOURS_INSTANCE_PATH": str(tmp_path), "PARCOURS_SECRET_KEY": "race",
           "PARCOURS_LOG_LEVEL": "WARNING"}
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def client(seed: int) -> None:
        units = random.Random(seed).sample(UNITS, len(UNITS))
        barrier.wait()
        for unit in units:
            status, body = request(port, "POST", "/api/v1/assign", {"unit_id": unit}, key)
            with lock:
                statuses.append(status)
                for assignment in body.get("assignments", []):
                    seen[(assignment["experiment"], unit)].add(assignment["variant"])
        event = {"events": [{"unit_id": units[0], "type": "conversion", "name": "purchase"}]}
        status, body = request(port, "POST", "/api/v1/events", event, key)
        with lock:
            statuses.append(status if body.get("accepted") == 1 else -status)

    assert gunicorn_defaults(postgres_database_url)[0] == "gevent"  # as deployed
    args = ["-c", str(ROOT / "gunicorn.conf.py"), "--access-logfile", "/dev/null"]
    with gunicorn("wsgi:app", env=env, cwd=ROOT, args=args) as (port, _server):
        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert statuses == [200] * (CLIENTS * (len(UNITS) + 1))
    assert len(seen) == 2 * len(UNITS) and all(len(variants) == 1 for variants in seen.values())
    engine = create_engine(postgres_database_url)
    with engine.connect() as connection:
        stored = connection.execute(
            select(Experiment.key, Exposure.unit_id, Exposure.variant_key)
            .join(Experiment, Experiment.id == Exposure.experiment_id)).all()
    engine.dispose()
    assert len(stored) == 2 * len(UNITS)  # one row per (experiment, unit), no duplicates
    assert {(name, unit): {variant} for name, unit, variant in stored} == seen
