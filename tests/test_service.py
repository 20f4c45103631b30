"""Service-wide behaviour: health, metrics, OpenAPI, docs and the error envelope."""

from __future__ import annotations

import re

import pytest

from tests.factories import experiment_payload


def assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    return error


def test_healthz_reports_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}


def test_healthz_is_503_when_the_database_is_unreachable(tmp_path):
    from tests.conftest import make_test_app

    app = make_test_app("postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": "unreachable"}


def test_metrics_exposes_request_counters(client):
    client.get("/healthz")
    body = client.get("/metrics").get_data(as_text=True)
    assert 'parcours_http_requests_total{endpoint="/healthz",method="GET",status="200"}' in body
    assert "parcours_http_request_duration_seconds_bucket" in body


def test_openapi_describes_every_api_route(app, client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    api_rules = {
        (rule.rule, method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(("/api/v1", "/ofrep/v1"))
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {
        (path.replace("{", "<").replace("}", ">"), method)
        for path, operations in document["paths"].items() for method in operations
    }
    normalised = {(re.sub(r"<\w+:", "<", rule), method) for rule, method in api_rules}
    assert normalised <= documented
    create = document["paths"]["/api/v1/experiments"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ExperimentFields")
    assert {"201", "401", "403", "409", "422"} <= set(create["responses"])
    assert "ErrorEnvelope" in document["components"]["schemas"]


def test_docs_page_loads_only_local_assets(client):
    html = client.get("/docs").get_data(as_text=True)
    assert "swagger-ui-bundle.js" in html
    assert "http://" not in html and "https://" not in html
    assert client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200


def test_unknown_route_is_404_envelope(client):
    assert_envelope(client.get("/api/v1/nope"), 404, "not_found")


def test_wrong_method_is_405_envelope(client, admin_headers):
    response = client.put("/api/v1/experiments", headers=admin_headers)
    assert_envelope(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b'{"key": '])
def test_malformed_json_is_400(client, admin_headers, body):
    response = client.post("/api/v1/experiments", data=body, headers=admin_headers,
                           content_type="application/json")
    assert_envelope(response, 400, "invalid_json")


def test_non_json_body_is_415(client, admin_headers):
    response = client.post("/api/v1/experiments", data="key=x", headers=admin_headers,
                           content_type="application/x-www-form-urlencoded")
    assert_envelope(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"3", b"null"])
def test_non_object_json_is_422(client, admin_headers, body):
    response = client.post("/api/v1/experiments", data=body, headers=admin_headers,
                           content_type="application/json")
    assert_envelope(response, 422, "validation_error")


def test_oversized_body_is_413(client, admin_headers):
    payload = experiment_payload(hypothesis="x" * (3 * 1024 * 1024))
    response = client.post("/api/v1/experiments", json=payload, headers=admin_headers)
    assert_envelope(response, 413, "payload_too_large")
    assert response.get_json()["error"]["message"] == (
        "the request body is over the 2 MiB limit of this route")


def test_deeply_nested_json_is_a_client_error(client, client_headers, admin_headers):
    body = b"[" * 100_000 + b"]" * 100_000
    for path, headers in (("/api/v1/events", client_headers),
                          ("/api/v1/experiments", admin_headers)):
        response = client.post(path, data=body, headers=headers,
                               content_type="application/json")
        assert response.status_code in (400, 413, 422), path
        assert response.get_json()["error"]["code"] in (
            "invalid_json", "payload_too_large", "validation_error")
