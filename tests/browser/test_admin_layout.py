"""Every admin page on a 390 px phone, and the portfolio's health chips, in Debian's Chromium."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.services import analysis, lifecycle
from experiments.services.simulate import SimulationPlan, simulate_traffic
from tests.browser.test_admin_browser import log_in
from tests.conftest import new_api_key
from tests.factories import experiment_payload
from tests.test_admin_support import (
    add_user,
    cheap_argon2,  # noqa: F401  (autouse fixture)
    insert_report,
    seed_experiment,
)

pytestmark = pytest.mark.browser
THREE = "three-way"
PHONE = {"width": 390, "height": 844}


def three_variant_experiment(app) -> None:
    """A running 3-variant experiment with simulated traffic and a real report."""
    variants = [
        {"key": "control", "name": "Current", "weight": 0.34, "is_control": True, "payload": {}},
        {"key": "one-page", "name": "One page", "weight": 0.33, "is_control": False,
         "payload": {"layout": "single"}},
        {"key": "express-wallet", "name": "Express wallet", "weight": 0.33,
         "is_control": False, "payload": {"wallet": True}}]
    with get_db(app).session() as session:
        lifecycle.create_experiment(session, experiment_payload(
            THREE, name="Three ways to pay", variants=variants, layer=None, targeting=[],
            overrides={}), SYSTEM)
        lifecycle.transition(session, THREE, "start", SYSTEM)
    with get_db(app).session() as session:
        simulate_traffic(session, THREE, SimulationPlan(
            units=1500, seed=3, days=4, effects={"one-page": 0.3},
            friction={("control", "payment", "error"): 0.15}))
    with get_db(app).session() as session:
        analysis.analyze_experiment(session, THREE)


def seed_portfolio(app) -> None:
    """Healthy, SRM + breached guardrail, stale, and a concluded experiment with learnings."""
    three_variant_experiment(app)
    seed_experiment(app, "breached", layer=None)
    insert_report(app, "breached", srm={"p_value": 0.00001, "detected": True},
                  metrics=[{"key": "payment-errors", "kind": "friction", "role": "guardrail",
                            "variants": [], "comparisons": [
                                {"variant": "one-page", "verdict": "worse"}]}])
    seed_experiment(app, "stale-one", layer=None)
    insert_report(app, "stale-one", age_hours=30)
    seed_experiment(app, "alerted", layer=None)
    insert_report(app, "alerted", alerts=[{
        "kind": "events_before_exposure", "metric": "purchase", "variant": "control",
        "message": "9 % of control's purchase events arrived before exposure"}])
    seed_experiment(app, "finished", layer=None)
    with get_db(app).session() as session:
        lifecycle.transition(session, "finished", "pause", SYSTEM)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {new_api_key(app, 'admin')}"}
    assert client.post("/api/v1/experiments/finished/conclude", headers=headers, json={
        "outcome": "no_difference", "winner": None,
        "learnings": "Customers did not notice the new button colour"}).status_code == 200
    assert client.post("/api/v1/webhooks", headers=headers, json={
        "url": "https://hooks.example.com/a-rather-long-path/for/parcours/notifications",
        "events": ["experiment.decided", "guardrail.breached"],
        "description": "Team channel"}).status_code == 201



def chips(page: Page, key: str) -> list[str]:
    row = page.locator(f"#portfolio-table tr[data-key='{key}']")
    return row.locator(".chip").evaluate_all("els => els.map(e => e.dataset.kind)")


def test_the_portfolio_shows_the_health_each_latest_report_implies(page, live_server, app,
                                                                   artifacts_dir):
    seed_portfolio(app)
    log_in(page, live_server.url, add_user(app, "admin"))
    rows = page.locator("#portfolio-table tbody tr")
    keys = rows.evaluate_all("els => els.map(e => e.dataset.key)")
    assert sorted(keys) == sorted([THREE, "breached", "stale-one", "alerted"])
    assert chips(page, THREE) == ["ok"]
    assert chips(page, "breached") == ["srm", "guardrail_breach"]
    assert chips(page, "stale-one") == ["stale"]
    assert chips(page, "alerted") == ["events_before_exposure"]
    three = page.locator(f"tr[data-key='{THREE}']")
    expect(three).to_contain_text("express-wallet")
    expect(three.get_by_role("link", name="Three ways to pay")).to_have_attribute(
        "href", f"/admin/experiments/{THREE}")
    page.screenshot(path=str(artifacts_dir / "portfolio-desktop.png"), full_page=True)
    wrap = page.locator("#portfolio-table").locator("xpath=..")
    assert wrap.evaluate("e => e.scrollWidth - e.clientWidth") <= 0  # fits 1280 px unscrolled

    page.get_by_role("button", name="Health").click()
    after = page.locator("#portfolio-table tbody tr").evaluate_all(
        "els => els.map(e => e.dataset.key)")
    assert after[-1] == "breached" and after[0] in (THREE, "stale-one", "alerted")
    expect(page.locator("#portfolio-table th[aria-sort='ascending']")).to_contain_text("Health")


def test_every_admin_page_fits_a_phone(page, live_server, app, artifacts_dir):
    seed_portfolio(app)
    page.set_viewport_size(PHONE)
    log_in(page, live_server.url, add_user(app, "admin"))
    pages = {"portfolio": "/admin/", "list": "/admin/experiments",
             "report": f"/admin/experiments/{THREE}", "form": "/admin/experiments/new",
             "learnings": "/admin/learnings", "power": "/admin/power?kind=conversion",
             "users": "/admin/users", "keys": "/admin/api-keys", "webhooks": "/admin/webhooks",
             "audit": "/admin/audit"}
    too_wide = {}
    for name, path in pages.items():
        page.goto(live_server.url + path)
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        page.screenshot(path=str(artifacts_dir / f"phone-{name}.png"), full_page=True)
        if width[0] > width[1]:
            too_wide[name] = width
    assert too_wide == {}


def assert_a_card_on_a_phone(page: Page, table: Any, row: Any, labels: Sequence[str]) -> None:
    """On the phone the table does not scroll sideways and each of the row's ``labels``
    is in view, its cell labelled; on a desktop the labels are gone (the header says them).
    The width is awaited (5 s) before it is asserted: one CI run measured the portfolio
    199 px too wide right after log-in, and no rerun, under load or not, did again."""
    wrap = table.locator("xpath=..")
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function("e => e.scrollWidth - e.clientWidth <= 0",
                               arg=wrap.element_handle(), timeout=5000)
    assert wrap.evaluate("e => e.scrollWidth - e.clientWidth") <= 0
    for label in labels:
        cell = row.locator(f"td[data-label='{label}']")
        box = cell.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        assert cell.evaluate("e => getComputedStyle(e, '::before').content") == f'"{label}"'
    page.set_viewport_size({"width": 1280, "height": 800})
    for label in labels:
        assert row.locator(f"td[data-label='{label}']").evaluate(
            "e => getComputedStyle(e, '::before').content") == "none"


def test_on_a_phone_each_portfolio_row_is_a_card_with_everything_in_view(
        page, live_server, app):
    """At 390 px the table's columns scrolled sideways inside their box: days left, health
    and verdict were out of view. Each experiment is now a card, each value labelled."""
    seed_portfolio(app)
    page.set_viewport_size(PHONE)
    log_in(page, live_server.url, add_user(app, "admin"))
    table = page.locator("#portfolio-table")
    assert_a_card_on_a_phone(page, table, table.locator(f"tr[data-key='{THREE}']"),
                             ("Days left", "Health", "Verdict"))


def test_the_phone_menu_opens_and_closes(page, live_server, app):
    page.set_viewport_size(PHONE)
    log_in(page, live_server.url, add_user(app, "admin"))
    webhooks = page.get_by_role("link", name="Webhooks")
    expect(webhooks).to_be_hidden()
    menu = page.get_by_role("button", name="Menu")
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(webhooks).to_be_visible()
    webhooks.click()
    expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_visible()
    page.set_viewport_size({"width": 1280, "height": 800})
    expect(page.get_by_role("link", name="Webhooks")).to_be_visible()
    expect(page.get_by_role("button", name="Menu")).to_be_hidden()


def test_no_page_asks_for_a_missing_favicon(page, live_server, app):
    missing = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    log_in(page, live_server.url, add_user(app, "viewer"))
    page.goto(live_server.url + "/favicon.ico")
    assert missing == []


def test_on_a_phone_each_metric_is_a_card_with_its_effect_and_verdict_in_view(
        page, live_server, app):
    """At 390 px the metric table scrolled sideways: the changes, p-values and verdicts
    were off screen. Each variant's row is now a list of labelled values."""
    three_variant_experiment(app)
    page.set_viewport_size(PHONE)
    log_in(page, live_server.url, add_user(app, "viewer"))
    page.goto(f"{live_server.url}/admin/experiments/{THREE}")
    table = page.locator("#metrics-table")
    row = table.locator("tbody[data-metric='purchase'] tr[class^='verdict-row-']").first
    assert_a_card_on_a_phone(page, table, row, ("Relative change", "p-value", "Verdict"))
