"""parcours.js ``identify()`` in Chromium (SPEC §10, §14): one link, later calls carry the
customer id, the variant never changes — on the same browser and on a second device."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from experiments.db import get_db
from experiments.models import Exposure, IdentityLink
from experiments.services.demo import DEMO_KEY
from tests.browser import test_sdk_browser as base
from tests.browser.test_sdk_browser import FLUSH, unit_in, wait_for_events

# The SDK tests' fixtures: a shop page on another origin, the API server, a client key.
shop, api_app, api, client_key, sdk = base.shop, base.api_app, base.api, base.client_key, base.sdk

pytestmark = pytest.mark.browser


def posts_to(page: Any, path: str) -> list[dict[str, Any]]:
    """Bodies of the page's POSTs to ``path``, collected from now on."""
    seen: list[dict[str, Any]] = []
    page.on("request", lambda r: seen.append(json.loads(r.post_data))
            if r.method == "POST" and r.url.split("?")[0].endswith(path) else None)
    return seen


def test_identify_sends_one_link_and_the_customer_keeps_the_variant_everywhere(
        sdk, page, browser, shop, api, api_app, client_key):
    visitor = unit_in(api, client_key, "one-page")
    customer = unit_in(api, client_key, "control", prefix="customer")
    sdk(unit=visitor)
    links = posts_to(page, "/api/v1/identify")
    before = page.evaluate(f'() => p.variant("{DEMO_KEY}")')
    assert before["variant"] == "one-page"
    page.evaluate(f'() => {{ p.identify("{customer}"); p.identify("{customer}"); '
                  f'p.track("purchase", {{value: 20}}); }}')
    assert page.evaluate(FLUSH) == 0
    assert links == [{"links": [{"anonymous_id": visitor, "user_id": customer,
                                 "occurred_at": links[0]["links"][0]["occurred_at"]}]}]
    assert len(wait_for_events(api_app, visitor, 1, name="purchase")) == 1

    # The next page load of this browser: the assignment carries the customer id.
    assigns = posts_to(page, "/api/v1/assign")
    sdk(unit=visitor)
    assert page.evaluate(f'() => p.variant("{DEMO_KEY}")') == before
    assert page.evaluate("() => p.userId") == customer
    assert page.evaluate(FLUSH) == 0
    assert assigns[-1]["user_id"] == customer
    assert len(links) == 1  # linked once per browser and customer

    # A second device where the customer logs in (init's userId) sees the same variant.
    laptop = browser.new_context()
    try:
        second = laptop.new_page()
        second.goto(f"{shop.url}/?api={api.url}")
        got = second.evaluate("""async cfg => {
            window.p = Parcours.init(cfg);
            const v = await p.variant(cfg.key);
            return v.variant;
        }""", {"endpoint": api.url, "clientKey": client_key, "unitId": "laptop-1",
               "userId": customer, "key": DEMO_KEY})
        assert got == "one-page"
        assert second.evaluate(FLUSH) == 0
    finally:
        laptop.close()
    with get_db(api_app).sessionmaker() as session:
        exposures = session.execute(select(Exposure.unit_id, Exposure.variant_key)).all()
        stored = session.execute(select(IdentityLink.anonymous_id, IdentityLink.user_id)
                                 .order_by(IdentityLink.id)).all()
    assert exposures == [(visitor, "one-page")]
    assert stored == [(visitor, customer), ("laptop-1", customer)]
