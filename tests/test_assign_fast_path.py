"""The assignment fast path (api.assign.AssignFastPath): Flask's answers, without Flask.

Every request is sent twice: to the app (fast path first) and to the Flask app behind
it. The answers must match header for header, and a spy on the Flask side shows which
requests the fast path served itself and which it handed over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import Client, TestResponse

from experiments.api import assign as assign_api
from experiments.api.assign import AssignFastPath
from experiments.db import get_db
from experiments.observability import REQUESTS, JsonFormatter
from tests.conftest import auth_headers, make_test_app
from tests.factories import experiment_payload

SHOP = "https://shop.example.com"
GENERATED = "X-Request-ID"  # a fresh id on each side unless the caller sent one


class FlaskSpy:
    """The Flask app behind the fast path, counting the requests handed to it."""

    def __init__(self, fast_path: AssignFastPath) -> None:
        self.flask = fast_path.wsgi_app
        self.calls = 0
        fast_path.wsgi_app = self

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        return self.flask(environ, start_response)


@pytest.fixture
def fast_app(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    app = make_test_app(database_url, tmp_path, CORS_ORIGINS=SHOP,
                        RATE_LIMIT_ASSIGN="12/minute")
    admin = auth_headers(app)
    client = app.test_client()
    for key in ("checkout-redesign", "payment-wallets"):
        assert client.post("/api/v1/experiments", headers=admin, json=experiment_payload(
            key=key, layer=None)).status_code == 201
        assert client.post(f"/api/v1/experiments/{key}/start", headers=admin).status_code == 200
    yield app
    get_db(app).engine.dispose()


@pytest.fixture
def spy(fast_app: Flask) -> FlaskSpy:
    assert isinstance(fast_app.wsgi_app, AssignFastPath)
    return FlaskSpy(fast_app.wsgi_app)


@pytest.fixture
def key(fast_app: Flask) -> str:
    return auth_headers(fast_app, "client")["Authorization"]


def post(wsgi: Any, body: Any = None, *, key: str | None = None, raw: bytes | None = None,
         content_type: str = "application/json", **headers: str) -> TestResponse:
    data = raw if raw is not None else json.dumps(body).encode()
    sent = {"Content-Type": content_type, **headers}
    if key is not None:
        sent["Authorization"] = key
    return Client(wsgi, use_cookies=False).post("/api/v1/assign", data=data, headers=sent)


def comparable(response: TestResponse, *, keep_request_id: bool) -> dict[str, Any]:
    headers = sorted((name, value) for name, value in response.headers.items()
                     if keep_request_id or name != GENERATED)
    return {"status": response.status_code, "headers": headers, "body": response.get_json()}


ORDINARY = [
    pytest.param({"unit_id": "u-1", "attributes": {"country": "FR"}}, {}, id="new unit"),
    pytest.param({"unit_id": "u-1", "attributes": {"country": "FR"}}, {}, id="returning unit"),
    pytest.param({"unit_id": "u-2", "attributes": {"country": "US"}}, {}, id="excluded"),
    pytest.param({"unit_id": "u-3", "track": False}, {}, id="track false"),
    pytest.param({"unit_id": "u-4", "experiments": ["payment-wallets", "nope"]}, {},
                 id="named experiments"),
    pytest.param({"unit_id": "u-5"}, {"Origin": SHOP}, id="allowed origin"),
    pytest.param({"unit_id": "u-6"}, {"Origin": "https://evil.example"}, id="other origin"),
    pytest.param({"unit_id": "u-7"}, {"X-Request-ID": "req-42"}, id="caller's request id"),
]


@pytest.mark.parametrize(("body", "headers"), ORDINARY)
def test_ordinary_requests_are_served_without_flask_and_answered_as_flask_would(
        fast_app, spy, key, body, headers):
    fast = post(fast_app, body, key=key, **headers)
    assert spy.calls == 0
    slow = post(spy.flask, body, key=key, **headers)
    keep = "X-Request-ID" in headers
    assert comparable(fast, keep_request_id=keep) == comparable(slow, keep_request_id=keep)
    assert fast.status_code == 200 and len(fast.headers[GENERATED]) >= 6
    if keep:
        assert fast.headers[GENERATED] == "req-42"


HANDED_OVER = [
    pytest.param({"key": None, "raw": b'{"unit_id": "u"}'}, 401, id="no key"),
    pytest.param({"key": "Bearer pk_unknownunknown", "raw": b'{"unit_id": "u"}'}, 401,
                 id="unknown key"),
    pytest.param({"raw": b'{"unit_id": "u"', "content_type": "application/json"}, 400,
                 id="malformed JSON"),
    pytest.param({"raw": b'{"unit_id": 7}'}, 422, id="invalid body"),
    pytest.param({"raw": b'{"unit_id": "u"}', "content_type": "text/plain"}, 415,
                 id="not JSON"),
    pytest.param({"raw": b'{"unit_id": "u"}', "content_type": "application/json; charset=utf-8"},
                 200, id="JSON with a charset"),
    pytest.param({"raw": b'{"unit_id": "u"}', "Cookie": "session=x"}, 200, id="a cookie"),
    pytest.param({"raw": b'{"unit_id": "' + b"u" * (2 * 1024 * 1024) + b'"}'}, 413,
                 id="over the size limit"),
]


@pytest.mark.parametrize(("request_args", "status"), HANDED_OVER)
def test_other_requests_are_handed_to_flask_which_answers_them(fast_app, spy, key,
                                                               request_args, status):
    arguments = {"key": key, **request_args}  # the valid key unless the case says otherwise
    response = post(fast_app, **arguments)
    assert spy.calls == 1
    assert response.status_code == status
    if status != 200:
        assert response.get_json()["error"]["code"]
        assert comparable(response, keep_request_id=False) == comparable(
            post(spy.flask, **arguments), keep_request_id=False)


def test_a_failing_service_hands_the_request_to_flask_which_assigns_it_again(
        fast_app, spy, key, monkeypatch, caplog):
    real = assign_api.assigned
    calls: list[str] = []

    def fails_once(session: Any, body: Any) -> Any:
        calls.append(body.unit_id)
        if len(calls) == 1:
            raise RuntimeError("injected: the database went away")
        return real(session, body)

    monkeypatch.setattr(assign_api, "assigned", fails_once)
    with caplog.at_level(logging.WARNING, logger="experiments.api.assign"):
        response = post(fast_app, {"unit_id": "u-9"}, key=key)
    assert response.status_code == 200 and response.get_json()["unit_id"] == "u-9"
    assert calls == ["u-9", "u-9"] and spy.calls == 1
    assert "handing the request to Flask" in caplog.text


def test_a_thread_keeps_its_session_and_leaves_it_clean_after_using_the_database(
        fast_app, spy, key):
    fast_path = fast_app.wsgi_app
    pool = get_db(fast_app).engine.pool
    fast_app.extensions["parcours.api_keys"].clear()  # the key is looked up in the database
    assert post(fast_app, {"unit_id": "s-1"}, key=key).status_code == 200
    session = fast_path._threads.session
    assert not session.in_transaction() and not session.identity_map
    assert pool.checkedout() == 0  # the lookup's connection went back to the pool
    assert post(fast_app, {"unit_id": "s-2"}, key=key).status_code == 200
    assert fast_path._threads.session is session and spy.calls == 0


def test_rate_limits_count_each_request_once_on_either_path(fast_app, spy, key):
    invalid = [post(fast_app, {"unit_id": 7}, key=key).status_code for _ in range(5)]
    assert invalid == [422] * 5 and spy.calls == 5  # counted by Flask only
    statuses = [post(fast_app, {"unit_id": f"u-{index}"}, key=key).status_code
                for index in range(7)]
    assert statuses == [200] * 7 and spy.calls == 5  # 5 + 7 = the limit of 12
    refused = post(fast_app, {"unit_id": "one-too-many"}, key=key)
    assert refused.status_code == 429 and spy.calls == 6  # the fast path's hit was refused
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.get_json()["error"]["code"] == "rate_limited"


def test_fast_answers_are_counted_in_the_request_metrics(fast_app, spy, key):
    counter = REQUESTS.labels("POST", "/api/v1/assign", "200")
    before = counter._value.get()
    for index in range(3):
        assert post(fast_app, {"unit_id": f"m-{index}"}, key=key).status_code == 200
    assert counter._value.get() - before == 3 and spy.calls == 0


def test_log_lines_written_during_a_fast_answer_carry_its_request_id(fast_app, spy, key,
                                                                     monkeypatch):
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(JsonFormatter().format(record))  # type: ignore
    logger = logging.getLogger("experiments.services.assignment")
    logger.addHandler(handler)
    real = assign_api.assigned

    def logs(session: Any, body: Any) -> Any:
        logger.warning("regex condition timed out")
        return real(session, body)

    monkeypatch.setattr(assign_api, "assigned", logs)
    try:
        response = post(fast_app, {"unit_id": "l-1"}, key=key, **{"X-Request-ID": "trace-7"})
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 200 and spy.calls == 0
    entry = json.loads(lines[0])
    assert (entry["request_id"], entry["method"], entry["path"]) == (
        "trace-7", "POST", "/api/v1/assign")


def test_every_app_wide_request_hook_is_one_the_fast_path_stands_in_for(fast_app):
    """A new app-wide hook would not run for fast answers: decide, then update this list
    and AssignFastPath (the admin-only CSRF check never applies to this route)."""
    def names(functions: dict[Any, list[Any]]) -> list[str]:
        return [function.__name__ for function in functions.get(None, [])]

    assert names(fast_app.before_request_funcs) == [
        "_start_request", "_preflight", "_rate_limit", "refuse_nul_in_url", "csrf_protect"]
    assert names(fast_app.after_request_funcs) == [
        "_observe", "_secure_headers", "_add_cors_headers"]
    assert names(fast_app.teardown_request_funcs) == []
    assert [function.__name__ for function in fast_app.teardown_appcontext_funcs] == [
        "_close_request_session"]
