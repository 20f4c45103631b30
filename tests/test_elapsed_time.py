"""Elapsed time between two instants on every engine (time to convert, time on step, the
analysis window): exact to the microsecond. SQLite's ``strftime('%s')`` rounds a time to the
millisecond first, so a time in the last half-millisecond of a second counted one second
late (a time on step 95.178763 s on SQLite, 94.178763 s in a warehouse)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from experiments.db import UtcDateTime
from experiments.services.pipeline.dialects import before_hours_after, seconds_between, utc_instant
from tests.conftest import POSTGRES_URL, requires_postgres

T = datetime(2026, 11, 24, 0, 59, 18, 820949, tzinfo=UTC)
PAIRS = [  # (start, end) → seconds
    (T, datetime(2026, 11, 24, 1, 0, 52, 999712, tzinfo=UTC)),  # end rounds up in strftime
    (datetime(2026, 11, 24, 1, 0, 52, 999712, tzinfo=UTC), T + timedelta(hours=2)),
    (T.replace(microsecond=999999), T.replace(microsecond=0) + timedelta(seconds=1)),
    (T.replace(microsecond=0), T.replace(microsecond=0) + timedelta(seconds=30)),
    (datetime(1969, 12, 31, 23, 59, 59, 999600, tzinfo=UTC),
     datetime(1970, 1, 1, 0, 0, 0, 400, tzinfo=UTC)),
]
ROOT = Path(__file__).resolve().parent.parent
WINDOW_HOURS = 72.0
WINDOW_ENDS = [  # (later than the start by, inside a 72 h window)
    (timedelta(hours=72) - timedelta(microseconds=300), True),
    (timedelta(hours=72) - timedelta(microseconds=1), True),
    (timedelta(hours=72), False),
]
ENGINES = ["sqlite://", "duckdb:///:memory:", "chdb:///:memory:",
           pytest.param(POSTGRES_URL, marks=requires_postgres, id="postgresql")]


def instant(at: datetime) -> sa.ColumnElement[datetime]:
    return utc_instant(at, UtcDateTime())


@pytest.mark.parametrize("url", ENGINES)
def test_elapsed_seconds_and_the_window_end_are_exact_on_every_engine(url: str) -> None:
    start = T.replace(microsecond=999700)  # its millisecond rounds up to the next second
    elapsed = [seconds_between(instant(a), instant(b)) for a, b in PAIRS]
    inside = [before_hours_after(instant(start), instant(start + later),
                                 sa.literal(WINDOW_HOURS, sa.Float()))
              for later, _ in WINDOW_ENDS]
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        row = connection.execute(sa.select(*elapsed, *inside)).one()
    engine.dispose()
    seconds, flags = row[:len(PAIRS)], row[len(PAIRS):]
    assert [round(float(value), 6) for value in seconds] == [
        round((b - a).total_seconds(), 6) for a, b in PAIRS]
    assert [bool(flag) for flag in flags] == [expected for _, expected in WINDOW_ENDS]


READ_IN_TOKYO = """
import sys
from datetime import datetime
import sqlalchemy as sa
from experiments.config import WarehouseConfig
from experiments.services.pipeline.dialects import seconds_between, utc_instant
from experiments.services.warehouses.engines import _make_engine
at = datetime.fromisoformat(sys.argv[2])
engine = _make_engine(WarehouseConfig("w", sys.argv[1]))
naive, aware = (utc_instant(t, sa.DateTime(timezone=True)) for t in (at.replace(tzinfo=None), at))
with engine.connect() as connection:
    seconds, same = connection.execute(
        sa.select(seconds_between(naive, aware), naive == aware)).one()
print(float(seconds), bool(same))
"""


@pytest.mark.parametrize("url", ["duckdb:///:memory:", "chdb:///:memory:"])
def test_a_warehouse_reads_naive_times_as_utc_on_a_machine_in_another_zone(url: str) -> None:
    """A naive time read from a warehouse (chDB reads its UTC columns so; DuckDB a TIMESTAMP)
    comes back as a bound of the event scan: chDB took it for the machine's local time
    (a process in Tokyo here: 9 h off), DuckDB compared it with a TIMESTAMPTZ in its
    session zone, the machine's by default."""
    printed = subprocess.run([sys.executable, "-c", READ_IN_TOKYO, url, T.isoformat()],
                             env={**os.environ, "TZ": "Asia/Tokyo"}, cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert printed.split() == ["0.0", "True"]


@pytest.mark.parametrize("url", ENGINES)
def test_a_cached_statement_takes_each_run_s_instants(url: str) -> None:
    """The same statement with other instants (the event scan's bounds move with every
    report) gives their own result, on ClickHouse too, where they are literals."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        got = [float(connection.scalar(sa.select(seconds_between(instant(T), instant(end)))))
               for end in (T + timedelta(seconds=1), T + timedelta(hours=5, microseconds=3))]
    engine.dispose()
    assert got == [1.0, 18000.000003]
