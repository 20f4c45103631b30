"""Database interruptions (SPEC §2): a lost connection is retried once where repeating is
safe (events dedupe by ``event_id``, exposures ``ON CONFLICT``); an unreachable database
is 503 ``unavailable`` with ``Retry-After``, never a 500, and nothing acknowledged is lost.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from bench.support import gunicorn
from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import Event, Experiment, Exposure
from experiments.services.accounts import create_api_key
from experiments.services.lifecycle import create_experiment, transition
from tests.conftest import BACKENDS, make_test_app
from tests.factories import experiment_payload, post_json

ROOT = Path(__file__).resolve().parent.parent
TERMINATE = text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")


def running_experiment(url: str, tmp_path: Path, experiment: str = "outage-exp") -> str:
    """A client key and one running experiment (every unit included), on a scratch app."""
    app = make_test_app(url, tmp_path)
    with get_db(app).session() as session:
        key = create_api_key(session, name="outage", role="client", principal=SYSTEM)[1]
        create_experiment(session, experiment_payload(key=experiment, targeting=[],
                                                      overrides={}, layer=None), SYSTEM)
        transition(session, experiment, "start", SYSTEM)
    get_db(app).engine.dispose()
    return key


def terminate_backends(url: str) -> int:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        count = int(connection.scalar(TERMINATE))
    engine.dispose()
    return count


def event(event_id: str, unit: str) -> dict:
    return {"event_id": event_id, "unit_id": unit, "type": "conversion", "name": "purchase"}


def test_the_first_requests_after_terminated_backends_succeed(postgres_database_url, tmp_path):
    key = running_experiment(postgres_database_url, tmp_path)
    auth = {"Authorization": f"Bearer {key}"}
    app = make_test_app(postgres_database_url, tmp_path, CONFIG_REFRESH_S=0)
    client = app.test_client()
    assert client.post("/api/v1/assign", json={"unit_id": "warm"}, headers=auth).status_code == 200
    assert client.post("/api/v1/events", json={"events": [event("e-0", "warm")]},
                       headers=auth).status_code == 200
    app.extensions["parcours.api_keys"].clear()  # the next requests read the key again
    assert terminate_backends(postgres_database_url) >= 1
    response = client.post("/api/v1/events", json={"events": [event("e-1", "warm")]},
                           headers=auth)
    assert (response.status_code, response.get_json()["accepted"]) == (200, 1)
    assert terminate_backends(postgres_database_url) >= 1
    response = client.post("/api/v1/assign", json={"unit_id": "after"}, headers=auth)
    assert response.status_code == 200
    assert [a["experiment"] for a in response.get_json()["assignments"]] == ["outage-exp"]
    with get_db(app).session() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 2
        assert session.scalar(select(func.count()).select_from(Exposure)) == 2
    get_db(app).engine.dispose()


def test_a_connection_lost_under_the_assignment_fast_path_is_answered_by_flask(
        postgres_database_url, tmp_path, monkeypatch):
    """The backend dies right before the fast path's raw insert of the exposure (its
    session already in a transaction): closing that session cannot roll back on the dead
    socket, so it is invalidated, and Flask's route stores the exposure and answers 200 —
    under load this was gunicorn's HTML 500."""
    from experiments.services import exposures

    key = running_experiment(postgres_database_url, tmp_path)
    app = make_test_app(postgres_database_url, tmp_path, CONFIG_REFRESH_S=0)
    real, cut = exposures._execute, []

    def terminated_first(connection, sql, params):
        if not cut:
            cut.append(connection.info.backend_pid)
            engine = create_engine(postgres_database_url, isolation_level="AUTOCOMMIT")
            with engine.connect() as other:
                assert other.scalar(text(f"SELECT pg_terminate_backend({cut[0]})"))
            engine.dispose()
        return real(connection, sql, params)

    monkeypatch.setattr(exposures, "_execute", terminated_first)
    response = app.test_client().post("/api/v1/assign", json={"unit_id": "cut"},
                                      headers={"Authorization": f"Bearer {key}"})
    assert cut and response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["assignments"][0]["reason"] == "assigned"
    with get_db(app).session() as session:
        assert session.scalar(select(func.count()).select_from(Exposure)
                              .where(Exposure.unit_id == "cut")) == 1
    get_db(app).engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreachable_database_is_503_unavailable_with_retry_after(backend, tmp_path):
    url = ("postgresql+psycopg://nobody@127.0.0.1:1/none" if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'missing-dir' / 'parcours.db'}")
    app = make_test_app(url, tmp_path)
    client = app.test_client()
    auth = {"Authorization": "Bearer pk_client_0123456789abcdef"}
    for path, body in (("/api/v1/assign", {"unit_id": "u-1"}),
                       ("/api/v1/events", {"events": [event("e-1", "u-1")]}),
                       ("/api/v1/experiments", None)):
        response = (client.get(path, headers=auth) if body is None
                    else client.post(path, json=body, headers=auth))
        assert response.status_code == 503, (path, response.get_data(as_text=True))
        assert response.get_json()["error"]["code"] == "unavailable"
        assert response.headers["Retry-After"] == "5"




