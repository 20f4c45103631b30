"""Admin experiment pages: list, form (with the API's validation messages), report page, actions."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from typing import Any

from werkzeug.datastructures import MultiDict

from experiments.db import get_db
from experiments.models import AuditEntry, Experiment
from experiments.services.lifecycle import experiment_to_dict, get_experiment
from tests.test_admin_support import (
    cheap_argon2,  # noqa: F401  (autouse fixture)
    insert_report,
    logged_in,
    post,
    report_body,
    seed_experiment,
    submitted_form,
)


def form_data(**changes: Any) -> MultiDict[str, str]:
    """What the browser posts for a valid two-arm experiment (repeated fields in row order)."""
    data: dict[str, Any] = {
        "key": "address-autocomplete", "name": "Address autocomplete", "owner": "journeys",
        "hypothesis": "Autocomplete removes form errors", "layer": "", "traffic": "0.8",
        "journey": ["cart", "checkout", "payment"],
        "variant_key": ["control", "autocomplete"], "variant_name": ["Current", "Auto"],
        "variant_weight": ["0.5", "0.5"], "variant_role": ["control", "treatment"],
        "variant_payload": ["{}", '{"autocomplete": true}'],
        "rule_attribute": ["country"], "rule_op": ["in"], "rule_value": ["FR, BE"],
        "overrides": "qa-1 = autocomplete",
        "metric_key": ["purchase", "checkout-errors"], "metric_kind": ["conversion", "friction"],
        "metric_role": ["primary", "guardrail"], "metric_direction": ["", ""],
        "metric_event": ["purchase", ""], "metric_numerator": ["", ""],
        "metric_denominator": ["", ""], "metric_step": ["", "checkout"],
        "metric_friction_kind": ["", "form_error"],
        "analysis_method": "frequentist", "analysis_correction": "holm", "analysis_alpha": "0.05",
        "analysis_power": "0.8", "analysis_mde": "0.05", "analysis_min_units_per_variant": "500",
        "analysis_min_days": "3", "analysis_max_days": "21",
        "analysis_conversion_window_hours": "48", "analysis_cuped": "on",
        "analysis_auto_decide": "on",
    }
    data.update(changes)
    return MultiDict([(k, item) for k, v in data.items()
                      for item in (v if isinstance(v, list) else [v])])


def load(app, key: str) -> dict[str, Any]:
    with get_db(app).session() as session:
        return experiment_to_dict(get_experiment(session, key))


def errors_on(page: str) -> dict[str, str]:
    """Inline error messages by the id of the field they describe."""
    found = re.findall(r'<p class="field-error" id="(f-[^"]+)-error">([^<]+)</p>', page)
    return {field: html.unescape(message) for field, message in found}


def test_create_form_builds_the_same_experiment_as_the_api(app):
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/new", form_data())
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/experiments/address-autocomplete"
    created = load(app, "address-autocomplete")
    assert created["journey"] == ["cart", "checkout", "payment"]
    assert [(v["key"], v["weight"], v["is_control"], v["payload"]) for v in created["variants"]] \
        == [("control", 0.5, True, {}), ("autocomplete", 0.5, False, {"autocomplete": True})]
    assert created["traffic"] == 0.8 and created["layer"] is None
    assert created["targeting"] == [{"attribute": "country", "op": "in", "value": ["FR", "BE"]}]
    assert created["overrides"] == {"qa-1": "autocomplete"}
    assert [(m["key"], m["role"], m["direction"], m["step"], m["friction_kind"])
            for m in created["metrics"]] == [
        ("purchase", "primary", "increase", None, None),
        ("checkout-errors", "guardrail", "decrease", "checkout", "form_error")]
    assert created["analysis"]["method"] == "frequentist"
    assert created["analysis"]["min_days"] == 3 and created["analysis"]["auto_conclude"] is False
    with get_db(app).session() as session:
        assert session.query(AuditEntry).filter_by(action="experiment.create").one().actor \
            == "user:editor@example.com"


def test_reordered_rows_are_saved_in_their_new_order(app):
    client = logged_in(app, "editor")
    post(client, "/admin/experiments/new", form_data(journey=["payment", "cart", "checkout"]))
    assert load(app, "address-autocomplete")["journey"] == ["payment", "cart", "checkout"]


def test_blank_rows_are_ignored(app):
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/new", form_data(
        journey=["cart", "", "checkout", "payment"],
        rule_attribute=["country", ""], rule_op=["in", "eq"], rule_value=["FR", ""]))
    assert response.status_code == 302
    created = load(app, "address-autocomplete")
    assert created["journey"] == ["cart", "checkout", "payment"]
    assert len(created["targeting"]) == 1


def test_validation_errors_are_shown_next_to_their_fields_and_nothing_is_created(app):
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/new", form_data(
        variant_weight=["0.5", "lots"], variant_payload=["{}", "{broken"],
        metric_step=["", "shipping"], analysis_alpha="2"))
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    errors = errors_on(page)
    assert errors["f-variants-1-weight"] == "type a number, e.g. 0.5"
    assert errors["f-variants-1-payload"].startswith("not valid JSON")
    assert errors["f-analysis-alpha"] == "must be 0.5 or less"
    assert "Variant 2 weight: type a number, e.g. 0.5" in page  # the summary names the label
    assert "Input should" not in page and "<code>variants" not in page
    assert 'id="f-variants-1-weight" aria-invalid="true"' in page
    assert 'value="lots"' in page and "{broken" in page  # the typed values are kept
    assert "Please fix" in page
    with get_db(app).session() as session:
        assert session.query(Experiment).count() == 0


def test_cross_field_rules_use_the_api_field_paths(app):
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/new", form_data(
        variant_role=["treatment", "treatment"], metric_step=["", "shipping"]))
    assert response.status_code == 422
    errors = errors_on(response.get_data(as_text=True))
    assert errors["f-variants"] == "choose exactly one control variant (found 0)"
    assert errors["f-metrics-1-step"] == "step 'shipping' is not a journey step"


def test_duplicate_key_is_reported_on_the_key_field(app):
    seed_experiment(app, "address-autocomplete", start=False)
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/new", form_data())
    assert response.status_code == 409
    assert "already exists" in errors_on(response.get_data(as_text=True))["f-key"]


def test_bad_override_line_is_refused(app):
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/new", form_data(overrides="just-a-unit"))
    assert response.status_code == 422
    assert "unit_id = variant_key" in response.get_data(as_text=True)
    with get_db(app).session() as session:
        assert session.query(Experiment).count() == 0


def test_edit_form_is_prefilled_and_saves_changes(app):
    seed_experiment(app, start=False)
    client = logged_in(app, "editor")
    page = client.get("/admin/experiments/checkout-redesign/edit").get_data(as_text=True)
    assert 'value="One-page checkout"' in page and '{&#34;layout&#34;: &#34;single&#34;}' in page
    data = form_data(key="ignored", name="Renamed", journey=["landing", "cart", "checkout"],
                     metric_step=["", "checkout"])
    response = post(client, "/admin/experiments/checkout-redesign/edit", data)
    assert response.status_code == 302
    saved = load(app, "checkout-redesign")
    assert saved["key"] == "checkout-redesign" and saved["name"] == "Renamed"
    assert [v["key"] for v in saved["variants"]] == ["control", "autocomplete"]


def test_running_experiment_cannot_gain_a_variant_through_the_form(app):
    seed_experiment(app)
    client = logged_in(app, "editor")
    data = form_data(variant_key=["control", "one-page", "third"],
                     variant_name=["a", "b", "c"], variant_weight=["1", "1", "1"],
                     variant_role=["control", "treatment", "treatment"],
                     variant_payload=["{}", "{}", "{}"],
                     journey=["landing", "cart", "checkout", "payment", "confirmation"])
    response = post(client, "/admin/experiments/checkout-redesign/edit", data)
    assert response.status_code == 409
    assert "cannot be added, removed" in response.get_data(as_text=True)
    assert len(load(app, "checkout-redesign")["variants"]) == 2


def test_running_experiment_weights_and_traffic_can_change(app):
    seed_experiment(app)
    client = logged_in(app, "editor")
    state = load(app, "checkout-redesign")
    data = form_data(
        name=state["name"], traffic="0.5", layer="checkout", overrides="",
        journey=state["journey"], variant_key=["control", "one-page"],
        variant_weight=["0.3", "0.7"], metric_step=["", "payment"])
    response = post(client, "/admin/experiments/checkout-redesign/edit", data)
    assert response.status_code == 302, response.get_data(as_text=True)
    saved = load(app, "checkout-redesign")
    assert saved["traffic"] == 0.5 and [v["weight"] for v in saved["variants"]] == [0.3, 0.7]


def test_concluded_experiment_form_only_edits_texts(app):
    seed_experiment(app)
    client = logged_in(app, "editor")
    post(client, "/admin/experiments/checkout-redesign/conclude",
         {"outcome": "no_difference", "winner": "", "learnings": "first"})
    page = client.get("/admin/experiments/checkout-redesign/edit").get_data(as_text=True)
    assert 'name="variant_key"' not in page and 'name="learnings"' in page
    response = post(client, "/admin/experiments/checkout-redesign/edit",
                    form_data(name="Final name", learnings="Customers did not care"))
    assert response.status_code == 302
    saved = load(app, "checkout-redesign")
    assert (saved["name"], saved["learnings"], saved["traffic"]) == (
        "Final name", "Customers did not care", 1.0)


def test_lifecycle_buttons_move_the_experiment(app):
    seed_experiment(app, start=False)
    client = logged_in(app, "editor")
    key_url = "/admin/experiments/checkout-redesign"
    statuses = []
    for action in ("start", "pause", "resume"):
        assert post(client, f"{key_url}/{action}").status_code == 302
        statuses.append(load(app, "checkout-redesign")["status"])
    assert statuses == ["running", "paused", "running"]


def test_illegal_transition_is_explained_and_changes_nothing(app):
    seed_experiment(app, start=False)
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/checkout-redesign/pause", follow_redirects=True)
    assert "cannot pause an experiment that is draft" in response.get_data(as_text=True)
    assert load(app, "checkout-redesign")["status"] == "draft"


def test_conclude_records_outcome_winner_and_learnings(app):
    seed_experiment(app)
    client = logged_in(app, "editor")
    post(client, "/admin/experiments/checkout-redesign/conclude",
         {"outcome": "ship", "winner": "one-page", "learnings": "One page wins on mobile"})
    saved = load(app, "checkout-redesign")
    assert saved["status"] == "concluded" and saved["learnings"] == "One page wins on mobile"
    assert saved["decision"]["outcome"] == "ship" and saved["decision"]["winner"] == "one-page"


def test_conclude_ship_without_winner_is_refused(app):
    seed_experiment(app)
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/checkout-redesign/conclude",
                    {"outcome": "ship", "winner": ""}, follow_redirects=True)
    page = response.get_data(as_text=True)
    assert "a &#39;ship&#39; outcome needs the winning variant" in page
    assert page.count("outcome needs the winning variant") == 1  # said once, not repeated
    assert load(app, "checkout-redesign")["status"] == "running"


def test_two_controls_are_reported_with_the_other_errors(app):
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/new", form_data(
        key="Bad Key", variant_role=["control", "control"]))
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    errors = errors_on(page)
    assert errors["f-variants"] == "choose exactly one control variant (found 2)"
    assert errors["f-key"].startswith("lowercase letters, digits, - and _ only")
    assert "Key: lowercase letters, digits, - and _ only" in page


def test_lifecycle_flashes_read_as_english(app):
    seed_experiment(app, start=False)
    client = logged_in(app, "editor")
    flashes = []
    for action in ("start", "pause", "resume"):
        page = post(client, f"/admin/experiments/checkout-redesign/{action}",
                    follow_redirects=True).get_data(as_text=True)
        flashes.append(re.search(r'class="flash flash-success"[^>]*>([^<]+)<', page)[1])
    assert flashes == ["Experiment started.", "Experiment paused.", "Experiment resumed."]


def test_iterate_creates_a_draft_in_the_chain(app):
    seed_experiment(app)
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/checkout-redesign/iterate",
                    {"new_key": "checkout-redesign-2", "new_name": ""})
    assert response.headers["Location"] == "/admin/experiments/checkout-redesign-2/edit"
    child = load(app, "checkout-redesign-2")
    assert child["iteration_of"] == "checkout-redesign" and child["status"] == "draft"
    parent_page = client.get("/admin/experiments/checkout-redesign").get_data(as_text=True)
    assert 'href="/admin/experiments/checkout-redesign-2"' in parent_page
    child_page = client.get("/admin/experiments/checkout-redesign-2").get_data(as_text=True)
    assert "Iterates <a href=\"/admin/experiments/checkout-redesign\">" in child_page


def test_iterate_with_a_bad_key_explains_why(app):
    seed_experiment(app)
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/checkout-redesign/iterate",
                    {"new_key": "Bad Key"}, follow_redirects=True)
    assert "Key: lowercase letters, digits, - and _ only" in response.get_data(as_text=True)


def test_delete_draft(app):
    seed_experiment(app, start=False)
    client = logged_in(app, "editor")
    assert post(client, "/admin/experiments/checkout-redesign/delete").status_code == 302
    with get_db(app).session() as session:
        assert session.query(Experiment).count() == 0


def test_list_shows_status_units_verdict_srm_and_days(app):
    seed_experiment(app)
    seed_experiment(app, "pricing-test", start=False, layer=None)
    insert_report(app, srm={"p_value": 0.0001, "detected": True})
    client = logged_in(app, "viewer")
    page = client.get("/admin/experiments").get_data(as_text=True)
    rows = {key: row for row in page.split("<tr>")[2:]
            for key in ("checkout-redesign", "pricing-test") if f"{key}</code>" in row}
    assert "status-running" in rows["checkout-redesign"] and "10,000" in rows["checkout-redesign"]
    assert "verdict-better" in rows["checkout-redesign"] and ">SRM<" in rows["checkout-redesign"]
    assert '<td class="num">0</td>' in rows["checkout-redesign"]  # started today
    assert "status-draft" in rows["pricing-test"] and "verdict-" not in rows["pricing-test"]
    assert page.index("pricing-test") < page.index("checkout-redesign")  # newest first


def test_list_filters_by_status_and_searches(app):
    seed_experiment(app)
    seed_experiment(app, "pricing-test", start=False, layer=None, name="Price anchors")
    client = logged_in(app, "viewer")
    drafts = client.get("/admin/experiments?status=draft").get_data(as_text=True)
    assert "pricing-test" in drafts and "checkout-redesign" not in drafts
    found = client.get("/admin/experiments?q=ANCHOR").get_data(as_text=True)
    assert "pricing-test" in found and "checkout-redesign" not in found
    assert client.get("/admin/experiments?q=100%25_").status_code == 200
    assert client.get("/admin/experiments?status=bogus").status_code == 400
    assert client.get("/admin/experiments?cursor=garbage").status_code == 422


def test_report_page_shows_decision_metrics_funnel_and_heatmap(app):
    seed_experiment(app)
    insert_report(app)
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    assert 'class="decision decision-ship"' in page and "primary metric significant" in page
    assert "srm-banner" not in page
    assert "+11.8%" in page and "[+1.0%, +23.0%]" in page
    assert "+1.20 pts" in page and "[+0.10, +2.30] pts" in page and "(n = 5,012)" in page
    table = page[page.index('id="metrics-table"'):page.index("</table>", page.index(
        'id="metrics-table"'))]
    assert "0.030" in table and "98%" not in table  # a sequential report shows no chance to win
    assert "Sequential test: valid however often you look" in page
    assert "verdict-better" in page and 'id="lift-chart"' in page
    lift = json.loads(re.search(r'id="lift-data">(.*?)</script>', page).group(1))
    assert lift["labels"] == ["2026-11-20", "2026-11-21", "2026-11-22"]
    assert lift["series"][0]["upper"] == [0.24, 0.23, 0.23]
    assert "landing → cart: −37.5%" in page and "largest drop-off" not in page
    heat = page[page.index('<table class="heatmap"'):]
    heat = heat[:heat.index("</table>")]
    assert heat.count('class="heat-cell') == 5 * 10  # journey steps × friction kinds
    assert heat.count("heat-significant") == 1 and "−43%" in heat


def test_heatmap_colours_only_the_significant_friction_points_and_shows_counts(app):
    seed_experiment(app)
    matrix = [{"step": "cart", "friction_kind": "rage_click", "variant": "one-page",
               "rate": 0.02, "control_rate": 0.01, "relative_effect": 1.0,
               "adjusted_p_value": 0.4, "significant": False, "count": 99, "units": 4988,
               "control_count": 50, "control_units": 5012}]
    insert_report(app, friction_matrix=matrix)  # + the report's one significant point
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    heat = page[page.index('<table class="heatmap"'):]
    heat = heat[:heat.index("</table>")]
    assert heat.count("heat-grey") == 1 and "+100%" in heat  # noise: grey, with its number
    assert heat.count("heat-bad") == 0 and heat.count("heat-good heat-significant") == 1
    assert 'data-step="payment" data-kind="error"' in heat
    assert "2.0% (99 / 4,988 units) vs 1.0% (50 / 5,012 units) in control" in heat
    counts = page[page.index('<details class="friction-counts">'):]
    assert "2.0% (99 / 4,988 units)" in counts[:counts.index("</details>")]
    top = page[page.index('class="top-friction-list"'):]
    assert "Less <strong>error</strong> at <strong>payment</strong>" in top[:top.index("</ol>")]


def test_srm_banner_and_history_navigation(app):
    seed_experiment(app)
    old_id = insert_report(app, age_hours=24, srm={"p_value": 0.00001, "detected": True})
    insert_report(app)
    client = logged_in(app, "viewer")
    latest = client.get("/admin/experiments/checkout-redesign").get_data(as_text=True)
    assert "srm-banner" not in latest and f"?report={old_id}" in latest
    old = client.get(f"/admin/experiments/checkout-redesign?report={old_id}").get_data(
        as_text=True)
    assert "Sample ratio mismatch" in old and "See the latest" in old
    for bad in ("999999", "99999999999999999999", "x"):
        response = client.get(f"/admin/experiments/checkout-redesign?report={bad}")
        assert response.status_code == 404


def test_degenerate_report_renders_without_error(app):
    seed_experiment(app)
    insert_report(app, metrics=[{"key": "purchase", "kind": "conversion", "role": "primary",
                                 "variants": [], "comparisons": [],
                                 "warnings": ["no units"]}],
                  funnel=[], timeline=[], friction_points=[], units={}, decision=None,
                  srm={"p_value": None, "detected": False}, warnings=["no exposed units yet"])
    response = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "no exposed units yet" in page
    assert "No timeline in this report yet" in page


def test_unknown_experiment_is_an_html_404(app):
    response = logged_in(app, "viewer").get("/admin/experiments/nope")
    assert response.status_code == 404 and "no experiment with key" in response.get_data(
        as_text=True)
    assert response.mimetype == "text/html"


def test_export_downloads_match_the_latest_report(app):
    seed_experiment(app)
    report_id = insert_report(app)
    client = logged_in(app, "viewer")
    response = client.get("/admin/experiments/checkout-redesign/export.csv")
    assert response.headers["Content-Disposition"].endswith('checkout-redesign-results.csv"')
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(r["metric"], r["variant"], r["verdict"]) for r in rows] == [
        ("purchase", "control", ""), ("purchase", "one-page", "better"),
        ("payment-errors", "control", ""), ("payment-errors", "one-page", "better")]
    exported = client.get("/admin/experiments/checkout-redesign/export.json").get_json()
    assert exported["report_id"] == report_id and len(exported["rows"]) == 4
    assert client.get("/admin/experiments/checkout-redesign/export.xml").status_code == 404


def test_analyze_button_stores_a_report(app):
    seed_experiment(app)
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/checkout-redesign/analyze",
                    follow_redirects=True)
    assert "Analysis complete." in response.get_data(as_text=True)
    assert 'class="decision decision-keep_running"' in response.get_data(as_text=True)


def test_simulate_button_only_exists_in_demo_mode(app):
    seed_experiment(app)
    client = logged_in(app, "editor")
    assert post(client, "/admin/experiments/checkout-redesign/simulate").status_code == 404



def test_simulate_button_sends_visitors_in_demo_mode(database_url, tmp_path):
    from tests.conftest import make_test_app

    app = make_test_app(database_url, tmp_path, DEMO=True)
    try:
        seed_experiment(app, targeting=[])
        client = logged_in(app, "editor")
        page = client.get("/admin/experiments/checkout-redesign").get_data(as_text=True)
        assert "Simulate traffic" in page
        response = post(client, "/admin/experiments/checkout-redesign/simulate", {"units": "200"},
                        follow_redirects=True)
        assert "Simulated 200 visitors; 200 entered the experiment" in response.get_data(
            as_text=True)
        refused = post(client, "/admin/experiments/checkout-redesign/simulate",
                       {"units": "lots"}, follow_redirects=True)
        assert "Visitors: must be a whole number" in refused.get_data(as_text=True)
        with get_db(app).session() as session:
            from experiments.models import Exposure
            assert session.query(Exposure).count() == 200
    finally:
        get_db(app).engine.dispose()


def harmed_report_metrics() -> list[dict[str, Any]]:
    """The support report's metrics with the guardrail turned worse for one-page."""
    from tests.test_admin_support import report_body

    metrics = report_body()["metrics"]
    metrics[1]["comparisons"][0].update(relative_effect=0.43, verdict="worse")
    return metrics


