"""Storage of first exposures (SPEC §4): unique per experiment and unit, durable before the answer.

On PostgreSQL one statement inserts a unit's first exposures (``ON CONFLICT DO
NOTHING``) and returns the ones another request stored earlier. It runs on a pooled
driver connection in autocommit, so it is durable when it returns and costs no
BEGIN/COMMIT round trips, and it bypasses the ORM (this is the assignment hot path).

Concurrent requests of one process share that statement and its commit
(:class:`GroupCommit`): a round trip and a WAL flush serve every unit queued while the
previous batch was in flight, and each request is answered only once its batch is
durable. The batches go through one dedicated connection per process
(:class:`PreparedConnection`), at the libpq level. A caller whose session already holds
a transaction joins it instead, and its commit makes the rows durable. SQLite uses Core
statements in the caller's session.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache, partial
from typing import Any, NamedTuple

import psycopg
from psycopg import generators, waiting
from psycopg.pq import ConnStatus, ExecStatus
from pydantic_core import to_json
from sqlalchemy import Engine, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from experiments.db import DatabaseUnavailable, forget_lost_connections, is_disconnect
from experiments.models import Exposure, HoldoutExposure

_EXPOSURES = Exposure.__table__
_HOLDOUT_EXPOSURES = HoldoutExposure.__table__
# One statement object each, for every unit (the rows are parameters): compiled once, where
# ``.values(rows)`` in the statement is compiled again on every call (~0.7 ms per assignment).
_SQLITE_EXPOSURE_INSERT = (sqlite_insert(_EXPOSURES)
                           .on_conflict_do_nothing(index_elements=["experiment_id", "unit_id"])
                           .returning(_EXPOSURES.c.experiment_id, _EXPOSURES.c.variant_key))
_SQLITE_HOLDOUT_INSERT = sqlite_insert(_HOLDOUT_EXPOSURES).on_conflict_do_nothing(
    index_elements=["holdout_id", "unit_id"])
# Rows per group-commit statement (7 parameters each; PostgreSQL allows 65,535), and how
# long a queued request waits for its batch before failing.
MAX_BATCH_ROWS = 1000
BATCH_WAIT_S = 30.0

Stored = dict[int, str]  # variant key by experiment id
# Runs one statement written with ``$n`` placeholders and returns its rows.
Runner = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


class FirstExposure(NamedTuple):
    """One exposure to store unless the unit already has one in the experiment."""

    experiment_id: int
    variant_key: str
    is_override: bool
    # Per experiment (floored at its start); None: the unit write's ``exposed_at``.
    exposed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class UnitWrite:
    """A unit's first exposures in one request, with the attributes snapshot they store."""

    unit_id: str
    exposures: tuple[FirstExposure, ...]
    exposed_at: datetime
    attributes: Mapping[str, Any]
    client_exposed_at: datetime | None = None  # the raw client time, kept as sent


class ExposureWriteFailed(DatabaseUnavailable):
    """The statement carrying this request's first exposures failed: nothing was acknowledged."""


def store_for(session: Session) -> ExposureStore:
    """The exposure store of this session's database, for one assignment."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    if engine.dialect.name == "postgresql":
        return PostgresStore(session, engine)
    return SqliteStore(session)


class ExposureStore:
    """Reads and first-exposure writes for one assignment, in as few round trips as possible."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def read(self, unit_id: str, experiment_ids: Iterable[int]) -> Stored:
        """Committed exposures of this unit, by experiment id."""
        raise NotImplementedError

    def insert(self, write: UnitWrite) -> tuple[Stored, Stored]:
        """Store first exposures: (variants stored by this call, variants stored before)."""
        inserted, existing = self._insert(write)
        lost = {exposure.experiment_id for exposure in write.exposures
                } - inserted.keys() - existing.keys()
        if lost:  # committed by a concurrent request after this statement began
            existing.update(self.read(write.unit_id, lost))
        return inserted, existing

    def _insert(self, write: UnitWrite) -> tuple[Stored, Stored]:
        raise NotImplementedError

    def insert_holdout_exposures(self, unit_id: str, groups: Mapping[int, str],
                                 exposed_at: datetime) -> None:
        """Store a unit's first holdout exposures (group by holdout id) unless stored before;
        durable after :meth:`commit`."""
        raise NotImplementedError

    def commit(self) -> None:
        """Make what this store wrote in the caller's session durable."""
        self.session.commit()




