"""The admin UI end to end in Debian's Chromium: form → start → traffic → report → learnings."""

from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.sync_api import Page, expect

from experiments.db import get_db, utcnow
from experiments.services.lifecycle import get_experiment
from experiments.services.simulate import SimulationPlan, simulate_traffic
from tests.test_admin_support import (
    PASSWORD,
    add_user,
    cheap_argon2,  # noqa: F401  (autouse fixture)
)

pytestmark = pytest.mark.browser
KEY = "one-page-payment"


def expect_drawn(page: Page, canvas_id: str, *, pixels: int) -> None:
    """Fail unless Chart.js draws more than `pixels` non-transparent pixels on the canvas.

    Waits (up to 10 s), because the chart is drawn after the page's scripts run and again
    after each resize; a canvas is 300 px wide before Chart.js touches it, so its width
    says nothing.
    """
    page.wait_for_function("""([id, atLeast]) => {
        const canvas = document.getElementById(id);
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let count = 0;
        for (let i = 3; i < data.length; i += 4) { if (data[i] > 0) count++; }
        return count > atLeast;
    }""", arg=[canvas_id, pixels], timeout=10_000)


def log_in(page: Page, base: str, email: str) -> None:
    page.goto(base + "/admin/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Portfolio")).to_be_visible()


def create_through_the_form(page: Page) -> None:
    page.get_by_role("link", name="New experiment").click()
    page.locator("#f-key").fill(KEY)
    page.locator("#f-name").fill("One-page payment")
    page.get_by_label("Hypothesis").fill("Fewer payment errors when payment is on one page")
    # Journey: landing, checkout, confirmation → add "payment" and move it before confirmation.
    page.get_by_role("button", name="+ Add step").click()
    page.locator("input[name='journey']").last.fill("payment")
    page.locator("[data-rows='journey'] .row").last.get_by_role("button", name="Move up").click()
    page.locator("input[name='variant_key']").nth(1).fill("one-page")
    page.get_by_role("button", name="+ Add metric").click()
    metric = page.locator("[data-rows='metric'] .row").last
    metric.get_by_label("Key", exact=True).fill("payment-errors")
    metric.get_by_label("Kind", exact=True).select_option("friction")
    metric.get_by_label("Role", exact=True).select_option("guardrail")
    metric.get_by_label("Step", exact=True).fill("payment")
    metric.get_by_label("Friction kind", exact=True).select_option("error")
    page.get_by_label("Min units per variant").fill("100")
    page.get_by_label("Min days").fill("0")
    page.get_by_role("button", name="Create draft").click()
    expect(page.locator(".flash-success")).to_contain_text(f"Created draft experiment '{KEY}'")


def test_editor_runs_an_experiment_from_form_to_learnings(page, live_server, app,
                                                          artifacts_dir):
    external, errors = [], []
    page.on("request", lambda r: None if r.url.startswith(live_server.url)
            else external.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda dialog: dialog.accept())  # Start and Conclude ask first
    log_in(page, live_server.url, add_user(app, "editor"))
    create_through_the_form(page)
    page.get_by_role("button", name="Start").click()
    expect(page.locator("h1 .badge")).to_have_text("running")

    with get_db(app).session() as session:
        # The simulator dates nothing before the start: pretend it started 5 days ago.
        get_experiment(session, KEY).started_at = utcnow() - timedelta(days=5, hours=1)
        session.commit()
        simulate_traffic(session, KEY, SimulationPlan(
            units=3000, seed=7, days=5, effects={"one-page": 0.3},
            friction={("control", "payment", "error"): 0.15}))
    page.get_by_role("button", name="Analyze now").click()
    expect(page.locator(".flash-success")).to_have_text("Analysis complete.")

    expect_drawn(page, "lift-chart", pixels=2000)
    expect_drawn(page, "funnel-chart", pixels=2000)
    page.screenshot(path=str(artifacts_dir / "admin-report-desktop.png"), full_page=True)
    heatmap = page.locator("table.heatmap")
    assert heatmap.locator("tbody tr").count() == 4  # landing, checkout, payment, confirmation
    assert heatmap.locator("td.heat-cell").count() == 4 * 10
    assert heatmap.locator("td.heat-significant").count() >= 1
    expect(page.locator("#decision")).to_be_visible()
    expect(page.locator("#metrics-table")).to_contain_text("payment-errors")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect_drawn(page, "lift-chart", pixels=1000)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, "the phone layout must not scroll sideways"
    page.screenshot(path=str(artifacts_dir / "admin-report-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    page.get_by_label("Outcome").select_option("ship")
    page.get_by_label("Winner (for ship)").select_option("one-page")
    page.get_by_label("Learnings", exact=True).fill("Payment on one page halves payment errors")
    page.get_by_role("button", name="Conclude experiment").click()
    expect(page.locator("h1 .badge")).to_have_text("concluded")
    expect(page.locator("#decision")).to_contain_text("Ship")

    page.get_by_role("link", name="Learnings").click()
    page.get_by_label("Search").fill("halves payment")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#learnings-list")).to_contain_text("Payment on one page halves")
    expect(page.locator("#learnings-list")).to_contain_text("One-page payment")
    assert external == [] and errors == []


def test_validation_errors_show_in_the_browser(page, live_server, app):
    log_in(page, live_server.url, add_user(app, "editor"))
    page.goto(live_server.url + "/admin/experiments/new")
    page.locator("#f-key").fill("Bad Key")
    page.locator("input[name='variant_weight']").nth(1).fill("-1")
    page.get_by_role("button", name="Create draft").click()
    expect(page.locator("#error-summary")).to_be_focused()
    expect(page.locator("#f-variants-1-weight-error")).to_have_text("must be 0 or more")
    expect(page.locator("#f-key-error")).to_have_text(
        "lowercase letters, digits, - and _ only (start with a letter or digit, at most 64)")
    expect(page.locator("#error-summary")).to_contain_text(
        "Key: lowercase letters, digits, - and _ only")
    expect(page.locator("#error-summary")).to_contain_text("Variant 2 weight: must be 0 or more")