def test_conclude_form_lists_ship_risks_and_needs_the_confirmation(app):
    seed_experiment(app)
    insert_report(app, metrics=harmed_report_metrics())
    client = logged_in(app, "editor")
    page = client.get("/admin/experiments/checkout-redesign").get_data(as_text=True)
    (raw,) = re.findall(r'data-ship-risks="([^"]*)"', page)
    risks = json.loads(html.unescape(raw))
    assert risks == {"control": [], "one-page": [
        "guardrail payment-errors is significantly worse for one-page (+43.0%)"]}
    assert 'name="acknowledge_risks"' in page
    refused = post(client, "/admin/experiments/checkout-redesign/conclude",
                   {"outcome": "ship", "winner": "one-page", "acknowledge_risks": ""},
                   follow_redirects=True)
    assert "shipping one-page is risky" in html.unescape(refused.get_data(as_text=True))
    assert load(app, "checkout-redesign")["status"] == "running"
    post(client, "/admin/experiments/checkout-redesign/conclude",
         {"outcome": "ship", "winner": "one-page", "acknowledge_risks": "1"})
    saved = load(app, "checkout-redesign")
    assert saved["status"] == "concluded"
    assert saved["decision"]["reasons"][1] == ("risk acknowledged: guardrail payment-errors is "
                                               "significantly worse for one-page (+43.0%)")


