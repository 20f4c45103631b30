"""POST /api/v1/events (SPEC §5): envelope errors store nothing, acks after commit, dedupe."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import Event
from experiments.services.accounts import create_api_key

URL = "/api/v1/events"


def events(count: int, prefix: str = "e") -> list[dict[str, Any]]:
    return [{"event_id": f"{prefix}-{index}", "unit_id": f"visitor-{index % 3}",
             "type": "step", "step": "cart"} for index in range(count)]


def stored(db) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(Event))


def error_code(response) -> str:
    return response.get_json()["error"]["code"]


def test_a_batch_is_acknowledged_with_counts(client, client_headers, db):
    response = client.post(URL, json={"events": events(3)}, headers=client_headers)
    assert response.status_code == 200
    assert response.get_json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert stored(db) == 3


def test_a_lone_surrogate_escape_is_replaced_not_the_batch_refused(client, client_headers, db):
    """A browser writes a string cut inside an emoji as a lone surrogate escape, which is not
    Unicode: it becomes U+FFFD (as Go's encoding/json does) and the batch is stored; a
    pair, and an escaped backslash before "ud800", stay as they are."""
    raw = (b'{"events": [{"event_id": "s-1", "unit_id": "u\\ud83d", "type": "step", '
           b'"step": "cart"}, {"event_id": "s-2", "unit_id": "v", "type": "custom", '
           b'"name": "n", "properties": {"cut": "a\\udc00b", "pair": "\\ud83d\\ude00", '
           b'"text": "\\\\ud800"}}]}')
    response = client.post(URL, data=raw, content_type="application/json",
                           headers=client_headers)
    assert response.status_code == 200
    assert response.get_json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    db.expire_all()
    rows = {row.event_id: row for row in db.scalars(select(Event))}
    assert rows["s-1"].unit_id == "u\ufffd"
    assert rows["s-2"].properties == {"cut": "a\ufffdb", "pair": "\U0001F600",
                                      "text": "\\ud800"}
    unterminated = client.post(URL, data=b'{"events": [{"unit_id": "\\ud800',
                               content_type="application/json", headers=client_headers)
    assert unterminated.status_code == 400 and error_code(unterminated) == "invalid_json"


def test_rejections_speak_of_characters_and_objects(client, client_headers, db):
    """The reasons say what a client must change, in its terms (pydantic's own said "at
    least 1 item after validation" of an empty id and "a valid dictionary or instance of
    EventIn" of a number in the list)."""
    batch = [{"unit_id": "", "type": "step", "step": "s" * 65}, 7,
             {"unit_id": "u", "type": "custom", "name": "n" * 201}]
    body = client.post(URL, json={"events": batch}, headers=client_headers).get_json()
    assert [detail for item in body["rejected"] for detail in item["error"]["details"]] == [
        {"field": "events[0].unit_id", "message": "must not be empty"},
        {"field": "events[0].step", "message": "must have at most 64 characters (got 65)"},
        {"field": "events[1]", "message": "must be an object"},
        {"field": "events[2].name", "message": "must have at most 200 characters (got 201)"}]
    assert stored(db) == 0


def test_admin_keys_may_send_events_too(client, admin_headers, db):
    response = client.post(URL, json={"events": events(1)}, headers=admin_headers)
    assert response.status_code == 200 and stored(db) == 1


def test_resending_the_same_batch_three_times_reports_duplicates(client, client_headers, db):
    batch = {"events": events(4)}
    bodies = [client.post(URL, json=batch, headers=client_headers).get_json() for _ in range(3)]
    assert [(b["accepted"], b["duplicates"]) for b in bodies] == [(4, 0), (0, 4), (0, 4)]
    assert stored(db) == 4


def test_three_bad_events_of_ten_are_named_and_the_seven_stored(client, client_headers, db):
    batch = events(10)
    batch[1]["type"] = "friction"                      # friction_kind missing
    batch[4]["occurred_at"] = "yesterday"
    batch[8] = {"unit_id": "visitor-1", "type": "nps", "value": 12}
    body = client.post(URL, json={"events": batch}, headers=client_headers).get_json()
    assert body["accepted"] == 7 and body["duplicates"] == 0
    assert [(item["index"], item["error"]["code"],
             [detail["field"] for detail in item["error"]["details"]])
            for item in body["rejected"]] == [
        (1, "validation_error", ["events[1].friction_kind"]),
        (4, "validation_error", ["events[4].occurred_at"]),
        (8, "validation_error", ["events[8].value"])]
    assert all(item["error"]["message"] for item in body["rejected"])
    assert stored(db) == 7


@pytest.mark.parametrize(("data", "content_type", "status", "code"), [
    (b'{"events": [', "application/json", 400, "invalid_json"),
    (b"\xff\xfe", "application/json", 400, "invalid_json"),
    (json.dumps({"events": []}).encode(), "text/plain", 415, "unsupported_media_type"),
    (b"{}", "application/json", 422, "validation_error"),
    (b'{"events": {"unit_id": "a"}}', "application/json", 422, "validation_error"),
    (b"[]", "application/json", 422, "validation_error"),
    (b'"events"', "application/json", 422, "validation_error"),
])
def test_a_malformed_envelope_stores_nothing(client, client_headers, db, data, content_type,
                                             status, code):
    response = client.post(URL, data=data, content_type=content_type, headers=client_headers)
    assert (response.status_code, error_code(response)) == (status, code)
    assert stored(db) == 0


@pytest.mark.parametrize("unknown", [{"sentAt": "2026-11-24T10:00:02Z"},
                                     {"sent_at": "2026-11-24T10:00:02Z", "batch": "b-1"}])
def test_an_unknown_envelope_field_is_422_naming_it_and_stores_nothing(client, client_headers,
                                                                       db, unknown):
    """A misspelt ``sentAt`` would otherwise be dropped and the batch stored uncorrected."""
    response = client.post(URL, json={"events": events(2), **unknown}, headers=client_headers)
    assert (response.status_code, error_code(response)) == (422, "validation_error")
    assert [detail["field"] for detail in response.get_json()["error"]["details"]] == [
        name for name in unknown if name != "sent_at"]
    assert stored(db) == 0


def test_more_than_1000_events_is_422_and_stores_nothing(client, client_headers, db):
    response = client.post(URL, json={"events": events(1001)}, headers=client_headers)
    assert (response.status_code, error_code(response)) == (422, "validation_error")
    assert response.get_json()["error"]["details"][0]["field"] == "events"
    assert stored(db) == 0


def test_exactly_1000_events_are_accepted(client, client_headers, db):
    response = client.post(URL, json={"events": events(1000)}, headers=client_headers)
    assert response.get_json()["accepted"] == 1000 and stored(db) == 1000


def test_a_body_over_1_mib_is_413_even_below_the_app_limit(client, client_headers, db):
    padding = "x" * 4000
    batch = [{"unit_id": "u", "type": "custom", "name": "n", "properties": {"p": padding}}
             for _ in range(300)]
    data = json.dumps({"events": batch}).encode()
    assert 1024 * 1024 < len(data) < 2 * 1024 * 1024
    response = client.post(URL, data=data, content_type="application/json",
                           headers=client_headers)
    assert (response.status_code, error_code(response)) == (413, "payload_too_large")
    assert response.get_json()["error"]["message"] == (
        "a batch is at most 1 MiB of JSON: split it into smaller batches and send each")
    assert stored(db) == 0


def test_a_beacon_over_1_mib_gets_the_same_413(app, db):
    with get_db(app).session() as session:
        key = create_api_key(session, name="beacon", role="client", principal=SYSTEM)[1]
    data = json.dumps({"events": [{"unit_id": "u", "type": "custom", "name": "n",
                                   "properties": {"p": "x" * 4000}}] * 300})
    response = app.test_client().post(f"{URL}?key={key}", data=data,
                                      content_type="text/plain;charset=UTF-8")
    assert (response.status_code, error_code(response)) == (413, "payload_too_large")
    assert "split it into smaller batches" in response.get_json()["error"]["message"]
    assert stored(db) == 0


def test_non_finite_json_numbers_are_rejected_per_event(client, client_headers, db):
    data = b'{"events": [{"unit_id": "u", "type": "custom", "name": "n", "value": NaN},' \
           b' {"unit_id": "u", "type": "custom", "name": "n", "value": 1e999}]}'
    body = client.post(URL, data=data, content_type="application/json",
                       headers=client_headers).get_json()
    assert body["accepted"] == 0
    assert [item["error"]["details"][0]["field"] for item in body["rejected"]] == [
        "events[0].value", "events[1].value"]


def test_without_a_key_nothing_is_stored(client, db):
    response = client.post(URL, json={"events": events(2)})
    assert (response.status_code, error_code(response)) == (401, "unauthorized")
    assert stored(db) == 0


def test_ingestion_counters_are_exported(client, client_headers):
    def counter(result: str) -> float:
        text = client.get("/metrics").get_data(as_text=True)
        line = f'parcours_events_ingested_total{{result="{result}"}} '
        values = [float(row[len(line):]) for row in text.splitlines() if row.startswith(line)]
        return values[0] if values else 0.0

    before = {result: counter(result) for result in ("accepted", "duplicate", "rejected")}
    batch = [*events(2), {"unit_id": "u", "type": "nope"}]
    client.post(URL, json={"events": batch}, headers=client_headers)
    client.post(URL, json={"events": batch}, headers=client_headers)
    after = {result: counter(result) for result in ("accepted", "duplicate", "rejected")}
    assert {key: after[key] - before[key] for key in after} == {
        "accepted": 2, "duplicate": 2, "rejected": 2}


def test_the_route_is_documented_in_openapi(client):
    document = client.get("/openapi.json").get_json()
    operation = document["paths"]["/api/v1/events"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EventBatch"}
    assert {"200", "400", "401", "413", "415", "422"} <= set(operation["responses"])
    events = document["components"]["schemas"]["EventBatch"]["properties"]["events"]
    assert events["maxItems"] == 1000
    assert all(field in events["description"] for field in ("unit_id", "friction_kind",
                                                            "occurred_at", "rejected"))
