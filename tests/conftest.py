"""Shared fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL runs when ``PARCOURS_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it):
each pytest worker gets its own database, migrated once, emptied per test.
SQLite tests copy a database migrated once per session.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.orm import Session
from werkzeug.routing import Rule
from werkzeug.serving import make_server

from bench.support import scratch_postgres_database
from experiments.app import create_app
from experiments.auth import SYSTEM
from experiments.db import Base, get_db
from experiments.migrate import upgrade
from experiments.services import exposures, lifecycle
from experiments.services.accounts import create_api_key
from tests.factories import experiment_payload

POSTGRES_URL = os.environ.get("PARCOURS_TEST_POSTGRES_URL")
requires_postgres = pytest.mark.skipif(
    not POSTGRES_URL, reason="set PARCOURS_TEST_POSTGRES_URL to run PostgreSQL tests")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=requires_postgres)]


# An app per test: werkzeug compiles two URL builders per route (Python's compile() on a
# generated AST), 85 % of create_app's 75 ms. A builder is a pure function of the rule's
# text, defaults and converters, bound to its rule when used: the same rule in the next
# test's app reuses the one compiled before (13 ms an app). url_for is unchanged.
_BUILDERS: dict[tuple[Any, ...], Any] = {}
_compile_builder = Rule._compile_builder


def _reused_builder(self: Rule, append_unknown: bool = True) -> Any:
    key = (self.rule, self.subdomain, self.host, self.map.host_matching, self.merge_slashes,
           tuple(self._trace), repr(sorted((self.defaults or {}).items())),
           tuple((name, type(converter)) for name, converter in self._converters.items()),
           append_unknown)
    builder = _BUILDERS.get(key)
    if builder is None:
        builder = _BUILDERS[key] = _compile_builder(self, append_unknown)
    return builder


Rule._compile_builder = _reused_builder  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def deterministic_salts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Experiments get salts salt-0, salt-1… so every split is reproducible, run after run."""
    counter = itertools.count()
    monkeypatch.setattr(lifecycle, "new_salt", lambda: f"salt-{next(counter)}")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test works on a copy."""
    path = tmp_path_factory.mktemp("template") / "parcours.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private, migrated PostgreSQL database for this pytest process."""
    assert POSTGRES_URL, "PARCOURS_TEST_POSTGRES_URL is not set"
    with scratch_postgres_database(POSTGRES_URL, "parcours_test") as url:
        upgrade(url)
        # Commits don't wait for their WAL flush (~0.5-1 ms each, thousands per test when
        # traffic is simulated): only a crash of the server could lose them, and no test
        # crashes it. Durability to other sessions, locks and isolation are unchanged.
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{make_url(url).database}" '
                                       "SET synchronous_commit TO off")
        engine.dispose()
        yield url


def _empty_postgres(url: str) -> None:
    """Delete every row and restart every id, as ``TRUNCATE … RESTART IDENTITY`` would:
    ~15 ms for the few rows a test leaves, where TRUNCATE's new files for 24 tables and
    their indexes took ~150 ms (over 1,300 PostgreSQL tests)."""
    engine = create_engine(url)
    deletes = "".join(f'DELETE FROM "{table.name}";'
                      for table in reversed(Base.metadata.sorted_tables))
    with engine.begin() as connection:
        connection.exec_driver_sql(
            deletes + "SELECT setval((quote_ident(schemaname) || '.' || "
            "quote_ident(sequencename))::regclass, start_value, false) FROM pg_sequences "
            "WHERE schemaname = current_schema() AND last_value IS NOT NULL")
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A clean, migrated database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "parcours.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def postgres_database_url(request: pytest.FixtureRequest) -> str:
    """A clean PostgreSQL database, for tests that need real concurrency."""
    if not POSTGRES_URL:
        pytest.skip("needs PARCOURS_TEST_POSTGRES_URL")
    url = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


def make_test_app(database_url: str, instance_path: Path, **overrides: Any) -> Flask:
    """An app on the given database with the scheduler off (its pool closed after the
    test, see close_test_engines)."""
    config = {"DATABASE_URL": database_url, "SCHEDULER": False, "TESTING": True,
              "SECRET_KEY": "test-secret", "INSTANCE_PATH": str(instance_path),
              "WEBHOOK_ALLOW_PRIVATE": True, **overrides}
    return create_app(config)


# Every engine that connected during the test, whoever created it (an app, a fixture, a
# helper calling create_engine): close_test_engines closes their pools when it ends.
_CONNECTED: set[Engine] = set()
_CONNECTED_LOCK = threading.Lock()
IN_MEMORY = (None, "", ":memory:")  # a pool that is the database: closing it loses the data


@event.listens_for(Engine, "engine_connect")
def _remember_engine(connection: Connection) -> None:
    with _CONNECTED_LOCK:
        _CONNECTED.add(connection.engine)


@pytest.fixture(autouse=True)
def close_test_engines() -> Iterator[None]:
    """Close the connection pools of the engines the test used, whether or not it did: an
    xdist worker otherwise keeps every test's idle PostgreSQL connections, and late in
    the suite the two workers held 83 of the server's 100 (one CI run was refused
    connections: "too many clients"). An engine used again later reconnects."""
    yield
    with _CONNECTED_LOCK:
        engines = list(_CONNECTED)
        _CONNECTED.clear()
    for engine in engines:
        if engine.url.database not in IN_MEMORY:
            engine.dispose()
            _close_group_commit(engine)


def _close_group_commit(engine: Engine) -> None:
    """The exposures' group commit of an engine writes on a connection of its own, taken
    out of the pool for good (engine.dispose leaves it open): one more idle PostgreSQL
    connection per test that assigned, until the app was garbage-collected."""
    group = exposures._group_commits.pop(engine, None)
    if group is not None and group._prepared is not None:
        group._prepared.close()


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    app = make_test_app(database_url, tmp_path)
    yield app
    get_db(app).engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


@pytest.fixture
def db(app: Flask) -> Iterator[Session]:
    """A session on the app's database, for arranging and asserting."""
    with get_db(app).sessionmaker() as session:
        yield session


def new_api_key(app: Flask, role: str) -> str:
    """A fresh raw API key of ``role`` on the app's database."""
    with get_db(app).session() as session:
        return create_api_key(session, name=f"test {role}", role=role, principal=SYSTEM)[1]


def auth_headers(app: Flask, role: str = "admin") -> dict[str, str]:
    """Bearer headers for a fresh key, for tests that build their own app."""
    return {"Authorization": f"Bearer {new_api_key(app, role)}"}


@pytest.fixture
def admin_key(app: Flask) -> str:
    return new_api_key(app, "admin")


@pytest.fixture
def client_key(app: Flask) -> str:
    return new_api_key(app, "client")


@pytest.fixture
def admin_headers(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


@pytest.fixture
def client_headers(client_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client_key}"}


class LiveServer:
    """The app served by werkzeug on a free loopback port, in a thread."""

    def __init__(self, app: Flask) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def live_server(app: Flask) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.stop()


@pytest.fixture
def started(client: FlaskClient, admin_headers: dict[str, str]) -> dict[str, Any]:
    """The factory experiment (no layer, targeting or overrides), running."""
    payload = experiment_payload(layer=None, targeting=[], overrides={})
    assert client.post("/api/v1/experiments", json=payload,
                       headers=admin_headers).status_code == 201
    assert client.post("/api/v1/experiments/checkout-redesign/start",
                       headers=admin_headers).status_code == 200
    return payload