class SqliteStore(ExposureStore):
    """SQLite: Core statements in the caller's session, committed by :meth:`commit`."""

    def read(self, unit_id: str, experiment_ids: Iterable[int]) -> Stored:
        rows = self.session.execute(
            select(_EXPOSURES.c.experiment_id, _EXPOSURES.c.variant_key).where(
                _EXPOSURES.c.unit_id == unit_id,
                _EXPOSURES.c.experiment_id.in_(sorted(experiment_ids)))
        )
        return {row.experiment_id: row.variant_key for row in rows}

    def _insert(self, write: UnitWrite) -> tuple[Stored, Stored]:
        attributes = dict(write.attributes)
        values = [{"experiment_id": exposure.experiment_id, "unit_id": write.unit_id,
                   "variant_key": exposure.variant_key,
                   "exposed_at": exposure.exposed_at or write.exposed_at,
                   "client_exposed_at": write.client_exposed_at,
                   "attributes": attributes, "is_override": exposure.is_override}
                  for exposure in write.exposures]
        inserted = {row.experiment_id: row.variant_key
                    for row in self.session.execute(_SQLITE_EXPOSURE_INSERT, values)}
        return inserted, {}

    def insert_holdout_exposures(self, unit_id: str, groups: Mapping[int, str],
                                 exposed_at: datetime) -> None:
        rows = [{"holdout_id": holdout_id, "unit_id": unit_id, "group": group,
                 "exposed_at": exposed_at} for holdout_id, group in sorted(groups.items())]
        self.session.execute(_SQLITE_HOLDOUT_INSERT, rows)


class PostgresStore(ExposureStore):
    """PostgreSQL: driver-level statements, in autocommit (group-committed) or the session's."""

    def __init__(self, session: Session, engine: Engine) -> None:
        super().__init__(session)
        self.engine = engine
        # Decided at first use: a session holding a transaction or pending changes is joined.
        self._joined: bool | None = None

    def _joins_session(self) -> bool:
        if self._joined is None:
            session = self.session
            self._joined = session.in_transaction() or bool(
                session.new or session.dirty or session.deleted)
        return self._joined

    def _session_connection(self) -> Any:
        return self.session.connection().connection.driver_connection

    def read(self, unit_id: str, experiment_ids: Iterable[int]) -> Stored:
        ids = sorted(experiment_ids)
        sql = _read_sql(len(ids))
        if self._joins_session():
            return dict(_execute(self._session_connection(), sql, (unit_id, *ids)))
        with autocommit_connection(self.engine) as connection:
            return dict(_execute(connection, sql, (unit_id, *ids)))

    def _insert(self, write: UnitWrite) -> tuple[Stored, Stored]:
        if self._joins_session():
            return write_units(partial(_execute, self._session_connection()), [write])[0]
        return group_commit_for(self.engine).write(write)

    def insert_holdout_exposures(self, unit_id: str, groups: Mapping[int, str],
                                 exposed_at: datetime) -> None:
        """In the caller's transaction when it holds one, else in autocommit: durable on
        return (rare: once per measured unit and process, so no group commit)."""
        params: list[Any] = []
        for holdout_id, group in sorted(groups.items()):
            params += (holdout_id, unit_id, group, exposed_at)
        sql = _holdout_insert_sql(len(groups))
        if self._joins_session():
            _execute(self._session_connection(), sql, params)
            return
        with autocommit_connection(self.engine) as connection:
            _execute(connection, sql, params)

    def commit(self) -> None:
        if self._joins_session():
            self.session.commit()


