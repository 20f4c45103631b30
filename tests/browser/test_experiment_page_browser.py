"""The experiment page in Debian's Chromium: metric table fit, heatmap colours, charts,
confirmations (a cancel changes nothing) and a draft's configuration and checklist."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from experiments.db import get_db, utcnow
from experiments.services import analysis
from experiments.services.lifecycle import get_experiment
from experiments.services.simulate import SimulationPlan, simulate_traffic
from tests.browser.test_admin_browser import expect_drawn, log_in
from tests.factories import experiment_payload
from tests.test_admin_support import (
    add_user,
    cheap_argon2,  # noqa: F401  (autouse fixture)
    insert_report,
    seed_experiment,
)

pytestmark = pytest.mark.browser
KEY = "checkout-redesign"
TREATMENTS = ["one-page-checkout", "express-pay", "saved-address", "guest-first"]
FIVE_VARIANTS = [{"key": "control", "name": "Current", "weight": 0.2, "is_control": True,
                  "payload": {}},
                 *({"key": key, "name": key, "weight": 0.2, "is_control": False,
                    "payload": {"layout": key}} for key in TREATMENTS)]


def status_of(app: Any, key: str = KEY) -> str:
    with get_db(app).session() as session:
        return get_experiment(session, key).status


def five_variant_report(app: Any) -> dict[str, Any]:
    """A running 5-variant experiment, simulated traffic with friction, analysed for real."""
    seed_experiment(app, variants=FIVE_VARIANTS, targeting=[], layer=None, overrides={},
                    analysis={**experiment_payload()["analysis"], "min_days": 0})
    with get_db(app).session() as session:
        simulate_traffic(session, KEY, SimulationPlan(
            units=5000, seed=11, days=4, effects={"express-pay": 0.4},
            friction={("saved-address", "payment", "error"): 0.3,
                      ("control", "payment", "error"): 0.05}))
        return analysis.analyze_experiment(session, KEY).body


def clipped_cells(page: Page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll(
        '#metrics-table th, #metrics-table td')]
        .filter(cell => cell.scrollWidth > cell.clientWidth)
        .map(cell => cell.textContent.trim())""")


def test_metric_table_fits_1280_px_with_five_variants(page, live_server, app, artifacts_dir):
    body = five_variant_report(app)
    log_in(page, live_server.url, add_user(app, "viewer"))
    page.goto(f"{live_server.url}/admin/experiments/{KEY}")
    primary = page.locator("#metrics-table tbody[data-metric='purchase'] tr")
    expect(primary).to_have_count(5)
    assert clipped_cells(page) == []
    wrap = page.evaluate("""() => { const w = document.querySelector('#metrics-table')
        .parentElement; return [w.scrollWidth, w.clientWidth]; }""")
    assert wrap[0] <= wrap[1], "the metric table must fit without scrolling at 1280 px"
    control = next(v for v in next(m for m in body["metrics"] if m["key"] == "purchase")
                   ["variants"] if v["variant"] == "control")
    expect(primary.first).to_contain_text(
        f"({control['conversions']:,} / {control['units']:,})")
    expect(primary.nth(1)).to_contain_text(" pts")
    expect(page.locator("#method-line")).to_contain_text(
        "Sequential test: valid however often you look")
    expect_drawn(page, "series-chart-0", pixels=2000)
    page.screenshot(path=str(artifacts_dir / "experiment-5-variants-desktop.png"),
                    full_page=True)
    for section in ("metrics-title", "series-title", "funnel-title", "friction-title"):
        page.locator(f"section[aria-labelledby='{section}']").screenshot(
            path=str(artifacts_dir / f"experiment-{section}.png"))
    page.get_by_label("Daily").check()
    expect(page.locator("#metric-series")).to_have_attribute("data-view", "daily")
    expect_drawn(page, "series-chart-0", pixels=2000)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    page.screenshot(path=str(artifacts_dir / "experiment-5-variants-phone.png"), full_page=True)
    for section in ("metrics-title", "series-title"):
        page.locator(f"section[aria-labelledby='{section}']").screenshot(
            path=str(artifacts_dir / f"experiment-{section}-phone.png"))


