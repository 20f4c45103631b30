"""Named warehouses (SPEC §15): one lazily created engine per name, each with its timeout.

The statement timeout is enforced the way each engine allows:

* DuckDB has no server-side timeout: a timer started before each statement calls the
  connection's ``interrupt()`` when it fires;
* ClickHouse (chDB in-process, or a server through clickhouse-connect) stops the query
  itself with the ``max_execution_time`` setting;
* PostgreSQL: ``statement_timeout``; Snowflake: ``STATEMENT_TIMEOUT_IN_SECONDS``;
* any other dialect (BigQuery): the warehouse's own job limits.

Every error is re-raised as :class:`WarehouseError` naming the warehouse, so a report
says which warehouse failed and why.

DuckDB and chDB run inside the process and let one process at a time open a database
file. A pooled connection would hold that lock for the life of the process: the
customer's own loaders, another gunicorn worker or the scheduler's process could not open
the warehouse at all. So their file-backed engines pool nothing (each use opens and
closes the file, ~15-35 ms), and a connect that finds the file locked by another process
waits for it (up to :data:`LOCK_WAIT_SECONDS`, within the warehouse's time limit).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Flask, current_app, has_app_context
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.pool import NullPool

from experiments.config import WarehouseConfig, warehouses_from_env
from experiments.db import on_connect, postgres_connect_args, sessions_in_utc
from experiments.errors import NotFound

EXTENSION_KEY = "parcours.warehouses"
# Each engine's memory settings unless the URL or ``PARCOURS_WAREHOUSE_<NAME>_SETTINGS``
# says otherwise (measured with bench/bench_warehouse.py: docs/performance.md, Warehouses).
# chDB: ClickHouse joins with a hash table of its right side, which the per-unit pass makes
# the exposures (one row per unit), not the events. It runs inside the Parcours process, so
# its joins and GROUP BYs must not take the memory of all the units: the join is a partial
# merge (the right side split into sorted, indexed blocks that go to disk where they can),
# GROUP BY and ORDER BY spill beyond 50 MB. Measured with the bench's main
# statement (docs/performance.md, Warehouses), at 1 M units / 10 M events then at 10 M /
# 100 M: partial merge 3.6 s in a 465 MB process, then 100 s and 1.3 GB; a grace hash join
# 3.8-6.2 s and 0.5-0.65 GB, then 302 s and 1.3-3.1 GB; a plain hash join 3.9 s and 660 MB,
# then past 12 GB.
# And no JIT compilation of expressions: chDB's embedded server stops with the last
# connection and starts again with the next one (an in-process file is opened per analysis,
# below), and from the fourth restart on in one process its compiled expressions made the
# scheduled statement twice as costly (1 M units: 0.5 s, then 1.0-1.1 s and 1.3 s of CPU
# for the same statement; 0.46-0.48 s each time without, first reports unchanged).
# And the join's sides stay as written: ClickHouse (chDB 26.9) swaps them by its own row
# estimates, and it swapped the per-unit pass's, building its join from the events — every
# event column they read held in memory (1 M units / 10 M events: the main statement
# 2.27 GB and 2.9-3.3 s, 0.45-0.5 GB and 2.35-2.5 s as written).
# Both read times in UTC, not in the machine's zone (their default): DuckDB compares a naive
# TIMESTAMP with a TIMESTAMPTZ in its session zone, chDB parses a bound time's text in it.
# (DuckDB's is set once connected: its time zones are an extension, loaded after the config.)
# DuckDB: no insertion order to keep (the pipeline sorts nothing it does not ask for); its
# memory_limit stays DuckDB's (80 % of RAM): a low one makes big joins fail ("Out of Memory"),
# except for the statements over kept per-unit values (dialects.kept_values_settings).
# And it builds a join's hash table from the side the pipeline writes on the right, as
# ClickHouse does: DuckDB's own choice goes by estimates, and the per-unit pass bounds the
# events' times by literals it guesses select 4 % of them, under the 1 M exposures it
# cannot filter, so it hashed the events (at 1 M units, main statement 1.8 s and 1.7 GB of
# buffers against 1.2 s and 0.5 GB).
ENGINE_SETTINGS: dict[str, dict[str, str]] = {
    "duckdb": {"preserve_insertion_order": "false",
               "disabled_optimizers": "build_side_probe_side"},
    "chdb": {"join_algorithm": "partial_merge",  # dialects.CHDB_JOIN (kept_values_settings)
             "session_timezone": "UTC",
             "max_bytes_before_external_group_by": "50000000",
             "max_bytes_before_external_sort": "50000000",
             "compile_expressions": "0", "compile_aggregate_expressions": "0",
             "query_plan_join_swap_table": "false"},
}
# The connection mark of a DuckDB warehouse whose memory limit no setting chose: its
# statements over kept per-unit values run under a bounded one. The same text as
# dialects.DUCKDB_DEFAULT_MEMORY (tested equal; this module stays light to import).
DUCKDB_DEFAULT_MEMORY = "parcours_duckdb_default_memory"
# How ClickHouse and PostgreSQL say that their own timeout stopped a statement.
TIMEOUT_SIGNS = ("TIMEOUT_EXCEEDED", "statement timeout")
# In-process engines whose database files one process opens at a time, and how they say
# that another process holds one (chDB's embedded server does not say more).
IN_PROCESS = ("duckdb", "chdb")
LOCKED_SIGNS = ("Could not set lock on file", "Error initializing EmbeddedServer")
LOCK_WAIT_SECONDS = 30.0
# At most this many units per statement of a pass over every unit on an in-process engine
# (PipelineSources.units_per_pass: a first report, a fold from the events). Each statement
# scans every event again, so it trades time for memory: at 10 M units / 100 M events
# (bench/bench_warehouse.py, four statements) DuckDB's first report 4.4 GB and 9-12 s ->
# 2.0 GB and 27 s, chDB's 1.5-1.6 GB and 17-27 s -> 0.81 GB and 41 s; ten statements of 1 M
# units cost DuckDB 42 s for 1.7 GB. Up to 2.5 M units (the 1 M-unit bench) nothing changes;
# there are at most four statements (unit_values.MOST_BUCKETS).
UNITS_PER_PASS = 2_500_000


class WarehouseError(RuntimeError):
    """A warehouse could not be reached, refused a statement or ran out of time."""


class Warehouses:
    """The configured warehouses of one app; engines open on first use."""

    def __init__(self, configs: tuple[WarehouseConfig, ...]) -> None:
        self.configs = {config.name: config for config in configs}
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The configured names, sorted."""
        return sorted(self.configs)

    def config(self, name: str) -> WarehouseConfig:
        """The settings of ``name`` (404 when no such warehouse is configured)."""
        try:
            return self.configs[name]
        except KeyError:
            raise NotFound(f"no warehouse named {name!r} is configured "
                           f"(PARCOURS_WAREHOUSE_{name.upper()}_URL)") from None

    def dialect(self, name: str) -> str:
        """The SQLAlchemy dialect name of ``name``'s URL, without connecting."""
        return make_url(self.config(name).url).get_backend_name()

    def engine(self, name: str) -> Engine:
        """The engine of ``name``, created once (the URL is never shown or logged)."""
        config = self.config(name)
        with self._lock:
            if name not in self._engines:
                self._engines[name] = _make_engine(config)
            return self._engines[name]

    def dispose(self) -> None:
        """Close every pooled warehouse connection (tests, shutdown)."""
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


