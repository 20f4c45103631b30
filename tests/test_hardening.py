"""Security headers, request ids, secret-free logs and per-key rate limits."""

from __future__ import annotations

import json
import logging

import pytest
from flask import Response

from experiments.observability import JsonFormatter, redact
from tests.conftest import make_test_app


def test_every_response_carries_security_headers(client):
    for path in ("/healthz", "/api/v1/nope", "/docs"):
        headers = client.get(path).headers
        csp = headers["Content-Security-Policy"]
        script_src = csp.split("script-src")[1].split(";")[0]
        assert script_src.strip() == "'self'"
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"


def test_a_view_that_sets_a_security_header_keeps_its_own(database_url, tmp_path):
    app = make_test_app(database_url, tmp_path)

    @app.get("/embeddable")
    def embeddable() -> Response:
        return Response("ok", headers={"x-frame-options": "SAMEORIGIN"})

    headers = app.test_client().get("/embeddable").headers
    assert headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_api_calls_open_no_cookie_session(client):
    response = client.get("/healthz")
    assert "Set-Cookie" not in response.headers and "Cookie" not in response.vary


def test_request_id_is_echoed_or_generated(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers[
        "X-Request-ID"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id <x>"}).headers[
        "X-Request-ID"]
    assert len(generated) == 32 and generated != "bad id <x>"


@pytest.mark.parametrize("secret", [
    "Bearer sk_abcdefghijklmnop", "whsec_c2VjcmV0c2VjcmV0", "pk_0123456789abcdef",
])
def test_logs_never_contain_secrets(secret):
    assert secret not in redact(f"calling with {secret} now")
    record = logging.LogRecord("parcours", logging.INFO, __file__, 1, "key %s", (secret,), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "INFO" and secret not in line["message"]
    assert "[redacted]" in line["message"]


def test_request_logs_are_json_with_the_request_id(app, client, caplog):
    @app.get("/boom")
    def boom():
        raise RuntimeError("kaput with Bearer sk_supersecretvalue")

    with caplog.at_level(logging.ERROR):
        response = client.get("/boom", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
    record = next(r for r in caplog.records if "unhandled error" in r.getMessage())
    with app.test_request_context("/boom", headers={"X-Request-ID": "req-42"}):
        from flask import g
        g.request_id = "req-42"
        line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-42" and line["path"] == "/boom"
    assert "sk_supersecretvalue" not in line["exception"]


def test_rate_limit_is_per_key_and_answers_429_with_retry_after(database_url, tmp_path,
                                                                 client_key, admin_key):
    app = make_test_app(database_url, tmp_path, RATE_LIMIT_ASSIGN="3/minute",
                        RATE_LIMIT_INGEST="2/minute")
    client = app.test_client()
    first = {"Authorization": f"Bearer {client_key}"}
    second = {"Authorization": f"Bearer {admin_key}"}
    body = {"unit_id": "u1"}
    statuses = [client.post("/api/v1/assign", json=body, headers=first).status_code
                for _ in range(4)]
    assert 429 not in statuses[:3] and statuses[3] == 429
    limited = client.post("/api/v1/assign", json=body, headers=first)
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert client.post("/api/v1/assign", json=body, headers=second).status_code != 429
    events = [client.post("/api/v1/events", json={"events": []}, headers=first).status_code
              for _ in range(3)]
    assert events[2] == 429 and 429 not in events[:2]
    # The document says which routes may answer it: the client routes, no admin one.
    paths = client.get("/openapi.json").get_json()["paths"]
    limited_routes = sorted(f"{method.upper()} {path}" for path, operations in paths.items()
                            for method, operation in operations.items()
                            if "429" in operation["responses"])
    assert limited_routes == [
        "POST /api/v1/assign", "POST /api/v1/events", "POST /api/v1/exposures",
        "POST /api/v1/identify", "POST /ofrep/v1/evaluate/flags",
        "POST /ofrep/v1/evaluate/flags/{key}"]


def test_a_rate_limit_store_that_is_down_admits_requests(database_url, tmp_path, client_key,
                                                          caplog):
    """Nothing listens on port 1: the limit fails open (logged), never a 500."""
    app = make_test_app(database_url, tmp_path, RATE_LIMIT_ASSIGN="1/minute",
                        RATE_LIMIT_INGEST="1/minute",
                        RATE_LIMIT_STORAGE="redis://127.0.0.1:1/0")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {client_key}"}
    assign = [client.post("/api/v1/assign", json={"unit_id": "u1"}, headers=headers).status_code
              for _ in range(3)]
    events = [client.post("/api/v1/events", json={"events": [
        {"unit_id": "u1", "type": "step", "step": "cart"}]}, headers=headers) for _ in range(2)]
    assert assign == [200, 200, 200]
    assert [response.get_json()["accepted"] for response in events] == [1, 1]
    assert "rate-limit storage unavailable" in caplog.text
