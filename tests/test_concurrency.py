"""Concurrent writers on one experiment never interleave into an invalid state (PostgreSQL)."""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import func, select

from experiments.db import get_db
from experiments.models import AuditEntry, Experiment
from tests.conftest import auth_headers, make_test_app
from tests.factories import experiment_payload


def run_concurrently(app, requests):
    """Fire every (method, path, body) at once from its own thread; return the statuses."""
    headers = auth_headers(app)
    barrier = threading.Barrier(len(requests))
    statuses: list[int] = [0] * len(requests)

    def worker(index: int, method: str, path: str, body: dict | None) -> None:
        client = app.test_client()
        barrier.wait()
        statuses[index] = getattr(client, method)(path, json=body, headers=headers).status_code

    threads = [threading.Thread(target=worker, args=(i, *request))
               for i, request in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_racing_transitions_let_exactly_one_win(postgres_database_url, tmp_path):
    app = make_test_app(postgres_database_url, tmp_path)
    client = app.test_client()
    client.post("/api/v1/experiments", json=experiment_payload(), headers=auth_headers(app))
    path = "/api/v1/experiments/checkout-redesign/start"
    statuses = run_concurrently(app, [("post", path, None)] * 8)
    assert Counter(statuses) == Counter({200: 1, 409: 7})
    with get_db(app).session() as session:
        experiment = session.scalar(select(Experiment))
        starts = session.scalar(select(func.count()).select_from(AuditEntry)
                                .where(AuditEntry.action == "experiment.start"))
    assert experiment.status == "running" and starts == 1


def test_racing_patches_and_pause_never_lose_an_update(postgres_database_url, tmp_path):
    app = make_test_app(postgres_database_url, tmp_path)
    headers = auth_headers(app)
    client = app.test_client()
    client.post("/api/v1/experiments", json=experiment_payload(), headers=headers)
    client.post("/api/v1/experiments/checkout-redesign/start", headers=headers)
    path = "/api/v1/experiments/checkout-redesign"
    requests = [("patch", path, {"traffic": round(0.1 * (i + 1), 1)}) for i in range(6)]
    requests.append(("post", path + "/pause", None))
    statuses = run_concurrently(app, requests)
    assert set(statuses) <= {200, 409} and 200 in statuses
    winners = [requests[i] for i, status in enumerate(statuses) if status == 200]
    final = client.get(path, headers=headers).get_json()
    audit = client.get("/api/v1/audit?experiment=checkout-redesign&limit=500",
                       headers=headers).get_json()["items"]
    # Every accepted write is in the audit log exactly once and versions advanced by one each.
    assert len(audit) == 2 + len(winners)
    assert final["version"] == 2 + len(winners)
    accepted_patches = [body["traffic"] for method, _, body in winners if method == "patch"]
    if accepted_patches:
        last_patch = next(e for e in audit if e["action"] == "experiment.update")
        assert final["traffic"] == last_patch["after"]["traffic"]
    assert final["status"] == ("paused" if ("post", path + "/pause", None) in winners
                               else "running")