def test_iterate_from_the_shipped_winner_in_the_ui(app):
    seed_experiment(app)
    client = logged_in(app, "editor")
    post(client, "/admin/experiments/checkout-redesign/conclude",
         {"outcome": "ship", "winner": "one-page", "learnings": "works"})
    page = client.get("/admin/experiments/checkout-redesign").get_data(as_text=True)
    assert 'value="One-page checkout (iteration 2)"' in page
    assert "Start from the shipped winner (one-page)" in page
    response = post(client, "/admin/experiments/checkout-redesign/iterate",
                    {"new_key": "checkout-redesign-2", "new_name": "Checkout v2",
                     "from_winner": "1"})
    assert response.headers["Location"] == "/admin/experiments/checkout-redesign-2/edit"
    child = load(app, "checkout-redesign-2")
    assert child["name"] == "Checkout v2"
    assert child["variants"][0]["payload"] == {"layout": "single"}


def test_bayesian_report_shows_chance_to_win_and_no_p_value(app):
    seed_experiment(app)
    body = report_body()
    for metric in body["metrics"]:
        for comparison in metric["comparisons"]:
            comparison.update(p_value=None, adjusted_p_value=None)
    insert_report(app, method="bayesian", metrics=body["metrics"])
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    table = page[page.index('id="metrics-table"'):]
    table = table[:table.index("</table>")]
    assert "Chance to win" in table and "p-value" not in table
    assert "98%" in table and "0.030" not in table
    assert "Bayesian: chance to beat control" in page


