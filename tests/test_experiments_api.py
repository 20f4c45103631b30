"""Experiments API (SPEC §3): validation paths, lifecycle, running-state rules, audit."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from experiments.models import AuditEntry, Experiment
from tests.factories import experiment_payload


def create(client: FlaskClient, headers: dict[str, str], **overrides: Any) -> Any:
    return client.post("/api/v1/experiments", json=experiment_payload(**overrides),
                       headers=headers)


def detail_fields(response: Any) -> set[str]:
    body = response.get_json()
    assert body["error"]["code"] == "validation_error"
    return {detail["field"] for detail in body["error"]["details"]}


def counts(db: Session) -> tuple[int, int]:
    db.expire_all()
    return (db.scalar(select(func.count()).select_from(Experiment)),
            db.scalar(select(func.count()).select_from(AuditEntry)))


def test_create_returns_the_experiment_as_a_draft(client, admin_headers):
    response = create(client, admin_headers)
    assert response.status_code == 201
    body = response.get_json()
    assert body["key"] == "checkout-redesign"
    assert body["status"] == "draft"
    assert body["started_at"] is None and body["decision"] is None
    assert [v["key"] for v in body["variants"]] == ["control", "one-page"]
    assert body["metrics"][2]["direction"] == "decrease"
    assert body["analysis"]["method"] == "sequential"
    assert body["created_at"].endswith(("Z", "+00:00"))


def test_get_and_list_with_status_filter_and_cursor(client, admin_headers):
    for index in range(5):
        create(client, admin_headers, key=f"exp-{index}")
    client.post("/api/v1/experiments/exp-3/start", headers=admin_headers)
    one = client.get("/api/v1/experiments/exp-2", headers=admin_headers).get_json()
    assert one["key"] == "exp-2"
    page = client.get("/api/v1/experiments?limit=2", headers=admin_headers).get_json()
    assert [item["key"] for item in page["items"]] == ["exp-0", "exp-1"]
    page2 = client.get(f"/api/v1/experiments?limit=2&cursor={page['next_cursor']}",
                       headers=admin_headers).get_json()
    assert [item["key"] for item in page2["items"]] == ["exp-2", "exp-3"]
    last = client.get(f"/api/v1/experiments?limit=2&cursor={page2['next_cursor']}",
                      headers=admin_headers).get_json()
    assert [item["key"] for item in last["items"]] == ["exp-4"] and last["next_cursor"] is None
    running = client.get("/api/v1/experiments?status=running", headers=admin_headers).get_json()
    assert [item["key"] for item in running["items"]] == ["exp-3"]


@pytest.mark.parametrize(("limit", "status"), [("0", 422), ("501", 422), ("abc", 422),
                                               ("500", 200)])
def test_list_limit_is_capped(client, admin_headers, limit, status):
    response = client.get(f"/api/v1/experiments?limit={limit}", headers=admin_headers)
    assert response.status_code == status


def test_a_foreign_cursor_is_a_validation_error(client, admin_headers):
    response = client.get("/api/v1/experiments?cursor=garbage!", headers=admin_headers)
    assert response.status_code == 422
    assert detail_fields(response) == {"cursor"}


def _variants(*weights_and_controls: tuple[float, bool]) -> list[dict[str, Any]]:
    return [{"key": f"v{index}", "weight": weight, "is_control": control}
            for index, (weight, control) in enumerate(weights_and_controls)]


INVALID = [
    ("negative weight", {"variants": _variants((0.5, True), (-0.1, False))},
     "variants[1].weight"),
    ("weights sum to zero", {"variants": _variants((0, True), (0, False))}, "variants"),
    ("no control", {"variants": _variants((0.5, False), (0.5, False))}, "variants"),
    ("two controls", {"variants": _variants((0.5, True), (0.5, True))}, "variants"),
    ("one variant", {"variants": _variants((1, True))}, "variants"),
    ("eleven variants", {"variants": _variants((1, True), *[(1, False)] * 10)}, "variants"),
    ("duplicate variant key", {"variants": [{"key": "a", "weight": 1, "is_control": True},
                                            {"key": "a", "weight": 1}]}, "variants[1].key"),
    ("bad variant key", {"variants": [{"key": "A B", "weight": 1, "is_control": True},
                                      {"key": "b", "weight": 1}]}, "variants[0].key"),
    ("no primary metric", {"metrics": [{"key": "m", "kind": "conversion", "event": "e",
                                        "role": "secondary"}]}, "metrics"),
    ("two primary metrics", {"metrics": [
        {"key": "m1", "kind": "conversion", "event": "e", "role": "primary"},
        {"key": "m2", "kind": "conversion", "event": "e", "role": "primary"}]}, "metrics"),
    ("bad experiment key", {"key": "Checkout Redesign"}, "key"),
    ("key too long", {"key": "a" * 65}, "key"),
    ("duplicate journey step", {"journey": ["cart", "payment", "cart"]}, "journey[2]"),
    ("metric step outside journey", {"metrics": [
        {"key": "m", "kind": "conversion", "event": "e", "role": "primary"},
        {"key": "f", "kind": "friction", "step": "shipping", "role": "guardrail"}]},
     "metrics[1].step"),
    ("traffic above one", {"traffic": 1.5}, "traffic"),
    ("unknown targeting op", {"targeting": [{"attribute": "c", "op": "like", "value": 1}]},
     "targeting[0].op"),
    ("bad regex", {"targeting": [{"attribute": "c", "op": "regex", "value": "("}]},
     "targeting[0]"),
    ("override to unknown variant", {"overrides": {"u1": "nope"}}, "overrides.u1"),
    ("unknown field", {"colour": "blue"}, "colour"),
    ("conversion metric without event", {"metrics": [
        {"key": "m", "kind": "conversion", "role": "primary"}]}, "metrics[0]"),
    ("unknown friction kind", {"metrics": [
        {"key": "m", "kind": "conversion", "event": "e", "role": "primary"},
        {"key": "f", "kind": "friction", "friction_kind": "sneeze"}]},
     "metrics[1].friction_kind"),
    ("max below min days", {"analysis": {"min_days": 10, "max_days": 5}}, "analysis.max_days"),
    ("alpha out of range", {"analysis": {"alpha": 0.9}}, "analysis.alpha"),
    ("missing name", {"name": ""}, "name"),
]


@pytest.mark.parametrize(("label", "overrides", "field"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_experiment_is_422_naming_the_field_and_stores_nothing(
        client, admin_headers, db, label, overrides, field):
    before = counts(db)
    response = create(client, admin_headers, **overrides)
    assert response.status_code == 422, response.get_json()
    assert field in detail_fields(response)
    assert counts(db) == before


def test_duplicate_key_is_a_conflict(client, admin_headers, db):
    assert create(client, admin_headers).status_code == 201
    before = counts(db)
    response = create(client, admin_headers)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "conflict"
    assert counts(db) == before


@pytest.mark.parametrize(("path", "status"), [
    ("start", 200), ("pause", 200), ("resume", 200), ("pause", 200),
])
def test_lifecycle_moves_through_legal_transitions(client, admin_headers, path, status):
    create(client, admin_headers)
    expected = {"start": "running", "pause": "paused", "resume": "running"}
    for step in ("start", "pause", "resume", "pause"):
        response = client.post(f"/api/v1/experiments/checkout-redesign/{step}",
                               headers=admin_headers)
        assert response.status_code == 200
        assert response.get_json()["status"] == expected[step]


ILLEGAL = [
    ([], "pause"), ([], "resume"),
    (["start"], "start"), (["start"], "resume"),
    (["start", "pause"], "pause"), (["start", "pause"], "start"),
    (["start", "conclude"], "start"), (["start", "conclude"], "resume"),
    (["start", "conclude"], "pause"), (["start", "conclude"], "conclude"), ([], "conclude"),
]


@pytest.mark.parametrize(("history", "action"), ILLEGAL)
def test_illegal_transition_is_409_and_changes_nothing(client, admin_headers, db,
                                                      history, action):
    create(client, admin_headers)
    body = {"outcome": "no_difference", "winner": None, "learnings": ""}
    for step in history:
        client.post(f"/api/v1/experiments/checkout-redesign/{step}", headers=admin_headers,
                    json=body if step == "conclude" else None)
    status_before = client.get("/api/v1/experiments/checkout-redesign",
                               headers=admin_headers).get_json()["status"]
    before = counts(db)
    response = client.post(f"/api/v1/experiments/checkout-redesign/{action}",
                           headers=admin_headers, json=body if action == "conclude" else None)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "conflict"
    assert counts(db) == before
    assert client.get("/api/v1/experiments/checkout-redesign",
                      headers=admin_headers).get_json()["status"] == status_before


def test_conclude_records_outcome_winner_and_learnings(client, admin_headers):
    create(client, admin_headers)
    client.post("/api/v1/experiments/checkout-redesign/start", headers=admin_headers)
    response = client.post("/api/v1/experiments/checkout-redesign/conclude",
                           headers=admin_headers,
                           json={"outcome": "ship", "winner": "one-page",
                                 "learnings": "One page removes payment errors"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "concluded" and body["concluded_at"]
    assert body["decision"]["outcome"] == "ship" and body["decision"]["winner"] == "one-page"
    assert body["learnings"] == "One page removes payment errors"


@pytest.mark.parametrize(("body", "field"), [
    ({"outcome": "ship", "winner": None}, "winner"),
    ({"outcome": "ship", "winner": "nope"}, "winner"),
    ({"outcome": "rollback", "winner": "one-page"}, "winner"),
    ({"outcome": "maybe"}, "outcome"),
])
def test_invalid_conclusion_is_422(client, admin_headers, body, field):
    create(client, admin_headers)
    client.post("/api/v1/experiments/checkout-redesign/start", headers=admin_headers)
    response = client.post("/api/v1/experiments/checkout-redesign/conclude",
                           headers=admin_headers, json=body)
    assert response.status_code == 422
    assert field in detail_fields(response)
    assert client.get("/api/v1/experiments/checkout-redesign",
                      headers=admin_headers).get_json()["status"] == "running"


def test_patch_while_running_allows_weights_traffic_targeting_overrides(client, admin_headers):
    create(client, admin_headers)
    client.post("/api/v1/experiments/checkout-redesign/start", headers=admin_headers)
    variants = experiment_payload()["variants"]
    variants[0]["weight"], variants[1]["weight"] = 0.2, 0.8
    response = client.patch("/api/v1/experiments/checkout-redesign", headers=admin_headers,
                            json={"traffic": 0.4, "variants": variants, "targeting": [],
                                  "overrides": {}})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["traffic"] == 0.4 and body["targeting"] == [] and body["overrides"] == {}
    assert [v["weight"] for v in body["variants"]] == [0.2, 0.8]


@pytest.mark.parametrize("change", [
    {"variants": experiment_payload()["variants"] + [{"key": "third", "weight": 0.1}]},
    {"variants": [*experiment_payload()["variants"][:1], {"key": "other", "weight": 0.5}]},
    {"layer": "other-layer"},
    {"key": "renamed"},
])
def test_patch_while_running_refuses_structural_changes(client, admin_headers, db, change):
    create(client, admin_headers)
    client.post("/api/v1/experiments/checkout-redesign/start", headers=admin_headers)
    before = client.get("/api/v1/experiments/checkout-redesign", headers=admin_headers).get_json()
    response = client.patch("/api/v1/experiments/checkout-redesign", headers=admin_headers,
                            json=change)
    assert response.status_code == 409
    after = client.get("/api/v1/experiments/checkout-redesign", headers=admin_headers).get_json()
    assert after == before


def test_patch_in_draft_can_change_structure_and_validates_the_merge(client, admin_headers):
    create(client, admin_headers)
    response = client.patch("/api/v1/experiments/checkout-redesign", headers=admin_headers,
                            json={"layer": None, "journey": ["cart"]})
    assert response.status_code == 422  # payment-errors metric's step left the journey
    assert "metrics[2].step" in detail_fields(response)
    response = client.patch("/api/v1/experiments/checkout-redesign", headers=admin_headers,
                            json={"layer": None, "name": "Renamed"})
    assert response.status_code == 200
    assert response.get_json()["layer"] is None and response.get_json()["name"] == "Renamed"


def test_delete_only_in_draft(client, admin_headers):
    create(client, admin_headers)
    create(client, admin_headers, key="other")
    client.post("/api/v1/experiments/other/start", headers=admin_headers)
    assert client.delete("/api/v1/experiments/other", headers=admin_headers).status_code == 409
    assert client.delete("/api/v1/experiments/checkout-redesign",
                         headers=admin_headers).status_code == 204
    assert client.get("/api/v1/experiments/checkout-redesign",
                      headers=admin_headers).status_code == 404


def test_iterate_copies_configuration_into_a_linked_draft(client, admin_headers):
    create(client, admin_headers)
    client.post("/api/v1/experiments/checkout-redesign/start", headers=admin_headers)
    client.post("/api/v1/experiments/checkout-redesign/conclude", headers=admin_headers,
                json={"outcome": "ship", "winner": "one-page", "learnings": "works"})
    response = client.post("/api/v1/experiments/checkout-redesign/iterate",
                           headers=admin_headers, json={"key": "checkout-redesign-2"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["iteration_of"] == "checkout-redesign"
    assert body["status"] == "draft" and body["learnings"] == ""
    assert [v["key"] for v in body["variants"]] == ["control", "one-page"]
    taken = client.post("/api/v1/experiments/checkout-redesign/iterate", headers=admin_headers,
                        json={"key": "checkout-redesign-2"})
    assert taken.status_code == 409


def test_iteration_of_must_exist(client, admin_headers):
    response = create(client, admin_headers, iteration_of="ghost")
    assert response.status_code == 422
    assert detail_fields(response) == {"iteration_of"}


def test_audit_records_actor_action_before_and_after(client, admin_headers):
    create(client, admin_headers)
    client.patch("/api/v1/experiments/checkout-redesign", headers=admin_headers,
                 json={"traffic": 0.5})
    client.post("/api/v1/experiments/checkout-redesign/start", headers=admin_headers)
    create(client, admin_headers, key="unrelated")
    entries = client.get("/api/v1/audit?experiment=checkout-redesign",
                         headers=admin_headers).get_json()["items"]
    assert [e["action"] for e in entries] == ["experiment.start", "experiment.update",
                                              "experiment.create"]
    update = entries[1]
    assert update["actor"] == "api_key:test admin"
    assert update["before"]["traffic"] == 1.0 and update["after"]["traffic"] == 0.5
    assert entries[0]["before"]["status"] == "draft"
    assert entries[0]["after"]["status"] == "running"


def test_client_keys_are_forbidden_on_experiment_routes(client, client_headers, admin_headers):
    create(client, admin_headers)
    for method, path in [("get", "/api/v1/experiments"),
                         ("post", "/api/v1/experiments"),
                         ("get", "/api/v1/experiments/checkout-redesign"),
                         ("patch", "/api/v1/experiments/checkout-redesign"),
                         ("delete", "/api/v1/experiments/checkout-redesign"),
                         ("post", "/api/v1/experiments/checkout-redesign/start"),
                         ("get", "/api/v1/audit")]:
        response = getattr(client, method)(path, headers=client_headers, json={})
        assert response.status_code == 403, (method, path)
        assert response.get_json()["error"]["code"] == "forbidden"
    assert client.get("/api/v1/experiments/checkout-redesign",
                      headers=admin_headers).get_json()["status"] == "draft"


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc"])
def test_missing_or_unknown_key_is_401(client, header):
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/experiments", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("field", ["name", "variants", "metrics", "journey", "analysis",
                                   "traffic", "key"])
def test_patch_refuses_explicit_null_for_required_fields(client, admin_headers, field):
    create(client, admin_headers)
    client.post("/api/v1/experiments/checkout-redesign/start", headers=admin_headers)
    response = client.patch("/api/v1/experiments/checkout-redesign", headers=admin_headers,
                            json={field: None})
    assert response.status_code == 422
    assert field in detail_fields(response)


@pytest.mark.parametrize(("field", "value"), [("traffic", "0.5"), ("is_control", 1)])
def test_json_types_are_strict(client, admin_headers, field, value):
    payload = experiment_payload()
    if field == "is_control":
        payload["variants"][0]["is_control"] = value
        expected = "variants[0].is_control"
    else:
        payload[field] = value
        expected = field
    response = client.post("/api/v1/experiments", json=payload, headers=admin_headers)
    assert response.status_code == 422
    assert expected in detail_fields(response)


def test_huge_numeric_ids_are_404_not_a_driver_error(client, admin_headers):
    response = client.get("/api/v1/webhooks/18446744073709551616", headers=admin_headers)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_huge_ids_are_404_for_every_method(client, admin_headers, method):
    response = getattr(client, method)("/api/v1/webhooks/38256696056",
                                       headers=admin_headers, json={})
    assert response.status_code == 404


def _shipped(client, headers, outcome="ship", winner="one-page"):
    create(client, headers)
    client.post("/api/v1/experiments/checkout-redesign/start", headers=headers)
    assert client.post("/api/v1/experiments/checkout-redesign/conclude", headers=headers,
                       json={"outcome": outcome, "winner": winner,
                             "learnings": "x"}).status_code == 200


def test_iterate_from_the_shipped_winner_gives_the_control_its_payload(client, admin_headers):
    _shipped(client, admin_headers)
    response = client.post("/api/v1/experiments/checkout-redesign/iterate",
                           headers=admin_headers,
                           json={"key": "checkout-redesign-2", "from_winner": True})
    assert response.status_code == 201
    variants = {v["key"]: v for v in response.get_json()["variants"]}
    assert variants["control"]["payload"] == {"layout": "single"}
    assert variants["control"]["is_control"] is True
    assert variants["one-page"]["payload"] == {"layout": "single"}


def test_iterate_from_winner_without_a_shipped_winner_is_409(client, admin_headers):
    _shipped(client, admin_headers, outcome="no_difference", winner=None)
    response = client.post("/api/v1/experiments/checkout-redesign/iterate",
                           headers=admin_headers,
                           json={"key": "checkout-redesign-2", "from_winner": True})
    assert response.status_code == 409
    assert "no shipped winner" in response.get_json()["error"]["message"]


def test_an_iteration_without_a_name_is_not_named_like_its_parent(client, admin_headers):
    _shipped(client, admin_headers)
    first = client.post("/api/v1/experiments/checkout-redesign/iterate", headers=admin_headers,
                        json={"key": "checkout-redesign-2"}).get_json()
    assert first["name"] == "One-page checkout (iteration 2)"
    assert first["variants"][0]["payload"] == {}  # the old control unless asked
    client.post("/api/v1/experiments/checkout-redesign-2/start", headers=admin_headers)
    client.post("/api/v1/experiments/checkout-redesign-2/pause", headers=admin_headers)
    second = client.post("/api/v1/experiments/checkout-redesign-2/iterate",
                         headers=admin_headers, json={"key": "checkout-redesign-3"}).get_json()
    assert second["name"] == "One-page checkout (iteration 3)"
