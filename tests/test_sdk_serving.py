"""Serving the browser SDK and the demo page, and the beacon transport of events."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import ApiKey, Event
from experiments.services.accounts import create_api_key, revoke_api_key
from experiments.services.demo import seed_demo_data
from tests.conftest import make_test_app

ROOT = Path(__file__).resolve().parent.parent
SDK_DIR = ROOT / "experiments" / "static" / "sdk"
GZIP_BUDGET_BYTES = 8 * 1024


def load_build_script():
    spec = importlib.util.spec_from_file_location("build_sdk", ROOT / "scripts" / "build_sdk.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def demo_app(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    app = make_test_app(database_url, tmp_path, DEMO=True)
    yield app
    get_db(app).engine.dispose()


def test_sdk_is_served_cacheable_and_loadable_from_any_origin(client):
    response = client.get("/sdk/parcours.js")
    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.cache_control.public and response.cache_control.max_age == 300
    assert response.headers["ETag"]
    assert b"Parcours" in response.data and b"sendBeacon" in response.data


def test_sdk_revalidation_with_the_etag_returns_304(client):
    etag = client.get("/sdk/parcours.js").headers["ETag"]
    response = client.get("/sdk/parcours.js", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.data == b""


def test_served_sdk_is_the_minified_build_of_the_source():
    build = load_build_script()
    source = (SDK_DIR / "parcours.js").read_text(encoding="utf-8")
    assert (SDK_DIR / "parcours.min.js").read_text(encoding="utf-8") == build.minify(source), \
        "run python scripts/build_sdk.py"


def test_minified_sdk_stays_under_8_kb_gzipped():
    minified = (SDK_DIR / "parcours.min.js").read_bytes()
    assert len(gzip.compress(minified, compresslevel=9)) < GZIP_BUDGET_BYTES


def test_demo_page_is_not_found_unless_demo_mode(client):
    response = client.get("/demo/journey")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_demo_page_embeds_a_reused_client_key_and_no_inline_script(demo_app):
    client = demo_app.test_client()
    first = client.get("/demo/journey")
    second = client.get("/demo/journey")
    assert first.status_code == 200
    html = first.get_data(as_text=True)
    key = re.search(r'data-client-key="(pk_[^"]+)"', html).group(1)
    assert key in second.get_data(as_text=True)
    assert 'data-experiment="checkout-redesign"' in html
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    assert "script-src 'self'" in first.headers["Content-Security-Policy"]
    admin_only = client.get("/api/v1/experiments", headers={"Authorization": f"Bearer {key}"})
    assert admin_only.status_code == 403


def test_demo_key_is_replaced_when_revoked(demo_app):
    client = demo_app.test_client()
    html = client.get("/demo/journey").get_data(as_text=True)
    old = re.search(r'data-client-key="(pk_[^"]+)"', html).group(1)
    with get_db(demo_app).session() as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.name == "demo journey page"))
        revoke_api_key(session, key_id, SYSTEM)
    demo_app.extensions["parcours.api_keys"].clear()
    html = client.get("/demo/journey").get_data(as_text=True)
    assert re.search(r'data-client-key="(pk_[^"]+)"', html).group(1) != old


def test_demo_page_works_with_the_seeded_experiment(demo_app):
    with get_db(demo_app).session() as session:
        list(seed_demo_data(session, traffic=False))
    response = demo_app.test_client().get("/demo/journey")
    assert response.status_code == 200
    assert 'data-journey="landing,cart,checkout,payment,confirmation"' in response.get_data(
        as_text=True)


def _client_key(app: Flask, role: str = "client") -> str:
    with get_db(app).session() as session:
        return create_api_key(session, name=f"beacon {role}", role=role, principal=SYSTEM)[1]


def test_beacon_with_client_key_in_query_stores_events_once(app, db):
    key = _client_key(app)
    body = json.dumps({"events": [{"event_id": "beacon-1", "unit_id": "visitor-9",
                                   "type": "friction", "friction_kind": "abandonment",
                                   "name": "abandonment", "step": "payment"}]})
    client = app.test_client()
    first = client.post(f"/api/v1/events?key={key}", data=body,
                        content_type="text/plain;charset=UTF-8")
    again = client.post(f"/api/v1/events?key={key}", data=body,
                        content_type="text/plain;charset=UTF-8")
    assert first.get_json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert again.get_json()["duplicates"] == 1
    rows = db.scalars(select(Event).where(Event.event_id == "beacon-1")).all()
    assert [(r.friction_kind, r.step, r.unit_id) for r in rows] == [
        ("abandonment", "payment", "visitor-9")]


def test_a_beacon_with_sent_at_is_corrected_and_one_with_an_unknown_field_refused(app, db):
    key = _client_key(app)
    event = {"event_id": "beacon-2", "unit_id": "visitor-9", "type": "step", "step": "cart",
             "occurred_at": "1970-01-01T00:00:00Z"}
    client = app.test_client()
    refused = client.post(f"/api/v1/events?key={key}", content_type="text/plain;charset=UTF-8",
                          data=json.dumps({"events": [event], "sentAt": "1970-01-01T00:00:01Z"}))
    assert refused.status_code == 422
    assert [d["field"] for d in refused.get_json()["error"]["details"]] == ["sentAt"]
    taken = client.post(f"/api/v1/events?key={key}", content_type="text/plain;charset=UTF-8",
                        data=json.dumps({"events": [event], "sent_at": "1970-01-01T00:00:01Z"}))
    assert taken.get_json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    row = db.scalar(select(Event).where(Event.event_id == "beacon-2"))
    assert row.occurred_at == row.received_at - timedelta(seconds=1)


def test_beacon_refuses_admin_keys_in_the_url(app):
    key = _client_key(app, role="admin")
    response = app.test_client().post(f"/api/v1/events?key={key}", data='{"events": []}',
                                      content_type="text/plain")
    assert response.status_code == 401
    assert response.get_json()["error"]["message"].endswith(
        "only a client key (pk_…) is read from ?key=, and only on POST /api/v1/events: an "
        "admin key never travels in a URL")
    assert key not in response.get_data(as_text=True)


def test_key_in_query_is_ignored_outside_the_events_route(app):
    key = _client_key(app)
    response = app.test_client().get(f"/api/v1/experiments?key={key}")
    assert response.status_code == 401  # not 403: the key was not read from the URL


def test_text_plain_without_a_query_key_is_still_refused(app, client_headers):
    response = app.test_client().post("/api/v1/events", data='{"events": []}',
                                      content_type="text/plain", headers=client_headers)
    assert response.status_code == 415
