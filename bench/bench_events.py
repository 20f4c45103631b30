"""Ingestion throughput (SPEC §9): POST /api/v1/events under gunicorn vs raw ``executemany``.

For each database (SQLite; PostgreSQL when ``PARCOURS_BENCH_POSTGRES_URL`` or
``PARCOURS_TEST_POSTGRES_URL`` is set) the same 500-event batches are written
twice into a fresh, migrated database: once by the bare driver (``executemany`` and a
commit per batch — the floor any service pays) and once through the API served by
gunicorn on loopback, from a few keep-alive client threads. Target: ratio ≥ 0.5.
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from bench.support import describe_shape, gunicorn_defaults, scratch_postgres_database
from bench.support import gunicorn as serve

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500
BATCHES = int(os.environ.get("PARCOURS_BENCH_EVENT_BATCHES", 60))
CLIENT_THREADS = 8
COLUMNS = ("event_id", "unit_id", "type", "name", "step", "friction_kind", "value",
           "occurred_at", "received_at", "properties")
TARGET = 0.5
ROUNDS = 3


def make_batches(count: int, prefix: str) -> list[list[dict[str, Any]]]:
    """Realistic mixed batches (steps, friction, conversions, NPS) with unique client ids."""
    start = datetime(2026, 11, 20, tzinfo=UTC)
    kinds = [
        {"type": "step", "step": "cart"},
        {"type": "step", "step": "payment"},
        {"type": "friction", "friction_kind": "error", "step": "payment"},
        {"type": "conversion", "name": "purchase", "value": 59.9},
        {"type": "nps", "value": 9},
    ]
    batches = []
    for batch in range(count):
        events = []
        for index in range(BATCH):
            number = batch * BATCH + index
            event = {"event_id": f"{prefix}-{number}", "unit_id": f"visitor-{number % 9973}",
                     "occurred_at": (start + timedelta(seconds=number)).isoformat(),
                     "properties": {"device": "mobile" if number % 3 else "desktop"},
                     **kinds[number % len(kinds)]}
            events.append(event)
        batches.append(events)
    return batches


def raw_rows(batch: list[dict[str, Any]], *, sqlite_dates: bool) -> list[tuple[Any, ...]]:
    """The rows the service would store, as driver parameters (names/steps defaulted)."""
    received = datetime.now(UTC)
    rows = []
    for event in batch:
        occurred = datetime.fromisoformat(event["occurred_at"])
        name = event.get("name") or {"nps": "nps", "step": event.get("step"),
                                     "friction": event.get("friction_kind")}[event["type"]]
        dates = (occurred, received)
        if sqlite_dates:
            dates = tuple(d.strftime("%Y-%m-%d %H:%M:%S.%f") for d in dates)
        rows.append((event["event_id"], event["unit_id"], event["type"], name, event.get("step"),
                     event.get("friction_kind"), event.get("value"), *dates,
                     json.dumps(event["properties"])))
    return rows


def raw_executemany(url: str, batches: list[list[dict[str, Any]]]) -> float:
    """Rows/s of the bare driver inserting the same rows, one commit per batch."""
    is_sqlite = url.startswith("sqlite")
    marks = ", ".join(["?" if is_sqlite else "%s"] * len(COLUMNS))
    sql = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({marks})"
    prepared = [raw_rows(batch, sqlite_dates=is_sqlite) for batch in batches]
    with _driver_connection(url) as connection:
        started = time.perf_counter()
        for rows in prepared:
            cursor = connection.cursor()
            cursor.executemany(sql, rows)
            connection.commit()
        elapsed = time.perf_counter() - started
    return sum(len(rows) for rows in prepared) / elapsed


@contextmanager
def _driver_connection(url: str) -> Iterator[Any]:
    if url.startswith("sqlite"):
        connection = sqlite3.connect(make_url(url).database)
        # The same settings the app's engine uses (experiments.db._configure_sqlite).
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            connection.execute(f"PRAGMA {pragma}")
    else:
        import psycopg

        connection = psycopg.connect(make_url(url).set(drivername="postgresql")
                                     .render_as_string(hide_password=False))
    try:
        yield connection
    finally:
        connection.close()


def api_throughput(base_url: str, key: str, batches: list[list[dict[str, Any]]]) -> float:
    """Rows/s through POST /api/v1/events from a few keep-alive client threads.

    Plain ``http.client`` connections, as in bench_assign: the client shares the machine's
    cores with the server, and ``requests`` spent ~1 ms of CPU per batch on its own.
    """
    bodies = [json.dumps({"events": batch}).encode() for batch in batches]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    address = urlsplit(base_url)
    failures: list[str] = []
    lock = threading.Lock()
    queue = list(range(len(bodies)))

    def worker() -> None:
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port,
                                                timeout=60)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    index = queue.pop()
                connection.request("POST", "/api/v1/events", bodies[index], headers)
                response = connection.getresponse()
                data = response.read()
                if response.status != 200 or json.loads(data)["accepted"] != BATCH:
                    failures.append(f"{response.status} {data[:200]!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(CLIENT_THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"ingestion failed: {failures[:3]}")
    return len(bodies) * BATCH / elapsed


@contextmanager
def gunicorn(database_url: str, instance: Path) -> Iterator[str]:
    """``gunicorn wsgi:app`` with the repo's gunicorn.conf.py on a free loopback port."""
    env = {"PARCOURS_DATABASE_URL": database_url, "PARCOURS_INSTANCE_PATH": str(instance),
           "PARCOURS_SCHEDULER": "off",
           "PARCOURS_LOG_LEVEL": "WARNING"}
    args = ["-c", "gunicorn.conf.py", "--access-logfile", "/dev/null"]
    with serve("wsgi:app", env=env, cwd=ROOT, args=args) as (port, _):
        yield f"http://127.0.0.1:{port}"