@pytest.mark.slow
def test_backends_terminated_under_load_give_no_500_and_lose_no_acknowledged_write(
        postgres_database_url, tmp_path):
    key = running_experiment(postgres_database_url, tmp_path)
    env = {"PARCOURS_DATABASE_URL": postgres_database_url, "PARCOURS_WORKERS": "2",
           "PARCOURS_INSTANCE_PATH": str(tmp_path), "PARCOURS_SECRET_KEY": "outage",
           "PARCOURS_LOG_LEVEL": "WARNING", "PARCOURS_CONFIG_REFRESH_S": "0.2"}
    statuses: list[int] = []
    acknowledged_events: set[str] = set()
    assigned: dict[str, str] = {}
    broken: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def answer(path: str, body: object) -> tuple[int, dict]:
        """The status and JSON answer; an answer that is not JSON is recorded (with its
        status) as a failure of the test, not lost with this thread."""
        try:
            return post_json(port, path, body, key, timeout=60)
        except Exception as exc:  # a body that is not JSON, a dropped connection
            with lock:
                broken.append(f"{path}: {exc!r}")
            return 0, {}

    def load(worker: int) -> None:
        for index in range(60):
            unit = f"load-{worker}-{index}"
            status, body = answer("/api/v1/assign", {"unit_id": unit})
            with lock:
                statuses.append(status)
                if status == 200:
                    assigned[unit] = body["assignments"][0]["variant"]
            status, body = answer("/api/v1/events", {"events": [event(unit, unit)]})
            with lock:
                statuses.append(status)
                if status == 200 and body["accepted"] + body["duplicates"] == 1:
                    acknowledged_events.add(unit)

    def terminator() -> None:
        while not done.wait(0.25):
            terminate_backends(postgres_database_url)

    args = ["-c", str(ROOT / "gunicorn.conf.py"), "--access-logfile", "/dev/null"]
    with gunicorn("wsgi:app", env=env, cwd=ROOT, args=args) as (port, _server):
        killer = threading.Thread(target=terminator)
        killer.start()
        clients = [threading.Thread(target=load, args=(n,)) for n in range(6)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=300)
        done.set()
        killer.join()
        time.sleep(0.5)
    assert not broken, broken
    assert 500 not in statuses
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= len(statuses) * 0.9  # one retry rides out most cuts
    engine = create_engine(postgres_database_url)
    with engine.connect() as connection:
        stored_events = set(connection.scalars(select(Event.event_id)))
        stored_exposures = dict(connection.execute(
            select(Exposure.unit_id, Exposure.variant_key)
            .join(Experiment, Experiment.id == Exposure.experiment_id)).all())
    engine.dispose()
    assert acknowledged_events <= stored_events
    assert {unit: stored_exposures.get(unit) for unit in assigned} == assigned


def test_a_retry_after_a_landed_commit_stores_events_without_ids_once(client, client_headers, db,
                                                                       monkeypatch):
    """The connection drops after the commit landed: the route runs again, and events the
    client sent without ``event_id`` are recognised as the same rows, not stored twice."""
    from sqlalchemy.exc import OperationalError

    from experiments.api import events as events_api

    real, calls = events_api.ingest_events, []

    def commit_then_lose_the_connection(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(kwargs["batch_id"])
        if len(calls) == 1:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"),
                                   connection_invalidated=True)
        return result

    monkeypatch.setattr(events_api, "ingest_events", commit_then_lose_the_connection)
    batch = {"events": [{"unit_id": "u1", "type": "step", "step": "cart"},
                        {"unit_id": "u1", "type": "conversion", "name": "purchase"}]}
    response = client.post("/api/v1/events", json=batch, headers=client_headers)
    assert response.status_code == 200
    assert response.get_json() == {"accepted": 0, "duplicates": 2, "rejected": []}
    assert len(calls) == 2 and calls[0] == calls[1]
    assert db.scalar(select(func.count()).select_from(Event)) == 2
    again = client.post("/api/v1/events", json=batch, headers=client_headers)
    assert again.get_json()["accepted"] == 2  # a new request is a new delivery
