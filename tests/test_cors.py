"""CORS on the client and OFREP routes only, for the configured origins only (SPEC §4, §10)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from experiments import cors
from experiments.db import get_db
from tests.conftest import auth_headers, make_test_app

ROOT = Path(__file__).resolve().parent.parent
SHOP = "https://shop.example.com"
CLIENT_ROUTES = ["/api/v1/assign", "/api/v1/exposures", "/api/v1/events", "/api/v1/identify",
                 "/ofrep/v1/evaluate/flags", "/ofrep/v1/evaluate/flags/checkout-redesign"]


@pytest.fixture
def cors_app(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    app = make_test_app(database_url, tmp_path, CORS_ORIGINS=f"{SHOP}/, https://other.example")
    yield app
    get_db(app).engine.dispose()


@pytest.fixture
def cors_client(cors_app: Flask) -> FlaskClient:
    return cors_app.test_client()


@pytest.fixture
def key_headers(cors_app: Flask) -> dict[str, str]:
    return auth_headers(cors_app, "client")


def preflight(client: FlaskClient, path: str, origin: str):
    return client.options(path, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})


def an_event(event_id: str) -> dict:
    return {"event_id": event_id, "unit_id": "visitor-1", "type": "step", "name": "cart"}


@pytest.mark.parametrize("path", CLIENT_ROUTES)
def test_preflight_from_an_allowed_origin_allows_post_with_authorization(cors_client, path):
    response = preflight(cors_client, path, SHOP)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == SHOP
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "Origin" in response.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("path", CLIENT_ROUTES)
def test_preflight_from_another_origin_gets_no_cors_headers(cors_client, path):
    response = preflight(cors_client, path, "https://evil.example")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Headers" not in response.headers


def test_allowed_origin_can_read_the_events_response(cors_client, key_headers):
    response = cors_client.post("/api/v1/events", json={"events": [an_event("cors-1")]},
                                headers={**key_headers, "Origin": SHOP})
    assert response.status_code == 200
    assert response.get_json()["accepted"] == 1
    assert response.headers["Access-Control-Allow-Origin"] == SHOP
    assert "Origin" in response.headers["Vary"]


def test_other_origin_gets_no_cors_headers_but_a_vary(cors_client, key_headers):
    response = cors_client.post("/api/v1/events", json={"events": [an_event("cors-2")]},
                                headers={**key_headers, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Origin" in response.headers["Vary"]


def test_errors_on_client_routes_are_readable_by_an_allowed_origin(cors_client):
    response = cors_client.post("/api/v1/events", json={"events": []},
                                headers={"Origin": SHOP})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert response.headers["Access-Control-Allow-Origin"] == SHOP


def test_admin_routes_never_get_cors_headers(cors_client):
    response = cors_client.get("/api/v1/experiments", headers={"Origin": SHOP})
    assert response.status_code == 401
    assert "Access-Control-Allow-Origin" not in response.headers
    assert preflight(cors_client, "/api/v1/experiments", SHOP).headers.get(
        "Access-Control-Allow-Origin") is None


def test_no_origin_is_allowed_by_default(client):
    response = preflight(client, "/api/v1/events", SHOP)
    assert "Access-Control-Allow-Origin" not in response.headers


def test_a_star_allows_any_origin(database_url, tmp_path):
    app = make_test_app(database_url, tmp_path, CORS_ORIGINS="*")
    try:
        response = preflight(app.test_client(), "/api/v1/assign", "https://anyone.example")
        assert response.status_code == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://anyone.example"
    finally:
        get_db(app).engine.dispose()


def test_a_browser_ofrep_provider_can_revalidate_the_bulk_etag(cors_client, key_headers):
    allowed = preflight(cors_client, "/ofrep/v1/evaluate/flags", SHOP)
    assert "if-none-match" in allowed.headers["Access-Control-Allow-Headers"].lower()
    response = cors_client.post("/ofrep/v1/evaluate/flags",
                                json={"context": {"targetingKey": "visitor-1"}},
                                headers={**key_headers, "Origin": SHOP})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == SHOP
    assert "ETag" in response.headers["Access-Control-Expose-Headers"]


def test_an_ofrep_flag_error_is_readable_by_an_allowed_origin(cors_client, key_headers):
    response = cors_client.post("/ofrep/v1/evaluate/flags/nope",
                                json={"context": {"targetingKey": "visitor-1"}},
                                headers={**key_headers, "Origin": SHOP})
    assert (response.status_code, response.get_json()["errorCode"]) == (404, "FLAG_NOT_FOUND")
    assert response.headers["Access-Control-Allow-Origin"] == SHOP


def test_paths_below_an_ofrep_flag_get_no_cors_headers(cors_client):
    response = preflight(cors_client, "/ofrep/v1/evaluate/flags/a/b", SHOP)
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("guide", ["docs/developers/browser-sdk.md",
                                   "docs/operators/security.md"])
def test_the_guides_name_exactly_the_routes_that_answer_cors(guide):
    """A front-end developer reads the list there: none missing, none that does not answer."""
    paragraph = next(block for block in (ROOT / guide).read_text(encoding="utf-8").split("\n\n")
                     if "answer CORS" in block)
    named = set(re.findall(r"`(/(?:api|ofrep)/v1/[^`]*)`", paragraph))
    assert named == {*cors.CLIENT_ROUTES, "/ofrep/v1/evaluate/flags/{key}"}
    assert all(cors.is_client_route(path.replace("{key}", "checkout-redesign"))
               for path in named)
    assert {path.replace("{key}", "checkout-redesign") for path in named} == set(CLIENT_ROUTES)