def test_report_alerts_are_listed_in_red_and_nps_changes_are_in_points(app):
    seed_experiment(app)
    nps = {"key": "nps", "kind": "nps", "role": "secondary",
           "variants": [{"variant": "control", "units": 400, "estimate": 12.0,
                         "promoters": 150, "detractors": 102},
                        {"variant": "one-page", "units": 410, "estimate": 15.5}],
           "comparisons": [{"variant": "one-page", "absolute_effect": 3.5,
                            "absolute_ci": [-1.25, 8.25], "relative_effect": None,
                            "relative_ci": None, "p_value": 0.2, "adjusted_p_value": 0.4,
                            "chance_to_win": None, "expected_loss": None,
                            "significant": False, "verdict": "inconclusive"}]}
    alert = {"kind": "guardrail_breach", "metric": "payment-errors", "variant": "one-page",
             "message": "payment-errors is significantly worse for one-page"}
    insert_report(app, metrics=[*report_body()["metrics"], nps], alerts=[alert])
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    alerts = page[page.index('id="alerts"'):]
    assert "payment-errors is significantly worse for one-page" in alerts[:alerts.index("</ul>")]
    assert "+3.5 points" in page and "[−1.2, +8.2] points" in page
    assert "0.400" in page and "raw 0.200" in page


