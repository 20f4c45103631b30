"""The "last NPS answer" key on every engine (SPEC §3): the latest answer wins, then the
higher event id at the same instant; its class comes back out of the key unchanged, also
for answers before 1970 and for the largest ids (the 128-bit form of DuckDB and ClickHouse
packs time, id and class into one integer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from experiments.db import UtcDateTime
from experiments.services.pipeline.dialects import answer_class, answer_key, utc_instant
from tests.conftest import POSTGRES_URL, requires_postgres

T = datetime(2026, 12, 5, 10, 30, 0, 250000, tzinfo=UTC)
BEFORE_1970 = datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
LARGEST_ID = 2**63 - 1
ANSWERS = [  # (unit, answered at, event id, class) → the last answer's class per unit
    ("tie", T, 3, 2), ("tie", T, 7, 1),  # same instant: the higher id wins
    ("later", T, 9, 2), ("later", T + timedelta(microseconds=1), 1, 0),  # time before id
    ("old", BEFORE_1970, 5, 2), ("old", BEFORE_1970 - timedelta(microseconds=1),
                                 LARGEST_ID, 1),
    ("big", T, LARGEST_ID, 1), ("big", T, LARGEST_ID - 1, 2),
    ("one", BEFORE_1970, 0, 0),
]
EXPECTED = {"tie": 1, "later": 0, "old": 2, "big": 1, "one": 0}
ENGINES = ["sqlite://", "duckdb:///:memory:", "chdb:///:memory:",
           pytest.param(POSTGRES_URL, marks=requires_postgres, id="postgresql")]


@pytest.mark.parametrize("url", ENGINES)
def test_the_last_answer_wins_by_time_then_id_on_every_engine(url: str) -> None:
    rows = sa.union_all(*(sa.select(sa.literal(unit).label("unit"),
                                    utc_instant(at, UtcDateTime()).label("at"),
                                    sa.literal(event_id, sa.BigInteger()).label("id"),
                                    sa.literal(klass, sa.Integer()).label("klass"))
                          for unit, at, event_id, klass in ANSWERS)).subquery("answers")
    last = (sa.select(rows.c.unit, sa.func.max(answer_key(rows.c.at, rows.c.id, rows.c.klass))
                      .label("key"))
            .group_by(rows.c.unit).subquery("last"))
    query = sa.select(last.c.unit, answer_class(last.c.key).label("klass"))
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        got = {unit: int(klass) for unit, klass in connection.execute(query)}
    engine.dispose()
    assert got == EXPECTED
