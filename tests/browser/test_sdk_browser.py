"""parcours.js in Chromium against a live server, from another origin (CORS), SPEC §10."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response, request, send_from_directory
from sqlalchemy import select
from werkzeug.serving import make_server

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import Event, Exposure
from experiments.services.accounts import create_api_key
from experiments.services.demo import DEMO_KEY, seed_demo_data
from tests.conftest import make_test_app

pytestmark = pytest.mark.browser
SDK_DIR = Path(__file__).resolve().parents[2] / "experiments" / "static" / "sdk"

SHOP_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>shop</title></head><body>
<button id="buy" style="margin:40px;padding:20px 40px">Buy</button>
<div id="plain" style="margin:40px;padding:20px">Plain text that does nothing</div>
<form id="signup"><input name="email" type="email" required>
  <button id="submit" type="submit">Sign up</button></form>
<script src="{sdk}"></script>
</body></html>"""

# Flush until the queue is empty or a send failed (the SDK then backs off).
FLUSH = """async () => {
  for (let i = 0; i < 5 && p.queue.length; i++) {
    await p.flush();
    if (Date.now() < p.retryAt) break;
  }
  return p.queue.length;
}"""


class LiveServer:
    """A WSGI app on a loopback port, restartable on the same port (to simulate an outage)."""

    def __init__(self, app: Flask, port: int = 0) -> None:
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def shop() -> Iterator[LiveServer]:
    """A page on another origin (another port) that loads the SDK from the API server."""
    shop_app = Flask("shop")

    @shop_app.get("/")
    def page() -> str:
        sdk_url = request.args.get("sdk") or request.args["api"] + "/sdk/parcours.js"
        return SHOP_PAGE.replace("{sdk}", sdk_url)

    @shop_app.get("/parcours.js")
    def self_hosted_sdk() -> Response:
        return send_from_directory(SDK_DIR, "parcours.js", mimetype="text/javascript")

    server = LiveServer(shop_app)
    yield server
    server.stop()


@pytest.fixture
def api_app(database_url: str, tmp_path: Path, shop: LiveServer) -> Iterator[Flask]:
    app = make_test_app(database_url, tmp_path, CORS_ORIGINS=shop.url, DEMO=True)
    with get_db(app).session() as session:
        list(seed_demo_data(session, traffic=False))
    yield app
    get_db(app).engine.dispose()


@pytest.fixture
def api(api_app: Flask) -> Iterator[LiveServer]:
    server = LiveServer(api_app)
    yield server
    server.stop()


@pytest.fixture
def client_key(api_app: Flask) -> str:
    with get_db(api_app).session() as session:
        return create_api_key(session, name="shop", role="client", principal=SYSTEM)[1]


@pytest.fixture
def sdk(page: Any, shop: LiveServer, api: LiveServer, client_key: str) -> Callable[..., Any]:
    """Open the shop page and init the SDK; returns a function that re-opens it."""

    def open_page(unit: str = "visitor-1", **options: Any) -> Any:
        page.goto(f"{shop.url}/?api={api.url}")
        config = {"endpoint": api.url, "clientKey": client_key, "unitId": unit,
                  "autoFriction": True, **options}
        page.evaluate("cfg => { window.p = Parcours.init(cfg); }", config)
        return page

    return open_page


def events_of(app: Flask, unit: str, **where: Any) -> list[Event]:
    with get_db(app).sessionmaker() as session:
        query = select(Event).where(Event.unit_id == unit).order_by(Event.id)
        for column, value in where.items():
            query = query.where(getattr(Event, column) == value)
        return list(session.scalars(query))


def wait_for_events(app: Flask, unit: str, count: int = 1, timeout_s: float = 10.0,
                    **where: Any) -> list[Event]:
    """Poll until ``count`` matching events are stored (beacons arrive asynchronously)."""
    deadline = time.monotonic() + timeout_s
    rows = events_of(app, unit, **where)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = events_of(app, unit, **where)
    return rows


def frictions(app: Flask, unit: str, kind: str, count: int = 1) -> list[Event]:
    return wait_for_events(app, unit, count, friction_kind=kind)