def _prepare(url: str) -> str:
    """Migrate the database and return a client API key."""
    from experiments.auth import SYSTEM
    from experiments.db import Database
    from experiments.migrate import upgrade
    from experiments.services.accounts import create_api_key

    upgrade(url)
    database = Database(url)
    with database.session() as session:
        key = create_api_key(session, name="bench", role="client", principal=SYSTEM)[1]
    database.engine.dispose()
    return key


def run_backend(name: str, url: str, instance: Path) -> float:
    """Measure both paths on one database (best of ROUNDS each) and print the ratio."""
    key = _prepare(url)
    raw = api = 0.0
    with gunicorn(url, instance) as base_url:
        worker_class, workers, threads = gunicorn_defaults(url)
        api_throughput(base_url, key, make_batches(2 * workers, "warm-up"))
        # Interleaved rounds, best of each: a load spike on a shared machine hits both.
        for round_ in range(ROUNDS):
            raw = max(raw, raw_executemany(url, make_batches(BATCHES, f"raw{round_}")))
            api = max(api, api_throughput(base_url, key, make_batches(BATCHES, f"api{round_}")))
    ratio = api / raw
    verdict = "ok" if ratio >= TARGET else f"below target {TARGET}"
    print(f"events {name:<10} (gunicorn {describe_shape(worker_class, workers, threads)}) "
          f"raw executemany {raw:>9,.0f} rows/s   "
          f"POST /api/v1/events {api:>9,.0f} rows/s   ratio {ratio:.2f}x ({verdict})",
          flush=True)
    return ratio


def _each_backend(tmp: Path) -> Iterator[tuple[str, Callable[[], Any]]]:
    yield "sqlite", lambda: nullcontext(f"sqlite:///{tmp / 'bench.db'}")
    postgres = (os.environ.get("PARCOURS_BENCH_POSTGRES_URL")
                or os.environ.get("PARCOURS_TEST_POSTGRES_URL"))
    if postgres:
        yield "postgresql", lambda: scratch_postgres_database(postgres)
    else:
        print("events postgresql skipped: set PARCOURS_BENCH_POSTGRES_URL", flush=True)


def main() -> None:
    """Print rows/s of both paths and their ratio per backend."""
    with tempfile.TemporaryDirectory(prefix="parcours-bench-") as tmp:
        for name, database in _each_backend(Path(tmp)):
            with database() as url:
                run_backend(name, url, Path(tmp))


if __name__ == "__main__":
    main()
