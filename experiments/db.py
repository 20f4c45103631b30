"""Engine, sessions and the declarative base shared by every model."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from flask import Flask, current_app, g
from sqlalchemy import JSON, BigInteger, DateTime, Engine, Integer, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

EXTENSION_KEY = "parcours.db"
CONNECT_TIMEOUT_S = 5

# Portable column types: JSONB and BIGINT on PostgreSQL, JSON and INTEGER
# (so that AUTOINCREMENT rowids work) on SQLite.
JsonType = JSON().with_variant(JSONB(), "postgresql")
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use aware UTC datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def dialect_insert(dialect_name: str) -> Any:
    """The dialect's INSERT construct (both have ON CONFLICT … and RETURNING)."""
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every Parcours table."""

    type_annotation_map = {dict[str, Any]: JsonType, list[Any]: JsonType, datetime: UtcDateTime}


def make_engine(url: str, *, statement_timeout_ms: int | None = None) -> Engine:
    """Create an engine tuned per backend (WAL + busy timeout on SQLite)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    # No pre-ping: it costs a round trip on every checkout of the hot path. A dropped
    # connection is detected on use and the pool is invalidated, and recycling caps age.
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800,
                           connect_args=postgres_connect_args(url, statement_timeout_ms))
    sessions_in_utc(engine)
    return engine


def sessions_in_utc(engine: Engine) -> None:
    """Every new PostgreSQL connection of ``engine`` sets its session's time zone to UTC.

    Parcours's times are UTC, and a server set to a zone east of UTC (initdb writes the
    machine's) or a client's ``PGTZ`` returned them in that zone, where the client's own
    time of a clamped year-9999 exposure (kept as sent) is past Python's year 9999: every
    read of its row failed. A ``SET`` once connected wins over both (a ``-c timezone``
    startup option loses to ``PGTZ``); committed, so that the pool's rollback keeps it.
    """
    on_connect(engine, "SET TIME ZONE 'UTC'", commit=True)


def on_connect(engine: Engine, *statements: str, commit: bool = False) -> None:
    """Run ``statements`` on every new DB-API connection of ``engine``; ``commit`` where
    the driver opened a transaction for them (a session ``SET`` rolled back is undone)."""

    def configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for statement in statements:
            cursor.execute(statement)
        cursor.close()
        if commit:
            dbapi_connection.commit()

    event.listen(engine, "connect", configure)


def postgres_connect_args(url: str, statement_timeout_ms: int | None = None) -> dict[str, Any]:
    """Parcours's connection settings merged into the URL's own (SPEC §1).

    SQLAlchemy lets ``connect_args`` replace a URL query parameter of the same name, so
    an operator's ``?options=-csearch_path%3Dapp`` would vanish behind the statement
    timeout: both go into one ``options``. ``connect_timeout`` bounds how long a request
    waits for an unreachable server before it is answered 503 (kept if the URL sets it).
    """
    query = make_url(url).query
    args: dict[str, Any] = {}
    options = [_last(query.get("options"))] if query.get("options") else []
    if statement_timeout_ms:
        options.append(f"-c statement_timeout={int(statement_timeout_ms)}")
    if options:
        args["options"] = " ".join(options)
    if "connect_timeout" not in query:
        args["connect_timeout"] = CONNECT_TIMEOUT_S
    return args


def _last(value: str | tuple[str, ...] | None) -> str:
    """A query parameter's value (the last one when the URL repeats it)."""
    return value[-1] if isinstance(value, tuple) else (value or "")


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite opens a transaction only at the first write, so readers never hold the
    # write lock and writers queue on busy_timeout instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    """The engine and session factory owned by one Flask app."""

    def __init__(self, url: str, *, statement_timeout_ms: int | None = None) -> None:
        self.url = url
        self.engine = make_engine(url, statement_timeout_ms=statement_timeout_ms)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error (jobs, CLI)."""
        with self.sessionmaker() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise


def init_db(app: Flask, url: str, *, statement_timeout_ms: int | None = None) -> Database:
    """Attach a :class:`Database` to the app and close request sessions on teardown."""
    database = Database(url, statement_timeout_ms=statement_timeout_ms)
    app.extensions[EXTENSION_KEY] = database
    app.teardown_appcontext(_close_request_session)
    return database


def get_db(app: Flask | None = None) -> Database:
    """The :class:`Database` of the given (or current) app."""
    return (app or current_app).extensions[EXTENSION_KEY]


def db_session() -> Session:
    """The session of the current request/app context, created on first use."""
    if "db_session" not in g:
        g.db_session = get_db().sessionmaker()
    return g.db_session


def _close_request_session(_exc: BaseException | None) -> None:
    discard_request_session()


# SQLite's errors for a file it cannot use, as opposed to a statement it cannot run.
_SQLITE_UNAVAILABLE = ("unable to open database file", "database is locked", "disk I/O error")


class DatabaseUnavailable(RuntimeError):
    """The database could not serve a request in time (answered 503 ``unavailable``)."""


def is_disconnect(exc: BaseException) -> bool:
    """True when ``exc`` means the connection was lost (server restart, terminated
    backend, cut idle socket), so the same statement may succeed on a new connection."""
    exc = _underlying(exc)
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    return _is_raw_disconnect(exc)


def _underlying(exc: BaseException) -> BaseException:
    """The driver error a :class:`DatabaseUnavailable` wraps, else ``exc`` itself."""
    if isinstance(exc, DatabaseUnavailable) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def _is_raw_disconnect(exc: BaseException) -> bool:
    # A driver error raised outside SQLAlchemy (the exposure writer's raw connections).
    return (isinstance(exc, psycopg.OperationalError)
            and not isinstance(exc, psycopg.errors.QueryCanceled))


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be reached or cannot keep up (503)."""
    exc = _underlying(exc)
    if isinstance(exc, DBAPIError):
        return (exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError)
                or (isinstance(exc.orig, sqlite3.OperationalError)
                    and str(exc.orig).startswith(_SQLITE_UNAVAILABLE)))
    return isinstance(exc, PoolTimeout | DatabaseUnavailable) or _is_raw_disconnect(exc)


def forget_lost_connections(engine: Engine, exc: BaseException) -> None:
    """After a lost connection, make the pool open new ones instead of handing out its
    other connections, which a restarted or terminated server has cut as well.

    SQLAlchemy does this by itself for errors it sees; a raw driver error needs it here.
    """
    if not isinstance(_underlying(exc), DBAPIError):
        engine.dispose()


def discard_request_session() -> None:
    """Drop the request's session (and its connection) so a retry starts afresh."""
    session = g.pop("db_session", None)
    if session is not None:
        close_session(session)


def close_session(session: Session) -> None:
    """Close ``session`` as the end of a request does. A connection lost under a raw driver
    cursor (the exposures' fast insert) is one SQLAlchemy has not seen die: the rollback
    in ``close()`` then fails on the dead socket. It is invalidated instead (there is
    nothing to roll back), so the request still gets its answer, and the session is ready
    for the next one on a new connection."""
    try:
        session.close()
    except DBAPIError as exc:
        if not is_disconnect(exc):
            raise
        session.invalidate()