def init_app(app: Flask) -> Warehouses:
    """Attach the registry of the app's configured warehouses."""
    registry = Warehouses(app.config["PARCOURS"].WAREHOUSES)
    app.extensions[EXTENSION_KEY] = registry
    return registry


def get_warehouses(app: Flask | None = None) -> Warehouses:
    """The warehouse registry of the given (or current) app."""
    return (app or current_app).extensions[EXTENSION_KEY]


def configured_warehouses() -> list[str]:
    """The warehouse names of the current app (of the environment outside an app)."""
    if has_app_context():
        return get_warehouses().names()
    return sorted(config.name for config in warehouses_from_env())


def _make_engine(config: WarehouseConfig) -> Engine:
    url = make_url(config.url)
    backend, seconds = url.get_backend_name(), config.timeout_seconds
    settings = {name: value for name, value in ENGINE_SETTINGS.get(backend, {}).items()
                if name not in url.query}
    settings.update(config.settings)
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args = postgres_connect_args(config.url, int(seconds * 1000))
    elif backend == "clickhousedb":
        connect_args = {"max_execution_time": max(1, round(seconds)), **settings}
    elif backend == "duckdb" and settings:
        connect_args = {"config": settings}
    in_process_file = backend in IN_PROCESS and url.database not in (None, "", ":memory:")
    engine = create_engine(url, connect_args=connect_args,
                           **({"poolclass": NullPool} if in_process_file else {}))
    if in_process_file:
        _wait_for_other_processes(engine, min(seconds, LOCK_WAIT_SECONDS))
    if backend == "postgresql":
        sessions_in_utc(engine)
    elif backend == "duckdb":
        _interrupt_after(engine, seconds)
        on_connect(engine, "SET TimeZone = 'UTC'")
        if "memory_limit" not in settings and "memory_limit" not in url.query:
            _mark_on_connect(engine, DUCKDB_DEFAULT_MEMORY)
    elif backend == "chdb":
        on_connect(engine, f"SET max_execution_time = {max(1, round(seconds))}",
                   *(f"SET {name} = {_literal(value)}" for name, value in settings.items()))
    elif backend == "snowflake":
        on_connect(engine, f"ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS = "
                           f"{max(1, round(seconds))}")
    _name_errors(engine, config)
    return engine


