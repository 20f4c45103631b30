"""OFREP (SPEC §4) through the real OpenFeature SDK and OFREP provider against a live server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import requests
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from sqlalchemy import select

from experiments.models import Exposure
from tests.factories import experiment_payload
from tests.test_identity import identify, ids_with

VARIANTS = [
    {"key": "control", "weight": 0.5, "is_control": True, "payload": {}},
    {"key": "one-page", "weight": 0.5, "payload": {"value": {"layout": "single", "steps": 1}}},
]


def start(client: Any, headers: dict[str, str], key: str = "checkout-redesign",
          **overrides: Any) -> None:
    body = experiment_payload(key, layer=None, **overrides)
    assert client.post("/api/v1/experiments", json=body, headers=headers).status_code == 201
    assert client.post(f"/api/v1/experiments/{key}/start", headers=headers).status_code == 200


@pytest.fixture
def openfeature(live_server, client_key) -> Iterator[OpenFeatureClient]:
    """An OpenFeature client whose provider talks OFREP to Parcours with a client key."""
    provider = OFREPProvider(live_server.url,
                             headers_factory=lambda: {"Authorization": f"Bearer {client_key}"})
    api.set_provider(provider)
    yield api.get_client()
    api.clear_providers()


def context(unit_id: str | None, **attributes: Any) -> EvaluationContext:
    return EvaluationContext(targeting_key=unit_id, attributes={"country": "FR", **attributes})


def test_string_flag_evaluates_to_the_variant_key_and_is_an_exposure(
        client, admin_headers, openfeature, db):
    start(client, admin_headers)
    details = [openfeature.get_string_details("checkout-redesign", "fallback",
                                              context(f"visitor-{index}"))
               for index in range(20)]
    assert {d.value for d in details} == {"control", "one-page"}
    assert all(d.variant == d.value and d.reason == Reason.SPLIT for d in details)
    assert all(d.error_code is None for d in details)
    db.expire_all()
    stored = dict(db.execute(select(Exposure.unit_id, Exposure.variant_key)).all())
    assert stored == {f"visitor-{index}": d.value for index, d in enumerate(details)}


def test_object_flag_evaluates_to_the_payload_value(client, admin_headers, openfeature):
    start(client, admin_headers, variants=VARIANTS, overrides={"qa": "one-page"})
    details = openfeature.get_object_details("checkout-redesign", {}, context("qa"))
    assert details.value == {"layout": "single", "steps": 1}
    assert (details.variant, details.reason) == ("one-page", Reason.TARGETING_MATCH)


def test_excluded_and_paused_units_get_default_and_disabled(client, admin_headers,
                                                            openfeature):
    start(client, admin_headers)
    excluded = openfeature.get_string_details("checkout-redesign", "x", context("u", country="US"))
    assert (excluded.value, excluded.reason) == ("control", Reason.DEFAULT)
    client.post("/api/v1/experiments/checkout-redesign/pause", headers=admin_headers)
    paused = openfeature.get_string_details("checkout-redesign", "x", context("u"))
    assert (paused.value, paused.variant, paused.reason) == ("control", "control",
                                                             Reason.DISABLED)


def test_unknown_flag_maps_to_flag_not_found(openfeature):
    details = openfeature.get_string_details("no-such-flag", "fallback", context("u"))
    assert (details.value, details.error_code, details.reason) == (
        "fallback", ErrorCode.FLAG_NOT_FOUND, Reason.ERROR)


def test_missing_targeting_key_maps_to_targeting_key_missing(client, admin_headers,
                                                             openfeature, db):
    start(client, admin_headers)
    details = openfeature.get_string_details("checkout-redesign", "fallback", context(None))
    assert (details.value, details.error_code) == ("fallback", ErrorCode.TARGETING_KEY_MISSING)
    assert db.scalar(select(Exposure.id)) is None


def test_ofrep_error_bodies(client, client_headers):
    url = "/ofrep/v1/evaluate/flags/checkout-redesign"
    missing = client.post(url, json={"context": {"country": "FR"}}, headers=client_headers)
    assert missing.status_code == 400
    assert missing.get_json()["key"] == "checkout-redesign"
    assert missing.get_json()["errorCode"] == "TARGETING_KEY_MISSING"
    assert missing.get_json()["errorDetails"]
    unknown = client.post(url, json={"context": {"targetingKey": "u"}}, headers=client_headers)
    assert unknown.status_code == 404
    assert unknown.get_json()["errorCode"] == "FLAG_NOT_FOUND"
    for body, code in [({"context": {"targetingKey": 42}}, "INVALID_CONTEXT"),
                       ({"context": "visitor"}, "INVALID_CONTEXT"),
                       ({"context": {"targetingKey": "u", "a": float("nan")}}, "INVALID_CONTEXT")]:
        response = client.post(url, json=body, headers=client_headers)
        assert (response.status_code, response.get_json()["errorCode"]) == (400, code)
    broken = client.post(url, data=b"{", content_type="application/json",
                         headers=client_headers)
    assert (broken.status_code, broken.get_json()["errorCode"]) == (400, "PARSE_ERROR")
    no_key = client.post(url, json={"context": {"targetingKey": "u"}})
    assert no_key.status_code == 401


FLAG = "/ofrep/v1/evaluate/flags/{key}"
BULK = "/ofrep/v1/evaluate/flags"


@pytest.mark.parametrize(("path", "data", "status", "code"), [
    (FLAG, b'{"context": "x"}', 400, "INVALID_CONTEXT"),
    (FLAG, b'{"context": {"targetingKey": "u", "a": NaN}}', 400, "INVALID_CONTEXT"),
    (FLAG + "?q=%00", b'{"context": {"targetingKey": "u"}}', 400, "INVALID_CONTEXT"),
    (FLAG, b'{"context": {}}', 400, "TARGETING_KEY_MISSING"),
    (FLAG, b'{"context": ', 400, "PARSE_ERROR"),
    (FLAG, b'{"context": {"targetingKey": "u"}}', 404, "FLAG_NOT_FOUND"),
    (FLAG.replace("{key}", "a%00b"), b'{"context": {"targetingKey": "u"}}', 404,
     "FLAG_NOT_FOUND"),
    (BULK, b'{"context": "x"}', 400, "INVALID_CONTEXT"),
    (BULK, b"{}", 400, "TARGETING_KEY_MISSING"),
    (BULK, b"[", 400, "PARSE_ERROR"),
])
def test_ofrep_errors_are_what_the_openapi_document_declares(client, client_headers, path,
                                                             data, status, code):
    """An OFREP provider (or a client generated from /openapi.json) reads the OFREP error
    body of the declared status, never the 422 envelope of the other routes."""
    document = client.get("/openapi.json").get_json()
    operation = document["paths"][BULK if path == BULK else FLAG]["post"]
    response = client.post(path.replace("{key}", "nope"), data=data,
                           content_type="application/json", headers=client_headers)
    assert (response.status_code, response.get_json()["errorCode"]) == (status, code)
    declared = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    schema = {**declared, "components": document["components"]}
    assert jsonschema_rs.validator_for(schema).is_valid(response.get_json())
    assert "422" not in operation["responses"]
    codes = document["components"]["schemas"][declared["$ref"].rsplit("/", 1)[1]][
        "properties"]["errorCode"]
    assert code in codes.get("enum", [codes.get("const")])


def test_the_ofrep_400s_list_exactly_the_codes_they_carry(client):
    document = client.get("/openapi.json").get_json()
    for path in (FLAG, BULK):
        declared = document["paths"][path]["post"]["responses"]["400"]
        name = declared["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert set(document["components"]["schemas"][name]["properties"]["errorCode"][
            "enum"]) == {"PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT"}
        assert "Malformed JSON" not in declared["description"]


def test_bulk_evaluation_lists_running_flags_with_an_etag(client, admin_headers,
                                                          client_headers):
    start(client, admin_headers, "a", variants=VARIANTS)
    start(client, admin_headers, "b")
    client.post("/api/v1/experiments", json=experiment_payload("draft"), headers=admin_headers)
    body = {"context": {"targetingKey": "visitor-7", "country": "FR"}}
    first = client.post("/ofrep/v1/evaluate/flags", json=body, headers=client_headers)
    assert first.status_code == 200
    flags = first.get_json()["flags"]
    assert [flag["key"] for flag in flags] == ["a", "b"]
    assert all(flag["reason"] == "SPLIT" and flag["metadata"] == {} for flag in flags)
    etag = first.headers["ETag"]
    again = client.post("/ofrep/v1/evaluate/flags", json=body,
                        headers={**client_headers, "If-None-Match": etag})
    assert (again.status_code, again.data, again.headers["ETag"]) == (304, b"", etag)
    client.post("/api/v1/experiments/b/pause", headers=admin_headers)
    changed = client.post("/ofrep/v1/evaluate/flags", json=body,
                          headers={**client_headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert [flag["key"] for flag in changed.get_json()["flags"]] == ["a"]


def test_bulk_evaluation_without_targeting_key_is_400(client, client_headers):
    response = client.post("/ofrep/v1/evaluate/flags", json={}, headers=client_headers)
    assert response.status_code == 400
    assert response.get_json() == {
        "errorCode": "TARGETING_KEY_MISSING",
        "errorDetails": "context.targetingKey is required: it is the unit being assigned"}


def test_bulk_evaluation_over_http_with_keep_alive(live_server, client, admin_headers,
                                                   client_key):
    start(client, admin_headers)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {client_key}"
    url = f"{live_server.url}/ofrep/v1/evaluate/flags"
    first = session.post(url, json={"context": {"targetingKey": "u1", "country": "FR"}})
    second = session.post(url, json={"context": {"targetingKey": "u1", "country": "FR"}},
                          headers={"If-None-Match": first.headers["ETag"]})
    assert first.status_code == 200 and second.status_code == 304
    assert first.json()["flags"][0]["key"] == "checkout-redesign"


def test_a_customer_keeps_its_variant_on_every_device_through_user_id(
        client, admin_headers, client_headers, openfeature, db):
    """SPEC §14 through OpenFeature: ``user_id`` in the evaluation context, as ``/assign``
    takes it. A laptop whose own id hashes to the other variant gets the phone's."""
    start(client, admin_headers)
    phone = openfeature.get_string_details("checkout-redesign", "x", context("phone-1"))
    other = "one-page" if phone.value == "control" else "control"
    [customer] = ids_with(client, client_headers, "customer", other)
    [laptop] = ids_with(client, client_headers, "laptop", other)
    assert identify(client, client_headers,
                    {"anonymous_id": "phone-1", "user_id": customer}).status_code == 200
    details = openfeature.get_string_details("checkout-redesign", "x",
                                             context(laptop, user_id=customer))
    assert (details.value, details.reason) == (phone.value, Reason.SPLIT)
    db.expire_all()
    assert dict(db.execute(select(Exposure.unit_id, Exposure.variant_key)).all()) == {
        "phone-1": phone.value}


def test_a_user_id_that_is_not_an_id_is_invalid_context(client, admin_headers, openfeature):
    start(client, admin_headers)
    details = openfeature.get_string_details("checkout-redesign", "fallback",
                                             context("phone-1", user_id=["c-1"]))
    assert (details.value, details.error_code) == ("fallback", ErrorCode.INVALID_CONTEXT)
