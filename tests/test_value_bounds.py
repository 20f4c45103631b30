"""Value bounds (SPEC §5) and an aggregation that cannot overflow (issue #17 item 6)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from experiments.models import Event
from experiments.services.analysis import analyze_experiment
from tests.test_aggregation import T0, event, expose, hours, make_experiment

URL = "/api/v1/events"


def one(index: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"b-{index}", "unit_id": "visitor-1", "type": "conversion",
            "name": "purchase", **fields}


def rejected_fields(response: Any) -> dict[int, list[str]]:
    return {item["index"]: [d["field"] for d in item["error"]["details"]]
            for item in response.get_json()["rejected"]}


def stored_values(db: Any) -> list[float | None]:
    db.expire_all()
    return sorted(db.scalars(select(Event.value)), key=lambda v: (v is None, v))


@pytest.mark.parametrize("value", [1e308, -1e308, 1e12 + 1, -2e12, 10 ** 400])
def test_a_value_beyond_1e12_is_rejected_naming_its_field(client, client_headers, db, value):
    body = json.dumps({"events": [one(0, value=59.9), one(1, value=value)]})
    response = client.post(URL, data=body, content_type="application/json",
                           headers=client_headers)
    assert response.status_code == 200
    assert response.get_json()["accepted"] == 1
    assert rejected_fields(response) == {1: ["events[1].value"]}
    assert stored_values(db) == [59.9]


def test_values_at_the_bounds_are_accepted(client, client_headers, db):
    batch = [one(0, value=1e12), one(1, value=-1e12)]
    response = client.post(URL, json={"events": batch}, headers=client_headers)
    assert response.get_json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert stored_values(db) == [-1e12, 1e12]


@pytest.mark.parametrize("occurred_at", ["1999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
                                         "2000-01-01T00:30:00+01:00"])
def test_an_event_before_2000_is_rejected_naming_occurred_at(client, client_headers, db,
                                                              occurred_at):
    batch = [one(0), one(1, occurred_at=occurred_at)]
    response = client.post(URL, json={"events": batch}, headers=client_headers)
    assert response.get_json()["accepted"] == 1
    assert rejected_fields(response) == {1: ["events[1].occurred_at"]}
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(Event)) == 1


def test_an_event_at_the_start_of_2000_is_accepted(client, client_headers, db):
    batch = [one(0, occurred_at="2000-01-01T00:00:00Z")]
    response = client.post(URL, json={"events": batch}, headers=client_headers)
    assert response.get_json()["accepted"] == 1


ANALYZE = "/api/v1/stats/analyze"


@pytest.mark.parametrize("variants", [
    [{"key": "c", "is_control": True, "n": 1000, "sum": 1e308, "sum_squares": 1e308},
     {"key": "t", "n": 1000, "sum": 1e308, "sum_squares": 1e308}],
    [{"key": "c", "is_control": True, "n": 10 ** 30, "sum": 1e300, "sum_squares": 1e300},
     {"key": "t", "n": 1000, "sum": 5.0, "sum_squares": 50.0}],
    [{"key": "c", "is_control": True, "n": 1000, "sum": 100.0, "sum_squares": 1e300},
     {"key": "t", "n": 1000, "sum": -1e300, "sum_squares": 1e300}],
])
def test_the_calculator_answers_huge_inputs_with_422(client, client_headers, variants):
    response = client.post(ANALYZE, json={"kind": "mean", "variants": variants},
                           headers=client_headers)
    assert response.status_code == 422
    body = response.get_json()["error"]
    assert body["code"] == "validation_error"
    assert body["details"][0]["field"].startswith("variants[")


def test_the_calculator_answers_infinite_numbers_with_422(client, client_headers):
    body = ('{"kind": "mean", "variants": [{"key": "c", "is_control": true, "n": 10, '
            '"sum": Infinity, "sum_squares": 1}, {"key": "t", "n": 10, "sum": 1, '
            '"sum_squares": 1}]}')
    response = client.post(ANALYZE, data=body, content_type="application/json",
                           headers=client_headers)
    assert response.status_code in (400, 422)


def test_legacy_values_out_of_bounds_are_read_as_no_value(client, admin_headers, db):
    experiment = make_experiment(db, "poisoned")
    for unit, variant in (("c1", "control"), ("c2", "control"), ("t1", "one-page"),
                          ("t2", "one-page")):
        expose(db, experiment, unit, variant)
    event(db, "c1", "purchase", hours(1), value=10)
    event(db, "t1", "purchase", hours(1), value=30)
    for poison in (1e308, 1e308, -1e308, float("inf")):  # stored before the bounds existed
        event(db, "t2", "purchase", hours(2), value=poison)
        event(db, "t2", "session", hours(2), type="custom", value=poison)
    event(db, "c2", "purchase", T0 - timedelta(hours=1), value=1e308)  # CUPED pre-period
    db.commit()
    report = analyze_experiment(db, "poisoned", now=T0 + timedelta(days=3)).body
    revenue = next(m for m in report["metrics"] if m["key"] == "revenue")
    estimates = {v["variant"]: v["estimate"] for v in revenue["variants"]}
    assert estimates == {"control": pytest.approx(5.0), "one-page": pytest.approx(15.0)}
    ratio = next(m for m in report["metrics"] if m["key"] == "revenue-per-session")
    # poisoned events count as events without a value (1 each in a ratio): (30 + 4) / 4
    assert {v["variant"]: v["estimate"] for v in ratio["variants"]}["one-page"] == \
        pytest.approx(34.0 / 4)
    response = client.post("/api/v1/experiments/poisoned/analyze", headers=admin_headers)
    assert response.status_code == 200
    assert response.get_json()["units"] == {"control": 2, "one-page": 2}

