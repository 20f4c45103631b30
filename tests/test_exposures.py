"""Group commit of first exposures (services.exposures): shared statements, never a lost ack."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import insert, select, text

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
    # The fast path handed each failed request to Flask, which tried it once more, and
    # once again on a new connection (the driver error reads as a lost connection).
    assert sizes[:2] == [1, 7] and sum(sizes[2:]) == 14
    answered = {unit for unit, response in zip(units, responses, strict=True)
                if response.status_code == 200}
    failed = [response for response in responses if response.status_code != 200]
    assert len(answered) == 1 and len(failed) == 7
    assert all(response.status_code == 503 and response.get_json()["error"]["code"]
               == "unavailable" and response.headers["Retry-After"] for response in failed)
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


def experiment_id_of(app: Flask) -> int:
    with get_db(app).sessionmaker() as session:
        experiment_id = session.scalar(select(Experiment.id))
    assert experiment_id is not None
    return experiment_id


def first_exposure(experiment_id: int, unit: str) -> UnitWrite:
    return UnitWrite(unit, (FirstExposure(experiment_id, "control", False),),
                     datetime.now(UTC), FR)


def writer_backend_pid(group: GroupCommit) -> int:
    """The server process behind the group commit's own connection."""
    connection = group._connection()
    rows = connection.run("SELECT pg_backend_pid()::integer", [])
    return int(rows[0][0])


def test_batches_reuse_one_connection_with_prepared_statements(pg_app):
    group = GroupCommit(get_db(pg_app).engine)
    experiment_id = experiment_id_of(pg_app)
    pid = writer_backend_pid(group)
    for unit in ("a", "b", "a"):
        group.write(first_exposure(experiment_id, unit))
    assert writer_backend_pid(group) == pid  # no pool checkout per batch
    statements = group._connection().run("SELECT statement::text FROM pg_prepared_statements", [])
    inserts = [text for (text,) in statements if text == exposures._insert_sql(1)]
    assert len(inserts) == 1  # one-unit batches: one statement, prepared once
    assert group.write(first_exposure(experiment_id, "a")) == ({}, {experiment_id: "control"})


def test_a_connection_cut_under_the_writer_is_replaced_and_nothing_is_lost(pg_app):
    group = GroupCommit(get_db(pg_app).engine)
    experiment_id = experiment_id_of(pg_app)
    group.write(first_exposure(experiment_id, "before"))
    old_pid = writer_backend_pid(group)
    with psycopg.connect(postgres_url(pg_app), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,)).fetchone() == (True,)
    # The next batch finds its connection broken, reconnects and sends its statement again.
    assert group.write(first_exposure(experiment_id, "after")) == ({experiment_id: "control"}, {})
    assert writer_backend_pid(group) != old_pid
    assert set(stored(pg_app)) == {"before", "after"}


def test_a_forked_child_writes_on_its_own_connection_and_leaves_the_parents_alone(pg_app):
    group = group_commit_for(get_db(pg_app).engine)
    experiment_id = experiment_id_of(pg_app)
    parent_pid = writer_backend_pid(group)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            outcome = group.write(first_exposure(experiment_id, "from-child"))
            os.write(write, json.dumps([outcome[0].get(experiment_id),
                                        writer_backend_pid(group)]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_variant, child_pid = json.loads(pipe.read())
    os.waitpid(child, 0)
    assert child_variant == "control" and child_pid != parent_pid
    # The parent's connection survived the child's exit (nothing closed it from there).
    assert writer_backend_pid(group) == parent_pid
    group.write(first_exposure(experiment_id, "from-parent"))
    assert set(stored(pg_app)) == {"from-child", "from-parent"}


def postgres_url(app: Flask) -> str:
    """The app's database as a libpq URL (for an admin connection beside the app's)."""
    url = get_db(app).engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def test_the_writer_plans_index_lookups_even_when_it_prepares_on_a_small_table(pg_app):
    """A plan chosen while the table is tiny (a hash of a full scan) would stay in use as
    the table grows; the writer's connection only allows lookups by key."""
    group = GroupCommit(get_db(pg_app).engine)
    experiment_id = experiment_id_of(pg_app)
    with get_db(pg_app).session() as session:  # analysed empty, then a few hundred rows
        session.execute(text("ANALYZE exposures"))
        session.execute(insert(Exposure), [
            {"experiment_id": experiment_id, "unit_id": f"small-{unit}", "variant_key": "control",
             "attributes": FR, "is_override": False} for unit in range(300)])
    for unit in range(50):  # well past the point where PostgreSQL settles on a generic plan
        group.write(first_exposure(experiment_id, f"new-{unit}"))
    write = first_exposure(experiment_id, "explained")
    values = ", ".join(f"'{value}'" for value in (
        experiment_id, write.unit_id, "control", "f", write.exposed_at.isoformat(), "{}"))
    values += ", NULL"  # no raw client time
    (name,) = group._connection()._statements.values()
    plan = "\n".join(line for (line,) in group._connection().run(
        f"EXPLAIN (COSTS OFF) EXECUTE {name.decode()}({values})", []))
    assert "Index" in plan and "Seq Scan" not in plan and "Hash" not in plan, plan


def test_reads_on_pooled_connections_are_never_prepared_on_the_server(pg_app):
    """Planned each time: a plan kept from when the table was small would stay a scan."""
    experiment_id = experiment_id_of(pg_app)
    with psycopg.connect(postgres_url(pg_app), autocommit=True) as connection:
        for _ in range(10):  # psycopg would prepare from the 5th run on
            assert exposures._execute(connection, exposures._read_sql(1),
                                      ("nobody", experiment_id)) == []
        prepared = connection.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert prepared == (0,)
