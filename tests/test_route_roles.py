"""Walk every API route with each kind of caller: client keys never reach admin routes."""

from __future__ import annotations

import re

import pytest

# The only routes a public (client) key may call: assignment, events, identity links, OFREP,
# calculators.
CLIENT_ROUTES = {
    ("/api/v1/assign", "POST"), ("/api/v1/exposures", "POST"), ("/api/v1/events", "POST"),
    ("/api/v1/identify", "POST"),
    ("/api/v1/stats/analyze", "POST"), ("/api/v1/stats/power", "POST"),
    ("/api/v1/stats/bandit", "POST"),
    ("/ofrep/v1/evaluate/flags", "POST"), ("/ofrep/v1/evaluate/flags/<key>", "POST"),
}


def api_routes(app) -> list[tuple[str, str]]:
    return sorted(
        (rule.rule, method) for rule in app.url_map.iter_rules()
        if rule.rule.startswith(("/api/v1", "/ofrep/v1"))
        for method in rule.methods - {"HEAD", "OPTIONS"}
    )


def concrete(rule: str) -> str:
    return re.sub(r"<(?:int:)?(\w+)>", lambda m: "1" if "int:" in m.group(0) else "x", rule)


def call(client, rule, method, headers):
    return client.open(concrete(rule), method=method, json={}, headers=headers)


def test_the_route_table_is_not_empty(app):
    assert ("/api/v1/experiments", "POST") in api_routes(app)


def test_without_a_key_every_api_route_is_401(app, client):
    for rule, method in api_routes(app):
        response = call(client, rule, method, {})
        assert response.status_code == 401, (rule, method)
        assert response.get_json()["error"]["code"] == "unauthorized"


def test_client_keys_reach_only_client_routes(app, client, client_headers):
    for rule, method in api_routes(app):
        status = call(client, rule, method, client_headers).status_code
        if (rule, method) in CLIENT_ROUTES:
            assert status not in (401, 403), (rule, method)
        else:
            assert status == 403, (rule, method, status)


@pytest.mark.parametrize("role", ["admin"])
def test_admin_keys_are_never_refused(app, client, admin_headers, role):
    for rule, method in api_routes(app):
        response = call(client, rule, method, admin_headers)
        assert response.status_code not in (401, 403, 500), (rule, method)