def test_effects_charts_fit_the_latest_interval_not_day_ones(page, live_server, app):
    """Day one's confidence sequence is many times wider than the effect: each chart's axis
    spans the effects (3×) and the latest interval (1.1×), and clips the earlier bands."""
    seed_experiment(app, targeting=[], layer=None, overrides={},
                    analysis={**experiment_payload()["analysis"], "min_days": 0})
    with get_db(app).session() as session:  # ~50 units per arm on day one
        get_experiment(session, KEY).started_at = utcnow() - timedelta(days=15)
        session.commit()
        simulate_traffic(session, KEY, SimulationPlan(units=1500, seed=5, days=14,
                                                      effects={"one-page": 0.4}))
        analysis.analyze_experiment(session, KEY)
    log_in(page, live_server.url, add_user(app, "viewer"))
    page.goto(f"{live_server.url}/admin/experiments/{KEY}")
    expect_drawn(page, "series-chart-0", pixels=2000)
    clipped = 0
    for index, entry in enumerate(page.evaluate(
            "JSON.parse(document.getElementById('series-data').textContent)")):
        lines = [series["cumulative"] for series in entry["series"]]
        bounds = [b for line in lines for b in line["lower"] + line["upper"] if b is not None]
        effects = [e for line in lines for e in line["effect"] if e is not None]
        latest = [[b for b in line[side] if b is not None][-1]
                  for line in lines for side in ("lower", "upper") if any(line[side])]
        span = max(3 * max(map(abs, effects)), 1.1 * max(map(abs, latest)))
        axis = page.evaluate(f"""() => {{ const y = Chart.getChart('series-chart-{index}')
            .scales.y; return [y.min, y.max]; }}""")
        assert axis == pytest.approx([max(-span, min(bounds)), min(span, max(bounds))])
        clipped += max(bounds) > span or min(bounds) < -span
    assert clipped  # some early band is wider than the axis, so the fit is exercised


def test_heatmap_colours_exactly_the_reports_significant_friction_points(page, live_server,
                                                                         app):
    body = five_variant_report(app)
    expected = {(p["variant"], p["step"], p["friction_kind"]) for p in body["friction_points"]}
    assert ("saved-address", "payment", "error") in expected
    log_in(page, live_server.url, add_user(app, "viewer"))
    page.goto(f"{live_server.url}/admin/experiments/{KEY}")
    cells = page.evaluate("""() => [...document.querySelectorAll('table.heatmap td.heat-cell')]
        .map(cell => ({variant: cell.closest('table').dataset.variant,
                       step: cell.dataset.step || null, kind: cell.dataset.kind || null,
                       colour: getComputedStyle(cell).backgroundColor,
                       title: cell.title}))""")
    grey = page.evaluate("getComputedStyle(document.body).getPropertyValue('--neutral-bg')")
    assert grey.strip() == "#eef0f3"
    plain = {"rgba(0, 0, 0, 0)", "rgb(238, 240, 243)"}  # empty pattern, grey noise
    coloured = {(c["variant"], c["step"], c["kind"]) for c in cells if c["colour"] not in plain}
    assert coloured == expected
    assert any("not significant" in c["title"] and c["colour"] == "rgb(238, 240, 243)"
               for c in cells)
    hit = next(c for c in cells if (c["variant"], c["step"], c["kind"]) ==
               ("saved-address", "payment", "error"))
    assert " units) vs " in hit["title"] and "in control" in hit["title"]
    expect(page.locator("ol.top-friction-list[data-variant='saved-address']").first) \
        .to_contain_text("More error at payment")


def test_cancelling_a_confirmation_changes_nothing(page, live_server, app):
    seed_experiment(app, start=False, targeting=[])
    log_in(page, live_server.url, add_user(app, "editor"))
    page.goto(f"{live_server.url}/admin/experiments/{KEY}")
    messages: list[str] = []

    def answer(accept: bool) -> None:
        page.once("dialog", lambda d: (messages.append(d.message),
                                       d.accept() if accept else d.dismiss()))

    answer(False)
    page.get_by_role("button", name="Start").click()
    expect(page.locator("h1 .badge")).to_have_text("draft")
    assert status_of(app) == "draft" and messages[-1].startswith("Start One-page checkout?")
    answer(True)
    page.get_by_role("button", name="Start").click()
    expect(page.locator("h1 .badge")).to_have_text("running")

    answer(False)
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("h1 .badge")).to_have_text("running")
    assert status_of(app) == "running" and messages[-1].startswith("Pause One-page checkout?")

    insert_report(app, metrics=[{
        "key": "payment-errors", "kind": "friction", "role": "guardrail",
        "variants": [{"variant": "control", "units": 5012, "estimate": 0.04},
                     {"variant": "one-page", "units": 4988, "estimate": 0.07}],
        "comparisons": [{"variant": "one-page", "absolute_effect": 0.03,
                         "absolute_ci": [0.02, 0.04], "relative_effect": 0.75,
                         "relative_ci": [0.4, 1.1], "p_value": 0.0001,
                         "adjusted_p_value": 0.0002, "chance_to_win": None,
                         "expected_loss": None, "significant": True, "verdict": "worse"}]}],
        srm={"p_value": 0.0001, "detected": True})
    page.reload()
    page.get_by_label("Outcome").select_option("ship")
    page.get_by_label("Winner (for ship)").select_option("one-page")
    answer(False)
    page.get_by_role("button", name="Conclude experiment").click()
    expect(page.locator("h1 .badge")).to_have_text("running")
    assert status_of(app) == "running"
    assert messages[-1].startswith("Risky ship.")
    assert "guardrail payment-errors is significantly worse for one-page" in messages[-1]
    assert "sample ratio mismatch" in messages[-1]
    answer(True)
    page.get_by_role("button", name="Conclude experiment").click()
    expect(page.locator("h1 .badge")).to_have_text("concluded")