def test_a_raw_p_value_is_shown_only_when_it_reads_differently(app):
    """Holm made 0.0001 into 0.0004: both read "<0.001", so "raw <0.001" said nothing."""
    seed_experiment(app)
    metrics = report_body()["metrics"]
    comparison = {**metrics[0]["comparisons"][0], "p_value": 0.0001, "adjusted_p_value": 0.0004}
    metrics[0] = {**metrics[0], "comparisons": [comparison]}
    insert_report(app, metrics=metrics)
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    table = page[page.index('id="metrics-table"'):page.index("</table>", page.index(
        'id="metrics-table"'))]
    assert "&lt;0.001" in table and "raw" not in table


def test_an_nps_primary_has_no_empty_lift_chart(app):
    """NPS effects are in points (no relative lift): the page says where its chart is."""
    seed_experiment(app)
    points = [{"date": "2026-11-20", "variant": "one-page", "units": 300, "relative_effect": None,
               "relative_ci": None, "absolute_effect": 3.5, "absolute_ci": [-1.0, 8.0]}]
    insert_report(app, timeline=points, metric_timeline=[{
        "metric": "nps", "kind": "nps", "points": [{
            "date": "2026-11-20", "variant": "one-page",
            "daily": {"units": 300, "control_units": 290, "absolute_effect": 3.5,
                      "absolute_ci": [-1.0, 8.0]},
            "cumulative": {"units": 300, "control_units": 290, "absolute_effect": 3.5,
                           "absolute_ci": [-1.0, 8.0]}}]}])
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    assert 'id="lift-chart"' not in page
    assert "The primary metric has no relative lift (NPS is in points)" in page