def test_variant_matches_the_assign_api_and_is_exposed_once(sdk, api, api_app, client_key):
    page = sdk(unit="visitor-42")
    assign_calls = []
    page.on("request", lambda r: assign_calls.append(r.url) if r.url.endswith("/assign")
            and r.method == "POST" else None)
    got = page.evaluate(f"""async () => {{
        const [a, b] = await Promise.all([p.variant("{DEMO_KEY}"), p.variant("{DEMO_KEY}")]);
        const c = await p.variant("{DEMO_KEY}");
        return [a, b, c];
    }}""")
    expected = requests.post(f"{api.url}/api/v1/assign", timeout=10, json={
        "unit_id": "visitor-42", "experiments": [DEMO_KEY], "track": False},
        headers={"Authorization": f"Bearer {client_key}"}).json()["assignments"][0]
    assert got[0] == got[1] == got[2] == {"variant": expected["variant"],
                                          "payload": expected["payload"], "inExperiment": True}
    assert len(assign_calls) == 1
    assert page.evaluate(FLUSH) == 0

    with get_db(api_app).sessionmaker() as session:
        exposures = [(e.unit_id, e.variant_key) for e in session.scalars(select(Exposure))]
    assert exposures == [("visitor-42", expected["variant"])]


def test_unknown_experiment_gives_the_default_without_exposure(sdk):
    page = sdk()
    got = page.evaluate('() => p.variant("no-such-experiment")')
    assert got == {"variant": None, "payload": {}, "inExperiment": False}
    assert page.evaluate("() => p.queue.length") == 0


def test_step_track_and_nps_events_arrive_with_their_fields(sdk, api_app):
    page = sdk(unit="visitor-7")
    ids = page.evaluate("""() => [
        p.step("cart"),
        p.track("purchase", {value: 59.9, step: "confirmation", properties: {coupon: "X"}}),
        p.nps(9),
    ]""")
    assert page.evaluate(FLUSH) == 0
    rows = events_of(api_app, "visitor-7")
    got = {e.event_id: (e.type, e.name, e.step, e.value, e.properties) for e in rows}
    assert got == {
        ids[0]: ("step", "cart", "cart", None, {}),
        ids[1]: ("conversion", "purchase", "confirmation", 59.9, {"coupon": "X"}),
        ids[2]: ("nps", "nps", "cart", 9.0, {}),
    }


def test_three_fast_clicks_make_one_rage_click_with_the_current_step(sdk, api_app):
    page = sdk(unit="rage")
    page.evaluate('() => p.step("payment")')
    box = page.locator("#buy").bounding_box()
    x, y = box["x"] + 20, box["y"] + 10
    for dx in (0, 5, 10):
        page.mouse.click(x + dx, y)
    page.wait_for_timeout(100)
    page.evaluate(FLUSH)
    rows = frictions(api_app, "rage", "rage_click")
    assert [(e.type, e.step, e.properties["target"]) for e in rows] == [
        ("friction", "payment", "button#buy")]


def test_a_click_that_changes_nothing_is_a_dead_click(sdk, api_app):
    page = sdk(unit="dead")
    page.evaluate('() => p.step("cart")')
    page.click("#plain")
    page.wait_for_timeout(1200)
    page.evaluate(FLUSH)
    rows = frictions(api_app, "dead", "dead_click")
    assert [(e.step, e.properties["target"]) for e in rows] == [("cart", "div#plain")]


def test_uncaught_errors_and_rejections_are_error_friction(sdk, api_app):
    page = sdk(unit="oops")
    page.evaluate('() => p.step("payment")')
    page.evaluate("""() => {
        setTimeout(() => { throw new Error("boom in payment widget"); }, 0);
        Promise.reject(new Error("card API down"));
    }""")
    page.wait_for_timeout(200)
    page.evaluate(FLUSH)
    rows = frictions(api_app, "oops", "error", count=2)
    messages = sorted(e.properties["message"] for e in rows)
    assert [e.step for e in rows] == ["payment", "payment"]
    assert "boom in payment widget" in messages[0] and "card API down" in messages[1]