def test_draft_page_shows_configuration_checklist_and_sdk_snippet(page, live_server, app,
                                                                   artifacts_dir):
    seed_experiment(app, start=False)
    log_in(page, live_server.url, add_user(app, "viewer"))
    page.goto(f"{live_server.url}/admin/experiments/{KEY}")
    variants = page.locator("#config-variants tbody tr")
    expect(variants).to_have_count(2)
    expect(variants.nth(1)).to_contain_text('{"layout": "single"}')
    expect(variants.nth(1)).to_contain_text("50%")
    expect(page.locator("#config-journey li")).to_have_text(
        ["landing", "cart", "checkout", "payment", "confirmation"])
    expect(page.locator("#config-metrics")).to_contain_text("error at payment")
    expect(page.locator("#config-targeting")).to_contain_text("country is one of FR, BE")
    expect(page.locator("#config-targeting")).to_contain_text("100% of the matching units")
    expect(page.locator("#config-analysis")).to_contain_text("≥ 1,000 units per variant")
    checklist = page.locator("#launch-checklist .checklist li")
    expect(checklist.nth(0)).to_contain_text("Primary metric set: purchase")
    expect(checklist.nth(1)).to_contain_text("Guardrails present: payment-errors")
    # 10% → 10.5% (α 0.05, power 0.8): 57,756 per arm for a fixed-horizon test (statsmodels),
    # 126,753 for this experiment's sequential one (stats.power, design="sequential")
    expect(checklist.nth(2)).to_contain_text("126,753 units per variant")
    expect(checklist.nth(2)).to_contain_text("power 80%, α 0.05, the sequential test")
    snippet = page.locator("#sdk-snippet").inner_text()
    assert 'clientKey: "<CLIENT_KEY>"' in snippet and 'p.variant("checkout-redesign")' in snippet
    assert '//   one-page: {"layout": "single"}' in snippet
    page.screenshot(path=str(artifacts_dir / "experiment-draft-desktop.png"), full_page=True)


def test_the_lift_chart_leaves_out_unbounded_days_and_marks_a_single_days_bounds(
        page, live_server, app):
    """A day whose relative interval is unbounded is not drawn (its point read as a measured
    lift); with a single day there is no band to fill, so its bounds are drawn as dashes."""
    seed_experiment(app)
    unbounded = {"variant": "one-page", "relative_effect": 0.61, "relative_ci": None}
    bounded = {"variant": "one-page", "relative_effect": 0.25, "relative_ci": [-0.45, 1.95]}
    insert_report(app, timeline=[{**unbounded, "date": "2026-11-22", "units": 249},
                                 {**bounded, "date": "2026-11-23", "units": 427}])
    log_in(page, live_server.url, add_user(app, "viewer"))
    page.goto(f"{live_server.url}/admin/experiments/{KEY}")
    expect_drawn(page, "lift-chart", pixels=500)
    datasets = """() => Chart.getChart('lift-chart').data.datasets.map(
        d => ({label: d.label, data: d.data, radius: d.pointRadius, style: d.pointStyle}))"""
    upper, lower, lift = page.evaluate(datasets)
    assert lift["data"] == [None, 0.25] and upper["data"] == [None, 1.95]
    assert upper["radius"] == lower["radius"] == 0
    expect(page.locator(".lift-unbounded")).to_contain_text("1 day not drawn")

    insert_report(app, timeline=[{**bounded, "date": "2026-11-23", "units": 427}])
    page.reload()
    expect_drawn(page, "lift-chart", pixels=300)
    upper, lower, lift = page.evaluate(datasets)
    assert (upper["radius"], upper["style"], upper["data"]) == (8, "dash", [1.95])
    assert (lower["radius"], lower["data"]) == (8, [-0.45]) and lift["data"] == [0.25]
    expect(page.locator(".lift-unbounded")).to_have_count(0)