def test_a_lift_whose_interval_is_unbounded_is_not_drawn(app):
    """The demo's first two days read +25 % and +61 % lifts with no band at all: their
    relative intervals are null (the control's rate not yet told from 0, SPEC §6), so
    the chart leaves those points out and the page and its data table say why."""
    from admin.presenters import lift_chart

    seed_experiment(app)
    points = [{"date": "2026-11-21", "variant": "one-page", "units": 48,
               "relative_effect": 0.25, "relative_ci": None},
              {"date": "2026-11-22", "variant": "one-page", "units": 249,
               "relative_effect": 0.61, "relative_ci": None},
              {"date": "2026-11-23", "variant": "one-page", "units": 427,
               "relative_effect": 0.25, "relative_ci": [-0.45, 1.95]}]
    chart = lift_chart({"timeline": points})
    assert chart["series"][0]["unbounded"] == [True, True, False]
    assert chart["series"][0]["effect"] == [0.25, 0.61, 0.25]  # kept for the data table
    assert chart["unbounded_days"] == 2
    insert_report(app, timeline=points)
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    note = "2 days not drawn: the control's rate could not yet be told from 0"
    assert note in html.unescape(page)
    table = page[page.index('id="lift-data"'):]
    table = table[table.index("<tbody>"):table.index("</tbody>")]
    assert table.count(">unbounded<") == 2 and "[−45.0%, +195.0%]" in table

    bounded = lift_chart({"timeline": points[2:]})
    assert bounded["unbounded_days"] == 0 and bounded["series"][0]["unbounded"] == [False]