def test_an_error_message_clipped_inside_an_emoji_keeps_its_batch(sdk, api_app):
    """The SDK clips a message to 300 UTF-16 units, never between the two halves of an
    emoji: a lone surrogate is not Unicode, and the whole batch (the step beside it too)
    was refused for it."""
    page = sdk(unit="clipped")
    page.evaluate('() => p.step("payment")')
    page.evaluate(r"""() => {
        Promise.reject(new Error("x".repeat(299) + "\u{1F600} and the rest"));
    }""")
    page.wait_for_timeout(200)
    page.evaluate(FLUSH)
    [error] = frictions(api_app, "clipped", "error")
    assert error.properties["message"] == "x" * 299
    assert [e.step for e in events_of(api_app, "clipped", type="step")] == ["payment"]


def test_an_invalid_form_submission_is_a_form_error(sdk, api_app):
    page = sdk(unit="form")
    page.evaluate('() => p.step("checkout")')
    page.fill("input[name=email]", "not-an-email")
    page.click("#submit")
    page.wait_for_timeout(100)
    page.evaluate(FLUSH)
    rows = frictions(api_app, "form", "form_error")
    assert [(e.step, e.properties["form"], e.properties["fields"]) for e in rows] == [
        ("checkout", "signup", ["email"])]


def test_history_back_is_a_back_navigation(sdk, api_app):
    page = sdk(unit="back")
    page.evaluate('() => { p.step("cart"); history.pushState({}, "", "#checkout"); }')
    page.evaluate('() => p.step("checkout")')
    page.evaluate("() => history.back()")
    page.wait_for_timeout(200)
    page.evaluate(FLUSH)
    rows = frictions(api_app, "back", "back_navigation")
    assert [e.step for e in rows] == ["checkout"]


def test_leaving_mid_journey_beacons_an_abandonment(sdk, api_app):
    page = sdk(unit="leaver")
    page.evaluate('() => p.step("payment")')
    page.goto("about:blank")  # pagehide: sendBeacon with ?key= and a text/plain body
    rows = frictions(api_app, "leaver", "abandonment")
    assert [(e.type, e.step) for e in rows] == [("friction", "payment")]
    assert [e.name for e in events_of(api_app, "leaver", type="step")] == ["payment"]


def test_twenty_queued_events_are_sent_without_waiting_for_the_timer(sdk, api_app):
    page = sdk(unit="batch", autoFriction=False, flushIntervalMs=60000)
    page.evaluate('() => { for (let i = 0; i < 20; i++) p.track("click-" + i, {type: "custom"}); }')
    rows = wait_for_events(api_app, "batch", 20, timeout_s=5)
    assert sorted(e.name for e in rows) == sorted(f"click-{i}" for i in range(20))


def test_a_step_open_past_its_threshold_is_a_slow_step(sdk, api_app):
    page = sdk(unit="slow", autoFriction={"slowStepMs": {"payment": 300, "*": 60000}})
    page.evaluate('() => { p.step("cart"); p.step("payment"); }')
    page.wait_for_timeout(500)
    page.evaluate(FLUSH)
    rows = frictions(api_app, "slow", "slow_step")
    assert [(e.step, e.value) for e in rows] == [("payment", 300.0)]


def test_a_short_single_page_visit_is_a_bounce_and_switches_are_honoured(sdk, api_app, page):
    sdk(unit="bouncer", autoFriction={"abandonment": False})
    page.evaluate('() => p.step("landing")')
    page.goto("about:blank")
    rows = frictions(api_app, "bouncer", "bounce")
    assert [e.step for e in rows] == ["landing"]
    assert 0 < rows[0].value < 10000
    assert events_of(api_app, "bouncer", friction_kind="abandonment") == []


