"""The one-pass check of a whole batch (CLEAN_EVENTS) never decides differently from the
per-event rules: it stores exactly the rows they would store, or hands the batch over.
Rows are bound as the driver takes them (SQLite times as SQLAlchemy's text)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic_core import from_json
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from experiments.schemas import FRICTION_KINDS
from experiments.schemas.events import CleanEvents, EventBatch
from experiments.services.events import sqlite_time, validate_events

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
MISSING = object()


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        node = {"a": node}
    return node


# Valid and invalid values of each field, edge cases of every rule included.
CHOICES: dict[str, list[Any]] = {
    "event_id": [MISSING, None, "e-1", "", "e" * 200, "e" * 201, "e\x00", 7],
    "unit_id": [MISSING, None, "visitor-1", "", "u" * 200, "u" * 201, "u\x00", 42],
    "type": [MISSING, "conversion", "step", "friction", "nps", "custom", "click", None],
    "name": [MISSING, None, "purchase", "", "n" * 64, "n" * 65, "n" * 200, "n" * 201, "n\x00",
             3],
    "step": [MISSING, None, "cart", "", "s" * 64, "s" * 65, "s\x00"],
    "friction_kind": [MISSING, None, "lag", *FRICTION_KINDS[:3]],
    "value": [MISSING, None, 0, 9, 10, 11, -1, 9.0, 7.5, 59.9, float("nan"), float("inf"),
              True, "9"],
    "occurred_at": [MISSING, None, "2026-11-24T08:00:00Z", "2026-11-24T10:00:00.250+02:00",
                    "2026-11-25T09:59:59.999999Z", "2026-11-25T10:00:01Z",
                    "2026-11-24t08:00:00z", "2026-11-24 08:00:00Z",
                    "2026-11-24T08:00:00.1234567Z", "2026-11-24T08:00:00",
                    "2026-02-30T10:00:00Z", "0001-01-01T00:00:00+01:00",
                    "9999-12-31T23:59:59-01:00", "2026-11-24T08:00:00+2:00", 1764000000,
                    "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.5Z", "0001-01-01T00:00:00Z",
                    "9999-12-31T23:59:58Z"],
    "properties": [MISSING, None, {}, {"device": "mobile"}, {"k": [1, {"b": None}]},
                   {"k": "NaN"}, {"k": float("nan")}, {"k": "\x00"}, {"k\x00": 1},
                   {"k": "\\u0000 is text"}, {"k": "x" * 8180}, {"k": "x" * 8200},
                   {"k": 1e-7}, _nested(32), _nested(33), ["a"], "text"],
    "extra": [MISSING, MISSING, MISSING, 1],
}


def random_event(rng: random.Random) -> Any:
    """A mostly plausible event with a few fields swapped for edge cases."""
    base = {"event_id": f"e-{rng.randrange(10**6)}", "unit_id": "visitor-1", "type": "step",
            "step": "cart"}
    for field in rng.sample(sorted(CHOICES), rng.randrange(1, 4)):
        base[field] = rng.choice(CHOICES[field])
    if rng.random() < 0.02:
        return rng.choice([3, "event", None, []])
    return {key: value for key, value in base.items() if value is not MISSING}


def per_event(raw_events: list[Any], sent_at: datetime | None = None
              ) -> tuple[list[Any], list[dict[str, Any]]]:
    """What the per-event rules decide: an unparseable item forces that path."""
    rows, rejected = validate_events([*raw_events, "not an event"], NOW, sent_at=sent_at)
    return rows, [item for item in rejected if item["index"] < len(raw_events)]


# No correction; a clock a few minutes behind; reset to 1970; at either end of the range.
SENT_AT = [None, datetime(2026, 11, 24, 9, 55, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC),
           datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)]


@pytest.mark.parametrize("sent_at", SENT_AT)
def test_the_one_pass_check_stores_what_the_per_event_rules_store(sent_at):
    rng = random.Random(20261124)
    took_one_pass = 0
    for _ in range(3000):
        raw = [random_event(rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        body = json.dumps({"events": raw}).encode()
        parsed = EventBatch.model_validate_json(body, strict=True).events
        rows, rejected = validate_events(parsed, NOW, sent_at=sent_at)
        expected_rows, expected_rejected = per_event(from_json(body)["events"], sent_at)
        assert rejected == expected_rejected, raw
        # Server uuids for events without event_id differ between two runs.
        assert [row[1:] for row in rows] == [row[1:] for row in expected_rows], raw
        took_one_pass += isinstance(parsed, CleanEvents)
    assert took_one_pass > 300  # the comparison covered the fast lane often enough


@pytest.mark.parametrize("events", [
    [{"unit_id": "u", "type": "step", "step": "cart", "occurred_at": "2026-11-24T08:00:00Z",
      "properties": {"device": "mobile"}}],
    [{"event_id": "e", "unit_id": "u", "type": "nps", "value": 9},
     {"unit_id": "u", "type": "friction", "friction_kind": "error", "step": "payment"},
     {"unit_id": "u", "type": "conversion", "name": "purchase", "value": 59.9}],
])
def test_a_usual_valid_batch_is_checked_in_one_pass_while_parsing(events):
    body = json.dumps({"events": events}).encode()
    assert isinstance(EventBatch.model_validate_json(body, strict=True).events, CleanEvents)


def test_python_callers_get_the_same_rows_as_the_api():
    events = [{"event_id": "e-1", "unit_id": "u", "type": "step", "name": "cart"},
              {"event_id": "e-2", "unit_id": "u", "type": "nps", "value": 9.0}]
    from_api = validate_events(EventBatch.model_validate({"events": events}).events, NOW)
    assert validate_events(events, NOW) == from_api == per_event(events)


@pytest.mark.parametrize("value", [
    datetime(2026, 11, 24, 10, 0, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 2, 3, 4, 5, 6, 7, tzinfo=UTC)])
def test_sqlite_times_are_bound_as_sqlalchemy_stores_them(value):
    processor = DateTime(timezone=True).dialect_impl(sqlite.dialect()).bind_processor(
        sqlite.dialect())
    assert sqlite_time(value) == processor(value)