def test_an_iterations_power_estimate_starts_from_its_parents_observed_control(app):
    """The draft of an iteration plans on the control rate its parent's report observed."""
    seed_experiment(app)
    insert_report(app)  # purchase: control 10.1 %
    client = logged_in(app, "editor")
    post(client, "/admin/experiments/checkout-redesign/iterate",
         {"new_key": "checkout-redesign-2", "new_name": "Checkout v2"})
    page = html.unescape(client.get("/admin/experiments/checkout-redesign-2").get_data(
        as_text=True))
    assert "of purchase on a 10.1% baseline (observed in the previous iteration" in page


def test_saving_the_edit_form_unchanged_changes_nothing(app):
    """The form had no field for ``time_on_step``: saving it, even unchanged, switched time
    on step off (the analysis settings are replaced as a whole). Every field of a rich
    experiment (caps, ratio, quantile, friction, bandit, layer, segments) survives."""
    metrics = [
        {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary"},
        {"key": "revenue", "kind": "mean", "event": "purchase", "role": "secondary",
         "cap": {"type": "percentile", "value": 0.99}},
        {"key": "per-click", "kind": "ratio", "numerator": "purchase", "denominator": "click",
         "role": "secondary"},
        {"key": "pay-p90", "kind": "quantile", "quantile": 0.9, "source": "step_duration",
         "step": "payment", "role": "secondary", "direction": "decrease"},
        {"key": "errors", "kind": "friction", "step": "payment", "friction_kind": "error",
         "role": "guardrail"},
        {"key": "nps", "kind": "nps", "event": "nps", "role": "secondary"}]
    seed_experiment(app, start=False, metrics=metrics, layer="checkout",
                    journey=["landing", "cart", "checkout", "payment"],
                    analysis={"time_on_step": True, "cuped": False, "method": "bayesian",
                              "dimensions": ["country"], "min_days": 3},
                    allocation={"type": "bandit", "min_weight": 0.05})
    before = load(app, "checkout-redesign")
    client = logged_in(app, "editor")
    page = client.get("/admin/experiments/checkout-redesign/edit").get_data(as_text=True)
    form = submitted_form(page, "experiment-form")
    assert form["analysis_time_on_step"] == "on" and "analysis_cuped" not in form
    response = post(client, "/admin/experiments/checkout-redesign/edit", form)
    assert response.status_code == 302, response.get_data(as_text=True)[-3000:]
    after = load(app, "checkout-redesign")
    unchanged = {name: value for name, value in before.items()
                 if name not in ("version", "updated_at")}
    assert {name: after[name] for name in unchanged} == unchanged
    form.setlist("analysis_time_on_step", [])
    assert post(client, "/admin/experiments/checkout-redesign/edit", form).status_code == 302
    assert load(app, "checkout-redesign")["analysis"]["time_on_step"] is False