@contextmanager
def autocommit_connection(engine: Engine) -> Iterator[Any]:
    """A pooled driver connection in autocommit, back in the pool as it was found.

    On any error its state is unknown, so it is discarded rather than reused.
    """
    pooled = engine.raw_connection()
    try:
        driver = pooled.driver_connection
        driver.autocommit = True
        yield driver
        driver.autocommit = False
    except BaseException as error:
        pooled.invalidate()
        if is_disconnect(error):
            forget_lost_connections(engine, error)
        raise
    finally:
        pooled.close()


def flag_as_overrides(session: Session, experiment_id: int, unit_ids: Iterable[str]
                      ) -> list[int]:
    """Mark the stored exposures of units forced by a new override; their ids.

    Such a unit sees the forced variant from now on, so its data no longer measures the
    arm it was first exposed to: like every override unit it leaves the analysis.
    """
    return list(session.scalars(
        update(_EXPOSURES)
        .where(_EXPOSURES.c.experiment_id == experiment_id,
               _EXPOSURES.c.unit_id.in_(sorted(unit_ids)), _EXPOSURES.c.is_override.is_(False))
        .values(is_override=True)
        .returning(_EXPOSURES.c.id)))


def write_units(run: Runner, writes: Sequence[UnitWrite]) -> list[tuple[Stored, Stored]]:
    """One statement for several units' first exposures: per unit (inserted, already stored).

    When two requests carry the same (experiment, unit), the first one's row is offered
    and the other sees it as already stored.
    """
    owners: dict[tuple[int, str], int] = {}
    params: list[str | None] = []  # PostgreSQL's text format (the statement casts them)
    for index, write in enumerate(writes):
        exposed_at = write.exposed_at.isoformat()
        client = None if write.client_exposed_at is None else write.client_exposed_at.isoformat()
        attributes = to_json(write.attributes).decode()  # jsonb drops the spacing anyway
        for exposure in write.exposures:
            key = (exposure.experiment_id, write.unit_id)
            if key not in owners:
                owners[key] = index
                params += (str(exposure.experiment_id), write.unit_id, exposure.variant_key,
                           "t" if exposure.is_override else "f",
                           exposed_at if exposure.exposed_at is None
                           else exposure.exposed_at.isoformat(), attributes, client)
    stored = {(experiment_id, unit_id): (variant_key, is_new)
              for experiment_id, unit_id, variant_key, is_new
              in run(_insert_sql(len(owners)), params)}
    results = []
    for index, write in enumerate(writes):
        inserted: Stored = {}
        existing: Stored = {}
        for exposure in write.exposures:
            key = (exposure.experiment_id, write.unit_id)
            if key in stored:
                variant_key, is_new = stored[key]
                mine = is_new and owners[key] == index
                (inserted if mine else existing)[exposure.experiment_id] = variant_key
        results.append((inserted, existing))
    return results


