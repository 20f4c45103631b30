"""Event ingestion service: validation rules, defaults, dedupe and concurrent resends."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from experiments.db import get_db
from experiments.models import Event
from experiments.schemas import FRICTION_KINDS
from experiments.services.events import ingest_events
from tests.conftest import make_test_app

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def event(**fields: Any) -> dict[str, Any]:
    """A valid conversion event with ``fields`` replaced (``None`` removes a field)."""
    base: dict[str, Any] = {"unit_id": "visitor-42", "type": "conversion", "name": "purchase",
                            "value": 59.9}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def stored(db) -> list[Event]:
    db.expire_all()
    return list(db.scalars(select(Event).order_by(Event.id)))


def test_a_valid_event_is_stored_with_received_time_as_default(db):
    result = ingest_events(db, [event(event_id="e-1", properties={"device": "mobile"})], now=NOW)
    assert (result.accepted, result.duplicates, result.rejected) == (1, 0, [])
    [row] = stored(db)
    assert (row.event_id, row.unit_id, row.type, row.name, row.value) == (
        "e-1", "visitor-42", "conversion", "purchase", 59.9)
    assert row.occurred_at == NOW and row.received_at == NOW
    assert row.properties == {"device": "mobile"}


def test_resending_a_batch_three_times_stores_each_event_once(db):
    batch = [event(event_id=f"e-{index}", value=index) for index in range(5)]
    results = [ingest_events(db, batch, now=NOW) for _ in range(3)]
    assert [(r.accepted, r.duplicates) for r in results] == [(5, 0), (0, 5), (0, 5)]
    assert sorted(row.event_id for row in stored(db)) == [f"e-{index}" for index in range(5)]


def test_duplicates_inside_one_batch_count_once(db):
    batch = [event(event_id="same", value=1), event(event_id="same", value=2),
             event(event_id="other")]
    result = ingest_events(db, batch, now=NOW)
    assert (result.accepted, result.duplicates) == (2, 1)
    rows = stored(db)
    assert {row.event_id: row.value for row in rows} == {"same": 1.0, "other": 59.9}


def test_events_without_event_id_get_a_server_uuid_and_are_never_deduped(db):
    result = ingest_events(db, [event(), event()], now=NOW)
    assert (result.accepted, result.duplicates) == (2, 0)
    ids = [row.event_id for row in stored(db)]
    assert len(set(ids)) == 2 and all(len(event_id) == 36 for event_id in ids)


def test_invalid_events_are_rejected_by_index_and_the_valid_ones_stored(db):
    batch = [event(event_id=f"e-{index}") for index in range(10)]
    batch[2]["type"] = "click"
    batch[5]["value"] = "lots"
    batch[7] = event(event_id="e-7", type="nps", value=11, name=None)
    result = ingest_events(db, batch, now=NOW)
    assert result.accepted == 7
    assert [(item["index"], [d["field"] for d in item["error"]["details"]])
            for item in result.rejected] == [
        (2, ["events[2].type"]), (5, ["events[5].value"]), (7, ["events[7].value"])]
    assert all(item["error"]["code"] == "validation_error" for item in result.rejected)
    assert len(stored(db)) == 7


@pytest.mark.parametrize("kind", FRICTION_KINDS)
def test_every_friction_kind_is_accepted_and_names_the_event(db, kind):
    result = ingest_events(db, [event(type="friction", name=None, value=None,
                                      friction_kind=kind, step="payment")], now=NOW)
    assert result.accepted == 1
    [row] = stored(db)
    assert (row.type, row.name, row.friction_kind, row.step) == ("friction", kind, kind,
                                                                  "payment")


@pytest.mark.parametrize(("fields", "name", "step"), [
    ({"type": "nps", "name": None, "value": 9}, "nps", None),
    ({"type": "nps", "name": "post-purchase-nps", "value": 0}, "post-purchase-nps", None),
    ({"type": "step", "name": None, "value": None, "step": "cart"}, "cart", "cart"),
    ({"type": "step", "name": "cart", "value": None}, "cart", "cart"),
    ({"type": "step", "name": "cart-view", "value": None, "step": "cart"}, "cart-view", "cart"),
    ({"type": "custom", "name": "coupon", "value": None, "step": "checkout"}, "coupon",
     "checkout"),
])
def test_names_and_steps_default_from_each_other(db, fields, name, step):
    assert ingest_events(db, [event(**fields)], now=NOW).accepted == 1
    [row] = stored(db)
    assert (row.name, row.step) == (name, step)


@pytest.mark.parametrize(("occurred_at", "expected"), [
    ("2026-11-24T08:00:00Z", datetime(2026, 11, 24, 8, 0, tzinfo=UTC)),
    ("2026-11-24T10:00:00.250+02:00", datetime(2026, 11, 24, 8, 0, 0, 250000, tzinfo=UTC)),
    ("2026-11-25T09:59:00Z", datetime(2026, 11, 25, 9, 59, tzinfo=UTC)),
])
def test_occurred_at_is_stored_in_utc_up_to_24h_ahead(db, occurred_at, expected):
    assert ingest_events(db, [event(occurred_at=occurred_at)], now=NOW).accepted == 1
    assert stored(db)[0].occurred_at == expected


@pytest.mark.parametrize("score", [0, 6, 9.0, 10])
def test_nps_scores_from_0_to_10_are_accepted(db, score):
    assert ingest_events(db, [event(type="nps", name=None, value=score)], now=NOW).accepted == 1
    assert stored(db)[0].value == float(score)


def test_deep_but_small_properties_within_8_kib_are_kept(db):
    properties = {"cart": {"items": [{"sku": "A-1", "qty": 2}], "coupon": None},
                  "text": "é" * 2000, "escaped": "\\u0000 is not a NUL", "deep": _nested(30)}
    assert ingest_events(db, [event(properties=properties)], now=NOW).accepted == 1
    assert stored(db)[0].properties == properties


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    for _ in range(depth - 1):
        node = {"a": node}
    return node


INVALID = [
    ("missing unit", {"unit_id": None}, "unit_id"),
    ("empty unit", {"unit_id": ""}, "unit_id"),
    ("long unit", {"unit_id": "u" * 201}, "unit_id"),
    ("numeric unit", {"unit_id": 42}, "unit_id"),
    ("NUL in unit", {"unit_id": "a\x00b"}, "unit_id"),
    ("lone surrogate in unit", {"unit_id": "a\ud800"}, "unit_id"),
    ("NUL in step", {"step": "pay\x00"}, "step"),
    ("missing type", {"type": None}, "type"),
    ("unknown type", {"type": "click"}, "type"),
    ("conversion without name", {"name": None}, "name"),
    ("custom without name", {"type": "custom", "name": None}, "name"),
    ("long name", {"name": "n" * 201}, "name"),
    ("long step", {"step": "s" * 65}, "step"),
    ("step without step or name", {"type": "step", "name": None}, "step"),
    ("step named beyond 64", {"type": "step", "name": "s" * 65}, "name"),
    ("friction without kind", {"type": "friction", "name": None}, "friction_kind"),
    ("unknown friction kind", {"type": "friction", "friction_kind": "lag"}, "friction_kind"),
    ("friction kind on a conversion", {"friction_kind": "error"}, "friction_kind"),
    ("nps without value", {"type": "nps", "value": None}, "value"),
    ("nps above 10", {"type": "nps", "value": 11}, "value"),
    ("nps below 0", {"type": "nps", "value": -1}, "value"),
    ("fractional nps", {"type": "nps", "value": 7.5}, "value"),
    ("value as a string", {"value": "59.9"}, "value"),
    ("value as a boolean", {"value": True}, "value"),
    ("infinite value", {"value": float("inf")}, "value"),
    ("NaN value", {"value": float("nan")}, "value"),
    ("naive timestamp", {"occurred_at": "2026-11-24T10:00:00"}, "occurred_at"),
    ("date only", {"occurred_at": "2026-11-24"}, "occurred_at"),
    ("unix time", {"occurred_at": 1764000000}, "occurred_at"),
    ("impossible date", {"occurred_at": "2026-02-30T10:00:00Z"}, "occurred_at"),
    ("out of range offset", {"occurred_at": "0001-01-01T00:00:00+01:00"}, "occurred_at"),
    ("over 24 h ahead", {"occurred_at": "2026-11-25T10:00:01Z"}, "occurred_at"),
    ("properties not an object", {"properties": ["a"]}, "properties"),
    ("properties over 8 KiB", {"properties": {"text": "x" * 8200}}, "properties"),
    ("properties too deep", {"properties": _nested(40)}, "properties"),
    ("NUL in properties", {"properties": {"k": ["\x00"]}}, "properties"),
    ("NaN in properties", {"properties": {"k": float("nan")}}, "properties"),
    ("lone surrogate in properties", {"properties": {"k": "\udc00"}}, "properties"),
    ("NUL in a property key", {"properties": {"a\x00": 1}}, "properties"),
    ("empty event id", {"event_id": ""}, "event_id"),
    ("long event id", {"event_id": "e" * 201}, "event_id"),
    ("unknown field", {"ocurred_at": "2026-11-24T10:00:00Z"}, "ocurred_at"),
]


@pytest.mark.parametrize(("fields", "field"), [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_each_validation_rule_rejects_the_event_naming_its_field(db, fields, field):
    result = ingest_events(db, [event(event_id="ok"), event(**fields)], now=NOW)
    assert result.accepted == 1
    [rejected] = result.rejected
    assert rejected["index"] == 1
    assert [detail["field"] for detail in rejected["error"]["details"]] == [f"events[1].{field}"]
    assert rejected["error"]["message"].startswith(f"events[1].{field}: ")
    assert [row.event_id for row in stored(db)] == ["ok"]


@pytest.mark.parametrize("item", ["purchase", 3, None, ["unit"]])
def test_an_item_that_is_not_an_object_is_rejected_at_its_index(db, item):
    result = ingest_events(db, [item], now=NOW)
    assert result.accepted == 0
    assert result.rejected[0]["error"]["details"][0]["field"] == "events[0]"


def test_an_empty_batch_stores_nothing(db):
    assert ingest_events(db, [], now=NOW).accepted == 0
    assert stored(db) == []


def test_concurrent_overlapping_resends_store_each_event_once(postgres_database_url, tmp_path):
    app = make_test_app(postgres_database_url, tmp_path)
    ids = [f"e-{index:04d}" for index in range(600)]
    batches = []
    for thread in range(8):
        rng = random.Random(thread)
        # Overlapping, shuffled batches: every id is sent by several threads in random order.
        chosen = rng.sample(ids, 400)
        batches.append([chosen[start:start + 100] for start in range(0, 400, 100)])
    sent = [event_id for thread_batches in batches for batch in thread_batches
            for event_id in batch]
    barrier = threading.Barrier(8)
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def worker(thread_batches: list[list[str]]) -> None:
        barrier.wait()
        try:
            for batch in thread_batches:
                with get_db(app).sessionmaker() as session:
                    result = ingest_events(session, [event(event_id=e) for e in batch])
                    results.append((result.accepted, result.duplicates))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with get_db(app).sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == len(set(sent))
        assert session.scalar(select(func.count(func.distinct(Event.event_id)))) == len(set(sent))
    assert sum(accepted for accepted, _ in results) == len(set(sent))
    assert sum(accepted + duplicates for accepted, duplicates in results) == len(sent)
    get_db(app).engine.dispose()


def test_a_future_now_moves_the_24h_horizon(db):
    later = NOW + timedelta(days=2)
    result = ingest_events(db, [event(occurred_at="2026-11-25T12:00:00Z")], now=later)
    assert result.accepted == 1