def test_events_survive_an_outage_and_are_stored_exactly_once(page, shop, api_app, client_key):
    # A real outage: the API server is stopped (page.route cannot stop beacons), and the shop
    # hosts the SDK itself so that its pages still load.
    api = LiveServer(api_app)
    config = {"endpoint": api.url, "clientKey": client_key, "unitId": "offline"}

    def load() -> None:
        page.goto(f"{shop.url}/?api={api.url}&sdk={shop.url}/parcours.js")
        page.evaluate("cfg => { window.p = Parcours.init(cfg); }", config)

    load()
    api.stop()
    ids = page.evaluate("""() => [p.step("cart"), p.track("purchase", {value: 10}), p.nps(7)]""")
    assert page.evaluate(FLUSH) == 3
    stored = page.evaluate("""() => Object.keys(localStorage)
        .filter(k => k.startsWith("parcours:q:"))
        .flatMap(k => JSON.parse(localStorage.getItem(k)).map(i => i.id))""")
    assert sorted(stored) == sorted(ids)
    load()  # next page load, still down: the beacon fails too
    assert page.evaluate(FLUSH) == 3
    assert events_of(api_app, "offline") == []

    api = LiveServer(api_app, port=api.port)  # back up
    try:
        load()  # the previous page's beacon and the adopted queue both send: dedupe
        assert page.evaluate(FLUSH) == 0
        load()  # a later load has nothing left to send
        assert page.evaluate("() => p.queue.length") == 0
        time.sleep(0.3)  # let the last beacon land before counting
        rows = events_of(api_app, "offline")
    finally:
        api.stop()
    assert sorted(e.event_id for e in rows) == sorted(ids)
    assert {(e.type, e.name) for e in rows} == {
        ("step", "cart"), ("conversion", "purchase"), ("nps", "nps")}


def unit_in(api: LiveServer, key: str, variant: str, *, prefix: str = "demo-visitor") -> str:
    """A unit id ``{prefix}-{i}`` the assignment API puts in ``variant`` (assignment is
    deterministic); with ``prefix="customer"``, a customer id the hash alone puts there."""
    for i in range(100):
        unit = f"{prefix}-{i}"
        answer = requests.post(f"{api.url}/api/v1/assign", timeout=10, json={
            "unit_id": unit, "experiments": [DEMO_KEY], "track": False},
            headers={"Authorization": f"Bearer {key}"}).json()
        if answer["assignments"][0]["variant"] == variant:
            return unit
    raise AssertionError(f"no unit lands in {variant}")


@pytest.mark.parametrize("variant", ["control", "one-page"])
def test_demo_journey_can_be_clicked_through_to_a_purchase(page, api, api_app, client_key,
                                                           variant):
    unit = unit_in(api, client_key, variant)
    page.add_init_script(f"localStorage.setItem('parcours:unit', '{unit}')")
    page.goto(f"{api.url}/demo/journey")
    page.wait_for_selector("body[data-variant]", state="attached")
    assert page.inner_text("#unit") == unit
    assert page.evaluate("document.body.dataset.variant") == variant
    page.click("[data-go=cart]")
    page.click("[data-step=cart] [data-go=checkout]")
    if variant == "one-page":
        form = page.locator("#one-page-form")
        form.locator("input[name=name]").fill("Ana")
        form.locator("input[name=street]").fill("1 rue de la Paix")
        form.locator("input[name=card]").fill("4242 4242 4242 4242")
        form.locator("input[name=expiry]").fill("12/29")
        form.locator("input[name=cvc]").fill("123")
        form.locator("button[type=submit]").click()
    else:
        form = page.locator("#address-form")
        for name, value in (("name", "Ana"), ("street", "1 rue"), ("postcode", "75001"),
                            ("city", "Paris")):
            form.locator(f"input[name={name}]").fill(value)
        form.locator("button[type=submit]").click()
        pay = page.locator("#payment-form")
        pay.locator("input[name=card]").fill("4242424242424242")
        pay.locator("input[name=expiry]").fill("12/2029")
        pay.locator("input[name=cvc]").fill("123")
        pay.locator("button[type=submit]").click()  # the fiddly widget throws without a name
        pay.locator("input[name=holder]").fill("Ana")
        pay.locator("button[type=submit]").click()
    page.click("#nps button >> text=10")
    page.wait_for_selector("#nps-thanks", state="visible")
    page.evaluate("() => new Promise(r => setTimeout(r, 2500))")  # the 2 s flush timer
    wait_for_events(api_app, unit, type="nps")
    rows = events_of(api_app, unit)
    steps = {e.step for e in rows if e.type == "step"}
    assert {"landing", "cart", "checkout", "payment", "confirmation"} <= steps
    assert [(e.name, e.value) for e in rows if e.type == "conversion"] == [("purchase", 59.9)]
    assert [e.value for e in rows if e.type == "nps"] == [10.0]
    errors = [e.step for e in rows if e.friction_kind == "error"]
    assert errors == (["payment"] if variant == "control" else [])
