"""Input edges (SPEC §2): NUL characters, charsets, weights and degenerate calculator input
are 4xx naming the field, never a 500, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import auth_headers
from tests.factories import experiment_payload
from tests.write_routes import (
    WRITE_ROUTES,
    NulSpot,
    WriteRoute,
    holdout_body,
    nul_cases,
    with_nul,
)


def prepare(client: FlaskClient, admin: dict[str, str], needs: str | None) -> None:
    """Create what the route acts on: a draft or running experiment, a webhook or a holdout."""
    if needs in ("draft", "running"):
        created = client.post("/api/v1/experiments", json=experiment_payload(), headers=admin)
        assert created.status_code == 201, created.get_json()
    if needs == "running":
        started = client.post("/api/v1/experiments/checkout-redesign/start", headers=admin)
        assert started.status_code == 200
    if needs == "webhook":
        hook = client.post("/api/v1/webhooks", headers=admin, json={
            "url": "http://127.0.0.1:9/hook", "events": ["experiment.decided"]})
        assert hook.status_code == 201, hook.get_json()
    if needs == "holdout":
        created = client.post("/api/v1/holdouts", json=holdout_body(), headers=admin)
        assert created.status_code == 201, created.get_json()


def send(app: Flask, route: WriteRoute, body: dict[str, Any]) -> Any:
    client = app.test_client()
    admin = auth_headers(app, "admin")
    prepare(client, admin, route.needs)
    headers = admin if route.role == "admin" else auth_headers(app, "client")
    return client.open(route.url, method=route.method, json=body, headers=headers)


@pytest.mark.parametrize("route", WRITE_ROUTES, ids=lambda route: route.name)
def test_each_write_route_accepts_its_body_without_nul(app, route):
    response = send(app, route, route.body())
    assert response.status_code in (200, 201), response.get_json()
    if route.refused == 200:
        assert response.get_json()["rejected"] == []


@pytest.mark.parametrize(("route", "spot"), nul_cases(),
                         ids=[f"{r.name}:{s.field}:{'.'.join(map(str, s.path))}"
                              for r, s in nul_cases()])
def test_a_nul_character_anywhere_is_refused_naming_the_field(app, route: WriteRoute,
                                                              spot: NulSpot):
    response = send(app, route, with_nul(route.body(), spot.path))
    assert response.status_code == route.refused, response.get_data(as_text=True)
    named = route.fields_of(response.get_json())
    assert any(name.startswith(spot.field) for name in named), named


def test_a_nul_in_a_path_key_is_404_and_in_a_query_parameter_422(client, admin_headers):
    missing = client.get("/api/v1/experiments/checkout%00redesign", headers=admin_headers)
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "not_found"
    query = client.get("/api/v1/experiments?cursor=a%00b", headers=admin_headers)
    assert query.status_code == 422
    assert [d["field"] for d in query.get_json()["error"]["details"]] == ["cursor"]
    audit = client.get("/api/v1/audit?experiment=x%00", headers=admin_headers)
    assert audit.status_code == 422


def test_accounts_refuse_nul_and_login_finds_no_one(app, db):
    from experiments.auth import SYSTEM
    from experiments.errors import ValidationFailed
    from experiments.services import accounts

    with pytest.raises(ValidationFailed) as user_error:
        accounts.create_user(db, email="ana\x00@example.com", password="long enough",
                             role="admin", principal=SYSTEM)
    assert user_error.value.details[0]["field"] == "email"
    with pytest.raises(ValidationFailed) as key_error:
        accounts.create_api_key(db, name="web\x00", role="client", principal=SYSTEM)
    assert key_error.value.details[0]["field"] == "name"
    assert accounts.authenticate_user(db, "ana\x00@example.com", "long enough") is None


LATIN_1 = "application/json; charset=latin-1"
CHARSET_ROUTES = [
    ("/api/v1/experiments", "admin"), ("/api/v1/assign", "client"),
    ("/api/v1/exposures", "client"), ("/api/v1/events", "client"),
    ("/api/v1/webhooks", "admin"), ("/api/v1/stats/power", "client"),
    ("/ofrep/v1/evaluate/flags/checkout-redesign", "client"),
    ("/ofrep/v1/evaluate/flags", "client"),
]


@pytest.mark.parametrize(("url", "role"), CHARSET_ROUTES)
def test_a_json_body_in_another_charset_is_415(app, url, role):
    client = app.test_client()
    body = '{"unit_id": "café", "context": {"targetingKey": "café"}}'.encode("latin-1")
    response = client.post(url, data=body, headers={
        **auth_headers(app, role), "Content-Type": LATIN_1})
    assert response.status_code == 415, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "unsupported_media_type"


def test_assign_in_utf8_with_a_charset_still_works(app):
    response = app.test_client().post(
        "/api/v1/assign", data='{"unit_id": "café"}'.encode(),
        headers={**auth_headers(app, "client"), "Content-Type": "application/json; charset=UTF-8"})
    assert response.status_code == 200
    assert response.get_json()["unit_id"] == "café"


def test_a_beacon_keeps_its_charset(app):
    key = auth_headers(app, "client")["Authorization"].split()[1]
    client = app.test_client()
    batch = '{"events": [{"unit_id": "v", "type": "step", "step": "café"}]}'
    refused = client.post(f"/api/v1/events?key={key}", data=batch.encode("latin-1"),
                          headers={"Content-Type": "text/plain;charset=ISO-8859-1"})
    assert refused.status_code == 415
    accepted = client.post(f"/api/v1/events?key={key}", data=batch.encode(),
                           headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert accepted.status_code == 200 and accepted.get_json()["accepted"] == 1


def variants(*weights: float) -> list[dict[str, Any]]:
    return [{"key": f"v{index}", "weight": weight, "is_control": index == 0}
            for index, weight in enumerate(weights)]


@pytest.mark.parametrize(("weights", "field"), [
    ((0.1, 0.2), "variants"), ((0.5, 0.5000011), "variants"), ((1.5, -0.5), "variants[0].weight"),
    ((50, 50), "variants[0].weight"), ((0.0, 0.0), "variants"),
])
def test_weights_must_sum_to_one_and_are_never_normalised(client, admin_headers, weights, field):
    response = client.post("/api/v1/experiments", headers=admin_headers,
                           json=experiment_payload(variants=variants(*weights), overrides={}))
    assert response.status_code == 422
    assert field in [d["field"] for d in response.get_json()["error"]["details"]]


def test_weights_summing_to_one_within_1e6_are_kept_as_sent(client, admin_headers):
    response = client.post("/api/v1/experiments", headers=admin_headers, json=experiment_payload(
        variants=variants(0.1, 0.2, 0.7000005), overrides={}))
    assert response.status_code == 201, response.get_json()
    assert [v["weight"] for v in response.get_json()["variants"]] == [0.1, 0.2, 0.7000005]


@pytest.mark.parametrize(("body", "field"), [
    ({"baseline": 0.1, "mde": 1e-9}, "mde"),
    ({"baseline": 0.1, "mde": 0.05, "power": 0.9999999999}, "power"),
    ({"baseline": 0.1, "mde": 0.05, "power": 1.0}, "power"),
    ({"baseline": 0.0, "mde": 0.05}, "baseline"),
    ({"baseline": 1.0, "mde": 0.05}, "baseline"),
    ({"baseline": 0.1, "mde": 0.05, "alpha": 1e-300}, "alpha"),
    ({"baseline": 0.1, "mde": 0.05, "daily_units": 1e-300}, "daily_units"),
    ({"baseline": 0.1, "mde": 0.05, "variants": 1000}, "variants"),
    ({"kind": "mean", "baseline": 10, "baseline_sd": 1e-300, "mde": 0.05}, "mde"),
    ({"kind": "mean", "baseline": 10, "baseline_sd": 1e300, "mde": 0.05}, "mde"),
    ({"kind": "count", "baseline": 1e-300, "mde": 0.05}, "mde"),
])
def test_degenerate_power_inputs_are_422_naming_the_field(client, client_headers, body, field):
    response = client.post("/api/v1/stats/power", json=body, headers=client_headers)
    assert response.status_code == 422, response.get_json()
    assert [d["field"] for d in response.get_json()["error"]["details"]] == [field]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_webhook_with_a_bad_url_and_a_bad_event_names_both(client, admin_headers, method):
    url = "/api/v1/webhooks"
    if method == "PATCH":
        created = client.post(url, headers=admin_headers, json={
            "url": "http://127.0.0.1:9/hook", "events": ["experiment.decided"]})
        url = f"{url}/{created.get_json()['id']}"
    response = client.open(url, method=method, headers=admin_headers,
                           json={"url": "ftp://example.com/hook", "events": ["no.such.event"]})
    assert response.status_code == 422
    fields = sorted(d["field"] for d in response.get_json()["error"]["details"])
    assert fields == ["events[0]", "url"]