def _wait_for_other_processes(engine: Engine, seconds: float) -> None:
    """Retry a connect refused because another process has the file open, with backoff,
    for up to ``seconds`` (then the refusal is the warehouse's error)."""

    def connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        deadline, delay = time.monotonic() + seconds, 0.05
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except Exception as exc:  # the driver's own error types
                if (not any(sign in str(exc) for sign in LOCKED_SIGNS)
                        or time.monotonic() + delay > deadline):
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    event.listen(engine, "do_connect", connect)


def _literal(value: str) -> str:
    """A ClickHouse setting's value: numbers as they are, anything else quoted."""
    return value if value.replace(".", "", 1).isdigit() else "'" + value.replace("'", "") + "'"


def _mark_on_connect(engine: Engine, mark: str) -> None:
    """Every connection of ``engine`` carries ``mark`` in its ``info``."""

    def marked(_dbapi_connection: Any, record: Any) -> None:
        record.info[mark] = True

    event.listen(engine, "connect", marked)


def _interrupt_after(engine: Engine, seconds: float) -> None:
    """Interrupt a DuckDB statement still running after ``seconds`` (it has no server timeout)."""

    def start(connection: Any, _cursor: Any, _statement: str, _parameters: Any,
              context: Any, _executemany: bool) -> None:
        raw = connection.connection.dbapi_connection
        timer = threading.Timer(seconds, _interrupt, (raw, connection.info))
        timer.daemon = True
        connection.info["parcours.timer"] = timer
        connection.info.pop("parcours.timed_out", None)
        timer.start()

    def stop(connection: Any, *_args: Any) -> None:
        if connection is None:  # the connection itself failed to open
            return
        timer = connection.info.pop("parcours.timer", None)
        if timer is not None:
            timer.cancel()

    event.listen(engine, "before_cursor_execute", start)
    event.listen(engine, "after_cursor_execute", stop)
    event.listen(engine, "handle_error", lambda context: stop(context.connection))


def _interrupt(raw_connection: Any, info: dict[str, Any]) -> None:
    info["parcours.timed_out"] = True
    raw_connection.interrupt()


def _name_errors(engine: Engine, config: WarehouseConfig) -> None:
    """Raise every driver error as a :class:`WarehouseError` naming the warehouse."""

    url = make_url(config.url)

    def rename(context: ExceptionContext) -> None:
        original = context.original_exception
        timed_out = (context.connection is not None
                     and context.connection.info.pop("parcours.timed_out", False))
        if timed_out or any(sign in str(original) for sign in TIMEOUT_SIGNS):
            raise WarehouseError(
                f"warehouse {config.name!r}: query stopped after {config.timeout_seconds:g} s "
                f"(PARCOURS_WAREHOUSE_{config.name.upper()}_TIMEOUT_SECONDS)") from original
        message = _first_line(original)
        if url.password:  # a driver echoing its connection string must not leak it
            message = message.replace(url.password, "***")
        raise WarehouseError(f"warehouse {config.name!r}: {message}") from original

    event.listen(engine, "handle_error", rename)


def _first_line(exc: BaseException) -> str:
    """The engine's own message, without the driver's multi-line decoration."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