def _execute(connection: Any, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run a statement written with ``$n`` placeholders (psycopg's raw cursor: no
    client-side query parsing, which it would redo for statements of over 50 parameters).

    Never prepared on the server: these pooled connections do not get the writer's
    planner settings, and a plan prepared while the table was small would stay a full
    scan until the next ANALYZE (see ``_PLAN_BY_KEY``). This path is the rare one
    (excluded units, ``track: false``, a caller's open transaction), so planning each
    time costs little.
    """
    with psycopg.RawCursor(connection) as cursor:
        return cursor.execute(sql, params, prepare=False).fetchall()


@lru_cache(maxsize=256)
def _insert_sql(rows: int) -> str:
    """Insert ``rows`` (experiment, unit) first exposures; return them and those stored before.

    ``NOT EXISTS`` skips stored exposures before the id default is evaluated, so a unit
    seen before draws no sequence value (every 32nd would force a WAL flush); ``ON
    CONFLICT DO NOTHING`` settles races with concurrent first requests.
    """
    types = ("integer", "varchar", "varchar", "boolean", "timestamptz", "jsonb", "timestamptz")
    width = len(types)
    values = ", ".join(
        "(" + ", ".join(f"${row * width + column + 1}" + (f"::{kind}" if row == 0 else "")
                        for column, kind in enumerate(types)) + ")"
        for row in range(rows))
    return f"""
WITH wanted (experiment_id, unit_id, variant_key, is_override, exposed_at, attributes,
             client_exposed_at) AS (
    VALUES {values}),
inserted AS (
    INSERT INTO exposures (experiment_id, unit_id, variant_key, is_override, exposed_at,
                           attributes, client_exposed_at)
    SELECT w.experiment_id, w.unit_id, w.variant_key, w.is_override, w.exposed_at,
           w.attributes, w.client_exposed_at
    FROM wanted AS w
    WHERE NOT EXISTS (SELECT FROM exposures AS e
                      WHERE e.experiment_id = w.experiment_id AND e.unit_id = w.unit_id)
    ON CONFLICT (experiment_id, unit_id) DO NOTHING
    RETURNING experiment_id, unit_id, variant_key)
SELECT experiment_id, unit_id, variant_key, TRUE FROM inserted
UNION ALL
SELECT e.experiment_id, e.unit_id, e.variant_key, FALSE
FROM exposures AS e JOIN wanted AS w USING (experiment_id, unit_id)"""


@lru_cache(maxsize=64)
def _holdout_insert_sql(rows: int) -> str:
    """Insert ``rows`` (holdout, unit) first holdout exposures unless stored before."""
    values = ", ".join(f"(${row * 4 + 1}::integer, ${row * 4 + 2}, ${row * 4 + 3}, "
                       f"${row * 4 + 4}::timestamptz)" for row in range(rows))
    return (f'INSERT INTO holdout_exposures (holdout_id, unit_id, "group", exposed_at) '
            f"VALUES {values} ON CONFLICT (holdout_id, unit_id) DO NOTHING RETURNING holdout_id")


@lru_cache(maxsize=256)
def _read_sql(count: int) -> str:
    """Stored exposures of one unit (``$1``) in ``count`` experiments."""
    ids = ", ".join(f"${index + 2}" for index in range(count))
    return ("SELECT experiment_id, variant_key FROM exposures "
            f"WHERE unit_id = $1 AND experiment_id IN ({ids})")


# --- group commit -----------------------------------------------------------------------------

def _closed_gate() -> Any:
    gate = threading.Lock()
    gate.acquire()
    return gate


@dataclass(eq=False)
class _Ticket:
    """A request's place in the queue, released when its batch is done or it must lead.

    The gate is a lock held from the start: waiting is acquiring it, releasing is
    opening it (cheaper than an ``Event``, which builds a condition per wait).
    """

    write: UnitWrite
    gate: Any = field(default_factory=_closed_gate)
    released: bool = False
    lead: bool = False
    outcome: tuple[Stored, Stored] | None = None
    error: BaseException | None = None

    def release(self) -> None:
        """Wake the request (once)."""
        self.released = True
        self.gate.release()

    def wait(self, timeout_s: float) -> bool:
        """Block until released; False after ``timeout_s``."""
        return bool(self.gate.acquire(timeout=timeout_s))

    def result(self) -> tuple[Stored, Stored]:
        if self.error is not None:
            raise ExposureWriteFailed(
                f"storing the first exposure of {self.write.unit_id!r} failed") from self.error
        assert self.outcome is not None
        return self.outcome


class GroupCommit:
    """Leader/follower group commit of first exposures, for one engine in one process.

    A request arriving when no statement is in flight writes at once (no added latency
    when alone). Requests arriving meanwhile queue; when the batch in flight is durable,
    the oldest queued request leads the next batch: every queued unit (up to
    ``MAX_BATCH_ROWS`` rows) in one autocommit statement: one round trip, one WAL flush.
    Each request is answered only after its own batch returned; if that statement fails,
    every request of the batch raises :class:`ExposureWriteFailed`. Waits are bounded.
    """

    def __init__(self, engine: Engine, *, wait_s: float = BATCH_WAIT_S) -> None:
        self.engine = engine
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._busy = False  # a leader is writing; invariant: not busy → queue empty
        self._prepared: PreparedConnection | None = None  # used by the leader only

    def _connection(self) -> PreparedConnection:
        """This process's connection (one inherited through ``fork`` is the parent's)."""
        if self._prepared is not None and self._prepared.pid != os.getpid():
            _INHERITED.append(self._prepared)
            self._prepared = None
        if self._prepared is None:
            self._prepared = PreparedConnection(self.engine)
        return self._prepared

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (the one being written not counted)."""
        with self._lock:
            return len(self._queue)

    def write(self, write: UnitWrite) -> tuple[Stored, Stored]:
        """Store one unit's first exposures with whoever else is waiting; durable on return."""
        ticket = _Ticket(write)
        with self._lock:
            self._queue.append(ticket)
            leads = not self._busy
            self._busy = True
        if leads or self._await(ticket):
            self._lead()
        return ticket.result()

    def _await(self, ticket: _Ticket) -> bool:
        """Wait for the batch holding ``ticket``; True when it was promoted to lead instead."""
        if not ticket.wait(self.wait_s):
            with self._lock:
                if not (ticket.lead or ticket.released):
                    if ticket in self._queue:  # not taken yet: nobody will store it
                        self._queue.remove(ticket)
                    raise ExposureWriteFailed(
                        f"no batch stored {ticket.write.unit_id!r} within {self.wait_s:g} s")
        return ticket.lead

    def _lead(self) -> None:
        """Write the oldest queued units (the leader's first) in one statement, then hand over."""
        batch = self._take_batch()
        try:
            outcomes = write_units(self._connection().run, [ticket.write for ticket in batch])
        except BaseException as error:  # every waiter of this batch learns it failed
            for ticket in batch:
                ticket.error = error
            if not isinstance(error, Exception):
                raise
        else:
            for ticket, outcome in zip(batch, outcomes, strict=True):
                ticket.outcome = outcome
        finally:
            for ticket in batch[1:]:
                ticket.release()
            self._hand_over()

    def _take_batch(self) -> list[_Ticket]:
        """The oldest tickets up to ``MAX_BATCH_ROWS`` rows; the leader's (the oldest) always."""
        with self._lock:
            size = rows = 0
            for ticket in self._queue:
                rows += len(ticket.write.exposures)
                if size and rows > MAX_BATCH_ROWS:
                    break
                size += 1
            batch = self._queue[:size]
            del self._queue[:size]
        return batch

    def _hand_over(self) -> None:
        with self._lock:
            if self._queue:
                successor = self._queue[0]
                successor.lead = True
                successor.release()
            else:
                self._busy = False


_group_commits: weakref.WeakKeyDictionary[Engine, GroupCommit] = weakref.WeakKeyDictionary()
_group_commits_lock = threading.Lock()


def group_commit_for(engine: Engine) -> GroupCommit:
    """The group commit of this engine's database in this process (created on first use)."""
    group = _group_commits.get(engine)
    if group is None:
        with _group_commits_lock:
            group = _group_commits.setdefault(engine, GroupCommit(engine))
    return group


# --- the group commit's connection --------------------------------------------------------

_TEXT_TYPES = frozenset({25, 1043})  # text, varchar
_INTEGER_TYPES = frozenset({20, 21, 23})  # int8, int2, int4
_BOOLEAN = 16
_WAIT_CHECK_S = 1.0  # how often a wait for a result wakes to check the connection
# Every statement here looks rows up by (experiment_id, unit_id), the unique key. A
# prepared statement keeps the plan it got when first planned: prepared while the table
# was small, that plan scans the whole table and hashes it, and it would stay in use as
# the table grows, until the next ANALYZE. On this connection only, lookups by index are
# the one plan the planner may choose, at every table size.
_PLAN_BY_KEY = b"SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off"
# Connections a forked child inherited: kept referenced, never closed or collected there,
# because closing one would end the parent's session on the same socket.
_INHERITED: list[Any] = []


class PreparedConnection:
    """An autocommit connection of its own for one process's batches, used through libpq.

    Only the batch leader writes, so one connection serves the process and no pool
    checkout is paid per batch. Each statement text is prepared once on it and then run
    with text parameters, and its result is awaited as psycopg awaits any (:func:`_result`).
    psycopg's cursor costs about three times the Python time of this for a one-row
    statement.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pid = os.getpid()
        self._driver: Any = None
        self._statements: dict[str, bytes] = {}

    def run(self, sql: str, params: Sequence[str | None]) -> list[tuple[Any, ...]]:
        """Execute ``sql`` (prepared on first use) with text-format parameters; typed rows.

        A connection found broken (the server restarted, an idle connection was cut) is
        replaced and the statement sent once more: it is idempotent (``ON CONFLICT DO
        NOTHING``, then the stored rows are read), so a first attempt that did commit
        only makes the second report those rows as stored before.
        """
        encoded = [None if value is None else value.encode() for value in params]
        try:
            return self._run(sql, encoded)
        except psycopg.Error as error:
            if self._driver is not None:  # not a broken connection (those are closed)
                raise
            forget_lost_connections(self.engine, error)  # the pool's others are cut too
            return self._run(sql, encoded)

    def _run(self, sql: str, params: list[bytes | None]) -> list[tuple[Any, ...]]:
        pgconn = self._pgconn()
        try:
            name = self._statements.get(sql)
            if name is None:
                name = f"parcours_exposures_{len(self._statements)}".encode()
                pgconn.send_prepare(name, sql.encode())
                _check(_result(pgconn), ExecStatus.COMMAND_OK)
                self._statements[sql] = name
            pgconn.send_query_prepared(name, params)
            return _rows(_check(_result(pgconn), ExecStatus.TUPLES_OK))
        except BaseException:
            if pgconn.status != ConnStatus.OK:
                self.close()
            raise

    def close(self) -> None:
        """Close the connection (the next :meth:`run` opens another)."""
        driver, self._driver = self._driver, None
        self._statements.clear()
        if driver is not None:
            driver.close()

    def _pgconn(self) -> Any:
        if self._driver is None:
            pooled = self.engine.raw_connection()  # the engine's connect settings apply
            driver = pooled.driver_connection
            pooled.detach()  # owned here for good: never returned to the pool
            driver.autocommit = True
            driver.pgconn.send_query(_PLAN_BY_KEY)
            _check(_result(driver.pgconn), ExecStatus.COMMAND_OK)
            self._driver = driver
        return self._driver.pgconn


def _result(pgconn: Any) -> Any:
    """The result of the statement just sent, waited for the way psycopg waits in this
    process: in libpq's poll without the GIL under threads, in the event loop under gevent
    (so the worker serves other requests meanwhile)."""
    results = waiting.wait(generators.execute(pgconn), pgconn.socket, interval=_WAIT_CHECK_S)
    return results[-1]


def _check(result: Any, expected: ExecStatus) -> Any:
    if result.status != expected:
        raise psycopg.errors.error_from_result(result, encoding="utf-8")
    return result


def _rows(result: Any) -> list[tuple[Any, ...]]:
    """Rows of a text-format result: integers, booleans and strings (all this module reads)."""
    decoders = []
    for column in range(result.nfields):
        kind = result.ftype(column)
        if kind in _INTEGER_TYPES:
            decoders.append(int)
        elif kind == _BOOLEAN:
            decoders.append(b"t".__eq__)
        elif kind in _TEXT_TYPES:
            decoders.append(bytes.decode)
        else:
            raise TypeError(f"no decoder for column type {kind}")
    cell = result.get_value
    columns = tuple(enumerate(decoders))
    return [tuple([decode(cell(row, column)) for column, decode in columns])
            for row in range(result.ntuples)]
