"""Group commit of first exposures (services.exposures): shared statements, never a lost ack."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import select

from experiments.db import get_db
from experiments.models import Experiment, Exposure
from experiments.services import exposures
from experiments.services.exposures import (
    ExposureWriteFailed,
    FirstExposure,
    GroupCommit,
    UnitWrite,
    group_commit_for,
)
from tests.conftest import auth_headers, make_test_app
from tests.factories import experiment_payload

FR = {"country": "FR"}
Writer = Callable[[Any, list[UnitWrite]], Any]


@pytest.fixture
def pg_app(postgres_database_url: str, tmp_path: Any) -> Iterator[Flask]:
    """An app on PostgreSQL (group commit is its path) with one running experiment."""
    app = make_test_app(postgres_database_url, tmp_path, CONFIG_REFRESH_S=600)
    admin = app.test_client()
    headers = auth_headers(app)
    assert admin.post("/api/v1/experiments", json=experiment_payload(layer=None),
                      headers=headers).status_code == 201
    assert admin.post("/api/v1/experiments/checkout-redesign/start",
                      headers=headers).status_code == 200
    yield app
    get_db(app).engine.dispose()


def hold_first_batch(monkeypatch: pytest.MonkeyPatch, group: GroupCommit, queued: int,
                     then: Writer | None = None) -> list[int]:
    """Keep the first statement in flight until ``queued`` requests wait behind it.

    Later batches go to ``then`` (default: the real write). Returns the batch sizes.
    """
    real = exposures.write_units
    sizes: list[int] = []

    def write(connection: Any, writes: list[UnitWrite]) -> Any:
        if not sizes:
            deadline = time.monotonic() + 10
            while group.queued < queued and time.monotonic() < deadline:
                time.sleep(0.005)
        sizes.append(len(writes))
        return (then if then is not None and len(sizes) > 1 else real)(connection, writes)

    monkeypatch.setattr(exposures, "write_units", write)
    return sizes


def post_concurrently(app: Flask, units: list[str]) -> list[Any]:
    """One thread and test client per unit, all posting /assign at once.

    A first request warms the key and configuration caches, so that the burst finds its
    sessions idle (a session already in a transaction is joined, not group-committed).
    """
    headers = auth_headers(app, "client")
    warm = app.test_client().post("/api/v1/assign", headers=headers,
                                  json={"unit_id": "warm-up", "track": False})
    assert warm.status_code == 200
    responses: list[Any] = [None] * len(units)
    barrier = threading.Barrier(len(units))

    def post(index: int) -> None:
        client = app.test_client()
        barrier.wait()
        responses[index] = client.post("/api/v1/assign", headers=headers, json={
            "unit_id": units[index], "attributes": FR, "experiments": ["checkout-redesign"]})

    threads = [threading.Thread(target=post, args=(index,)) for index in range(len(units))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def stored(app: Flask) -> dict[str, str]:
    with get_db(app).sessionmaker() as session:
        return dict(session.execute(select(Exposure.unit_id, Exposure.variant_key)).all())


def test_requests_queued_behind_a_write_share_one_statement_and_store_each_unit_once(
        pg_app, monkeypatch):
    units = [f"unit-{index % 8}" for index in range(16)]  # every unit asked for twice
    sizes = hold_first_batch(monkeypatch, group_commit_for(get_db(pg_app).engine), queued=15)
    responses = post_concurrently(pg_app, units)
    assert [response.status_code for response in responses] == [200] * 16
    assert sizes[0] == 1 and sizes[1] == 15  # the 15 that queued went in one statement
    rows = stored(pg_app)
    assert len(rows) == 8
    for unit, response in zip(units, responses, strict=True):  # every answer is what is stored
        assert response.get_json()["assignments"][0]["variant"] == rows[unit]


def test_a_failed_batch_fails_every_request_in_it_and_acknowledges_nothing(pg_app, monkeypatch):
    def failing_commit(_connection: Any, _writes: list[UnitWrite]) -> Any:
        raise psycopg.OperationalError("injected: the commit of this batch failed")

    group = group_commit_for(get_db(pg_app).engine)
    sizes = hold_first_batch(monkeypatch, group, queued=7, then=failing_commit)
    units = [f"unit-{index}" for index in range(8)]
    responses = post_concurrently(pg_app, units)
    assert sizes == [1, 7]
    answered = {unit for unit, response in zip(units, responses, strict=True)
                if response.status_code == 200}
    failed = [response for response in responses if response.status_code != 200]
    assert len(answered) == 1 and len(failed) == 7
    assert all(response.status_code == 500 and response.get_json()["error"]["code"]
               == "internal_error" for response in failed)
    assert set(stored(pg_app)) == answered  # acknowledged ⇔ stored
    monkeypatch.undo()  # the queue recovered: the failed units are stored on their retry
    assert all(response.status_code == 200 for response in post_concurrently(pg_app, units))
    assert set(stored(pg_app)) == set(units) and group.queued == 0


def test_a_request_waiting_too_long_fails_and_leaves_the_queue(pg_app, monkeypatch):
    group = GroupCommit(get_db(pg_app).engine, wait_s=0.2)
    in_flight, release = threading.Event(), threading.Event()
    real = exposures.write_units

    def stuck_first(connection: Any, writes: list[UnitWrite]) -> Any:
        in_flight.set()
        release.wait(10)
        return real(connection, writes)

    monkeypatch.setattr(exposures, "write_units", stuck_first)
    with get_db(pg_app).sessionmaker() as session:
        experiment_id = session.scalar(select(Experiment.id))

    def write(unit: str) -> UnitWrite:
        return UnitWrite(unit, (FirstExposure(experiment_id, "control", False),),
                         datetime.now(UTC), FR)

    leader = threading.Thread(target=group.write, args=(write("first"),))
    leader.start()
    assert in_flight.wait(10)
    with pytest.raises(ExposureWriteFailed, match=r"within 0\.2 s"):
        group.write(write("late"))
    assert group.queued == 0  # nobody will write it: it was taken out of the queue
    release.set()
    leader.join()
    assert group.write(write("after")) == ({experiment_id: "control"}, {})
    assert set(stored(pg_app)) == {"first", "after"}
