"""parcours.js with a wrong clock and bad arguments, in Chromium (SPEC §5, §10).

The page clock is moved 90 s behind and ahead of the server with Playwright's clock
API; every event of the demo journey, the first step included, must count in the
report. Then one test per SDK edge: ``sent_at`` on every request, ``nps(11)``, a
non-numeric value, events rejected inside a 200, no bounce or abandonment after a
conversion.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from experiments.db import get_db, utcnow
from experiments.models import Exposure
from experiments.services.analysis import analyze_experiment
from experiments.services.demo import DEMO_KEY
from tests.browser import test_sdk_browser as base
from tests.browser.test_sdk_browser import FLUSH, events_of, frictions, unit_in, wait_for_events

# The SDK tests' fixtures: a shop page on another origin, the API server, a client key.
shop, api_app, api, client_key, sdk = base.shop, base.api_app, base.api, base.client_key, base.sdk

pytestmark = pytest.mark.browser
JOURNEY = ["landing", "cart", "checkout", "payment", "confirmation"]


def warnings_of(page: Any) -> list[str]:
    """Console warnings of the page, collected from now on."""
    seen: list[str] = []
    page.on("console", lambda message: seen.append(message.text)
            if message.type == "warning" else None)
    return seen


def one_page_purchase(page: Any) -> None:
    page.click("[data-go=cart]")
    page.click("[data-step=cart] [data-go=checkout]")
    form = page.locator("#one-page-form")
    for name, value in (("name", "Ana"), ("street", "1 rue de la Paix"),
                        ("card", "4242 4242 4242 4242"), ("expiry", "12/29"), ("cvc", "123")):
        form.locator(f"input[name={name}]").fill(value)
    form.locator("button[type=submit]").click()
    page.click("#nps button >> text=10")
    page.wait_for_selector("#nps-thanks", state="visible")


@pytest.mark.parametrize("skew_s", [-90, 90])
def test_every_event_of_a_skewed_browser_counts_in_the_report(page, api, api_app: Flask,
                                                              client_key, skew_s):
    unit = unit_in(api, client_key, "one-page")
    page.clock.install(time=utcnow() + timedelta(seconds=skew_s))
    requests_sent: list[dict[str, Any]] = []
    page.on("request", lambda r: requests_sent.append(json.loads(r.post_data))
            if r.method == "POST" and ("/exposures" in r.url or "/events" in r.url) else None)
    page.add_init_script(f"localStorage.setItem('parcours:unit', '{unit}')")
    page.goto(f"{api.url}/demo/journey")
    page.wait_for_selector("body[data-variant]", state="attached")
    assert abs(page.evaluate("Date.now()") / 1000 - time.time() - skew_s) < 10
    one_page_purchase(page)
    page.evaluate("() => new Promise(r => setTimeout(r, 2500))")  # the 2 s flush timer
    wait_for_events(api_app, unit, type="nps")
    # Batches may land out of order on a loaded machine: every step, stored, first.
    assert len(wait_for_events(api_app, unit, len(JOURNEY), timeout_s=30, type="step")) \
        >= len(JOURNEY)
    assert requests_sent and all("sent_at" in body for body in requests_sent)
    with get_db(api_app).sessionmaker() as session:
        report = analyze_experiment(session, DEMO_KEY).body
    assert report["units"] == {"control": 0, "one-page": 1}
    assert {entry["step"]: entry["variants"]["one-page"]["units"]
            for entry in report["funnel"]} == dict.fromkeys(JOURNEY, 1)
    purchase = next(m for m in report["metrics"] if m["key"] == "purchase")
    assert next(v["estimate"] for v in purchase["variants"]
                if v["variant"] == "one-page") == pytest.approx(1.0)
    rows = events_of(api_app, unit)
    assert all(abs((e.client_occurred_at - e.occurred_at).total_seconds() - skew_s) < 10
               for e in rows)


def hold_requests(app: Flask, path: str, seconds: float) -> None:
    """POSTs to ``path`` wait ``seconds`` before the app reads its clock (a loaded server)."""
    inner = app.wsgi_app

    def held(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == path:
            time.sleep(seconds)
        return inner(environ, start_response)

    app.wsgi_app = held  # type: ignore[method-assign]


def test_an_event_after_a_slow_exposure_request_is_dated_after_it(sdk, api, api_app, client_key,
                                                                   page):
    """The exposure request is held 1.5 s on its way, so the server dates the exposure 1.5 s
    late; a step taken 0.2 s after it, sent in a later and fast batch, must still be dated
    after it (else the analysis drops it as a pre-exposure event), and not much later."""
    unit = unit_in(api, client_key, "one-page")
    hold_requests(api_app, "/api/v1/exposures", 1.5)
    sdk(unit=unit, autoFriction=False)
    page.evaluate(f"""async () => {{
        await p.variant("{DEMO_KEY}");
        await new Promise(r => setTimeout(r, 200));
        p.step("cart");
    }}""")
    page.evaluate(FLUSH)
    [cart] = wait_for_events(api_app, unit, type="step")
    with get_db(api_app).sessionmaker() as session:
        exposed_at = session.scalar(select(Exposure.exposed_at).where(Exposure.unit_id == unit))
    assert exposed_at is not None
    assert exposed_at <= cart.occurred_at <= cart.received_at
    assert (cart.occurred_at - cart.client_occurred_at).total_seconds() < 5


def test_every_batch_and_beacon_carries_sent_at(page, sdk, api_app):
    """A page clock an hour ahead: a batch and a beacon both land on the server's clock,
    which only their sent_at can tell (an hour ahead is within the 24 h accepted as is)."""
    page.clock.install(time=utcnow() + timedelta(hours=1))
    sdk(unit="stamped")
    page.evaluate('() => p.step("cart")')
    page.evaluate(FLUSH)  # a fetch
    page.evaluate('() => p.step("payment")')
    page.goto("about:blank")  # the beacon
    rows = wait_for_events(api_app, "stamped", 2, type="step")
    assert [e.step for e in rows] == ["cart", "payment"]
    for event in rows:
        assert event.occurred_at <= event.received_at
        shift = (event.client_occurred_at - event.occurred_at).total_seconds()
        assert 3590 < shift < 3610


def test_nps_out_of_range_warns_and_never_throws(sdk, api_app):
    page = sdk(unit="nps-11")
    warned = warnings_of(page)
    assert page.evaluate("() => [p.nps(11), p.nps(-1), p.nps(7.5), p.queue.length]") == [
        None, None, None, 0]
    assert len(warned) == 3 and "nps(11)" in warned[0]


def test_a_non_numeric_value_is_warned_and_dropped(sdk, api_app):
    page = sdk(unit="abc")
    warned = warnings_of(page)
    got = page.evaluate("""() => [p.track("purchase", {value: "abc"}),
                                  p.track("purchase", {value: {}}), p.queue.length]""")
    assert got == [None, None, 0]
    assert len(warned) == 2 and '"abc"' in warned[0]
    assert page.evaluate('() => p.track("purchase", {value: "59.9"})') is not None
    page.evaluate(FLUSH)
    assert [e.value for e in events_of(api_app, "abc")] == [59.9]


def test_events_rejected_inside_a_200_are_warned(sdk, api_app):
    page = sdk(unit="rejected", autoFriction=False)
    warned = warnings_of(page)
    page.evaluate('() => { p.friction("teleport"); p.step("cart"); }')
    assert page.evaluate(FLUSH) == 0
    assert [e.step for e in events_of(api_app, "rejected")] == ["cart"]
    assert len(warned) == 1 and "teleport" in warned[0] and "friction_kind" in warned[0]


def test_no_bounce_or_abandonment_after_a_conversion(sdk, api_app, page):
    sdk(unit="buyer", autoFriction=True)
    page.evaluate('() => { p.step("payment"); p.track("purchase", {value: 10}); }')
    sdk(unit="buyer", autoFriction=True)  # a later page of the same tab: the flag holds
    page.evaluate('() => p.step("payment")')
    page.goto("about:blank")
    wait_for_events(api_app, "buyer", 2, type="step")
    time.sleep(0.5)  # let any friction beacon land before counting
    rows = events_of(api_app, "buyer")
    assert [e.name for e in rows if e.type == "conversion"] == ["purchase"]
    assert [e for e in rows if e.type == "friction"] == []


def test_without_a_conversion_the_bounce_still_fires(sdk, api_app, page):
    """The control of the test above: the same visit without the purchase bounces."""
    sdk(unit="looker", autoFriction={"abandonment": False})
    page.evaluate('() => p.step("landing")')
    page.goto("about:blank")
    assert [e.step for e in frictions(api_app, "looker", "bounce")] == ["landing"]
