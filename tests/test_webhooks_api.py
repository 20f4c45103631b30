"""Webhooks API (SPEC §7): endpoints CRUD, validation, SSRF guard, roles, audit."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import AuditEntry
from experiments.services.accounts import create_api_key
from tests.conftest import make_test_app
from webhooks.models import WebhookEndpoint

HOOK_URL = "http://127.0.0.1:9/hook"
WEBHOOK_ROUTES = [
    ("POST", "/api/v1/webhooks"), ("GET", "/api/v1/webhooks"),
    ("GET", "/api/v1/webhooks/{id}"), ("PATCH", "/api/v1/webhooks/{id}"),
    ("DELETE", "/api/v1/webhooks/{id}"), ("GET", "/api/v1/webhooks/{id}/deliveries"),
    ("POST", "/api/v1/webhooks/{id}/deliveries/1/retry"), ("POST", "/api/v1/webhooks/{id}/test"),
]


def create_endpoint(client: FlaskClient, headers: dict[str, str], url: str = HOOK_URL,
                    events: list[str] | None = None, **extra: Any) -> Any:
    """POST /api/v1/webhooks with sensible defaults."""
    body = {"url": url, "events": events or ["experiment.decided"], **extra}
    return client.post("/api/v1/webhooks", json=body, headers=headers)


def error_fields(response: Any) -> dict[str, str]:
    body = response.get_json()
    assert body["error"]["code"] == "validation_error"
    return {detail["field"]: detail["message"] for detail in body["error"]["details"]}


def audit_actions(app: Flask) -> list[str]:
    with get_db(app).sessionmaker() as session:
        return list(session.scalars(select(AuditEntry.action).where(
            AuditEntry.target_type == "webhook").order_by(AuditEntry.id)))


def endpoint_count(app: Flask) -> int:
    with get_db(app).sessionmaker() as session:
        return session.scalar(select(func.count()).select_from(WebhookEndpoint))


def test_create_shows_a_standard_webhooks_secret_once(client, admin_headers):
    response = create_endpoint(client, admin_headers, description="CRM sync",
                               events=["experiment.decided", "srm.detected"])
    assert response.status_code == 201
    body = response.get_json()
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"].removeprefix("whsec_"))) == 32
    assert body["url"] == HOOK_URL and body["description"] == "CRM sync"
    assert body["events"] == ["experiment.decided", "srm.detected"]
    assert body["enabled"] is True and body["disabled_reason"] is None
    fetched = client.get(f"/api/v1/webhooks/{body['id']}", headers=admin_headers).get_json()
    assert "secret" not in fetched and fetched["id"] == body["id"]
    listed = client.get("/api/v1/webhooks", headers=admin_headers).get_json()
    assert "secret" not in listed["items"][0]


def test_each_endpoint_gets_its_own_secret(client, admin_headers):
    first = create_endpoint(client, admin_headers).get_json()["secret"]
    second = create_endpoint(client, admin_headers).get_json()["secret"]
    assert first != second


def test_repeated_event_types_are_kept_once(client, admin_headers):
    body = create_endpoint(client, admin_headers,
                           events=["srm.detected", "webhook.test", "srm.detected"]).get_json()
    assert body["events"] == ["srm.detected", "webhook.test"]


def test_unknown_event_type_is_a_422_naming_its_index(app, client, admin_headers):
    response = create_endpoint(client, admin_headers,
                               events=["experiment.started", "experiment.exploded"])
    assert response.status_code == 422
    fields = error_fields(response)
    assert list(fields) == ["events[1]"]
    assert "experiment.exploded" in fields["events[1]"]
    assert endpoint_count(app) == 0


@pytest.mark.parametrize(("body", "field"), [
    ({"events": ["srm.detected"]}, "url"),
    ({"url": HOOK_URL, "events": []}, "events"),
    ({"url": HOOK_URL}, "events"),
    ({"url": HOOK_URL, "events": ["srm.detected"], "secret": "mine"}, "secret"),
    ({"url": HOOK_URL, "events": "srm.detected"}, "events"),
    ({"url": HOOK_URL, "events": ["srm.detected"], "description": "a\x00b"}, "description"),
    ({"url": HOOK_URL + "\x00", "events": ["srm.detected"]}, "url"),
    ({"url": "http://127.0.0.1/a b", "events": ["srm.detected"]}, "url"),
    ({"url": "http://127.0.0.1/a\nb", "events": ["srm.detected"]}, "url"),
])
def test_malformed_bodies_are_422_naming_the_field(app, client, admin_headers, body, field):
    response = client.post("/api/v1/webhooks", json=body, headers=admin_headers)
    assert response.status_code == 422
    assert field in error_fields(response)
    assert endpoint_count(app) == 0


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd",
                                 "javascript:alert(1)", "127.0.0.1/hook", "http:///nohost"])
def test_only_http_and_https_urls_are_accepted(client, admin_headers, url):
    response = create_endpoint(client, admin_headers, url=url)
    assert response.status_code == 422
    assert "url" in error_fields(response)


@pytest.fixture
def strict_app(database_url, tmp_path) -> Iterator[Flask]:
    """An app with the SSRF guard on (the test default allows private targets)."""
    strict = make_test_app(database_url, tmp_path, WEBHOOK_ALLOW_PRIVATE=False)
    yield strict
    get_db(strict).engine.dispose()


def admin_headers_for(app: Flask) -> dict[str, str]:
    """Headers with a new admin key on ``app`` (for apps built inside a test)."""
    with get_db(app).session() as session:
        key = create_api_key(session, name="other admin", role="admin", principal=SYSTEM)[1]
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def strict_headers(strict_app) -> dict[str, str]:
    return admin_headers_for(strict_app)


@pytest.mark.parametrize(("url", "kind"), [
    ("http://127.0.0.1/x", "loopback"), ("http://10.0.0.1/x", "private"),
    ("https://192.168.1.20:8443/x", "private"), ("http://169.254.169.254/latest", "link-local"),
    ("http://[::1]/x", "loopback"), ("http://localhost:5000/x", "loopback"),
    ("http://224.0.0.1/x", "multicast"), ("http://0.0.0.0/x", "unspecified"),
    ("http://[::ffff:10.1.2.3]/x", "private"), ("http://240.0.0.1/x", "reserved"),
    ("http://0x7f000001/x", "loopback"), ("http://127.1:8080/x", "loopback"),
])
def test_internal_targets_are_refused_without_the_allow_flag(strict_app, strict_headers, url,
                                                             kind):
    client = strict_app.test_client()
    response = create_endpoint(client, strict_headers, url=url)
    assert response.status_code == 422
    message = error_fields(response)["url"]
    assert kind in message and "PARCOURS_WEBHOOK_ALLOW_PRIVATE" in message
    assert endpoint_count(strict_app) == 0


def test_public_ip_literals_are_accepted_with_the_guard_on(strict_app, strict_headers):
    response = create_endpoint(strict_app.test_client(), strict_headers,
                               url="https://93.184.216.34/hook")
    assert response.status_code == 201


def test_patching_to_an_internal_url_is_refused_and_changes_nothing(strict_app, strict_headers):
    client = strict_app.test_client()
    created = create_endpoint(client, strict_headers, url="https://93.184.216.34/hook").get_json()
    response = client.patch(f"/api/v1/webhooks/{created['id']}", headers=strict_headers,
                            json={"url": "http://10.0.0.1/x", "description": "moved"})
    assert response.status_code == 422 and "private" in error_fields(response)["url"]
    after = client.get(f"/api/v1/webhooks/{created['id']}", headers=strict_headers).get_json()
    assert after["url"] == "https://93.184.216.34/hook" and after["description"] == ""


def test_patch_changes_url_events_and_description(app, client, admin_headers):
    created = create_endpoint(client, admin_headers).get_json()
    response = client.patch(f"/api/v1/webhooks/{created['id']}", headers=admin_headers,
                            json={"url": "https://hooks.example.com/p", "description": "new",
                                  "events": ["analysis.completed"]})
    assert response.status_code == 200
    body = response.get_json()
    assert (body["url"], body["description"], body["events"]) == (
        "https://hooks.example.com/p", "new", ["analysis.completed"])
    assert audit_actions(app) == ["webhook.create", "webhook.update"]


def test_patch_refuses_unknown_events_and_fields(client, admin_headers):
    created = create_endpoint(client, admin_headers).get_json()
    bad_event = client.patch(f"/api/v1/webhooks/{created['id']}", headers=admin_headers,
                             json={"events": ["nope"]})
    assert bad_event.status_code == 422 and "events[0]" in error_fields(bad_event)
    bad_field = client.patch(f"/api/v1/webhooks/{created['id']}", headers=admin_headers,
                             json={"secret": "whsec_x"})
    assert bad_field.status_code == 422 and "secret" in error_fields(bad_field)


def test_disable_and_enable_are_visible_and_audited(app, client, admin_headers):
    created = create_endpoint(client, admin_headers).get_json()
    path = f"/api/v1/webhooks/{created['id']}"
    disabled = client.patch(path, headers=admin_headers, json={"enabled": False}).get_json()
    assert disabled["enabled"] is False
    assert disabled["disabled_reason"] == "disabled by api_key:test admin"
    enabled = client.patch(path, headers=admin_headers, json={"enabled": True}).get_json()
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None
    assert audit_actions(app) == ["webhook.create", "webhook.disable", "webhook.enable"]


def test_delete_removes_the_endpoint_and_is_audited(app, client, admin_headers):
    created = create_endpoint(client, admin_headers).get_json()
    path = f"/api/v1/webhooks/{created['id']}"
    assert client.delete(path, headers=admin_headers).status_code == 204
    assert client.get(path, headers=admin_headers).status_code == 404
    assert client.delete(path, headers=admin_headers).status_code == 404
    assert audit_actions(app) == ["webhook.create", "webhook.delete"]


def test_list_is_paginated_in_creation_order(client, admin_headers):
    ids = [create_endpoint(client, admin_headers).get_json()["id"] for _ in range(3)]
    page = client.get("/api/v1/webhooks?limit=2", headers=admin_headers).get_json()
    assert [item["id"] for item in page["items"]] == ids[:2]
    rest = client.get(f"/api/v1/webhooks?limit=2&cursor={page['next_cursor']}",
                      headers=admin_headers).get_json()
    assert [item["id"] for item in rest["items"]] == ids[2:] and rest["next_cursor"] is None


@pytest.mark.parametrize("path", ["/api/v1/webhooks/999", "/api/v1/webhooks/999/deliveries"])
def test_unknown_endpoint_is_404(client, admin_headers, path):
    response = client.get(path, headers=admin_headers)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_a_delivery_of_another_endpoint_is_404_on_retry(app, client, admin_headers):
    from experiments import signals

    first = create_endpoint(client, admin_headers, events=["srm.detected"]).get_json()
    second = create_endpoint(client, admin_headers, events=["srm.detected"]).get_json()
    with get_db(app).session() as session:
        signals.emit(signals.srm_detected, session, {"experiment": "x"})
    deliveries = client.get(f"/api/v1/webhooks/{first['id']}/deliveries",
                            headers=admin_headers).get_json()["items"]
    response = client.post(
        f"/api/v1/webhooks/{second['id']}/deliveries/{deliveries[0]['id']}/retry",
        headers=admin_headers)
    assert response.status_code == 404


@pytest.mark.parametrize(("method", "path"), WEBHOOK_ROUTES)
def test_client_keys_are_forbidden_on_every_webhook_route(client, admin_headers, client_headers,
                                                          method, path):
    endpoint_id = create_endpoint(client, admin_headers).get_json()["id"]
    url = path.format(id=endpoint_id)
    response = client.open(url, method=method, json={"url": HOOK_URL, "events": ["srm.detected"]},
                           headers=client_headers)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"
    assert client.open(url, method=method, json={}).status_code == 401


def test_openapi_documents_every_webhook_route(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    documented = {(method.upper(), path) for path, operations in paths.items()
                  for method in operations if path.startswith("/api/v1/webhooks")}
    expected = {(method, path.replace("{id}", "{endpoint_id}").replace("/1/", "/{delivery_id}/"))
                for method, path in WEBHOOK_ROUTES}
    assert documented == expected
