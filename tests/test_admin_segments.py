"""Admin: quantile metrics and dimensions in the form, segments and quantiles on the report."""

from __future__ import annotations

import csv
import io
import json

from experiments.db import get_db
from experiments.services.lifecycle import experiment_to_dict, get_experiment
from experiments.services.segments import QUANTILE_HETEROGENEITY_NOTE, SLICE_WARNING
from tests.test_admin_experiments import errors_on, form_data
from tests.test_admin_support import (
    cheap_argon2,  # noqa: F401  (autouse fixture)
    insert_report,
    logged_in,
    post,
    report_body,
    seed_experiment,
)


def conversion(level, n, control, treatment, detected, adjusted_p):
    comparison = {"variant": "one-page", "absolute_effect": treatment - control,
                  "absolute_ci": [treatment - control - 0.01, treatment - control + 0.01],
                  "relative_effect": (treatment - control) / control, "relative_ci": None,
                  "p_value": adjusted_p / 4, "adjusted_p_value": adjusted_p,
                  "chance_to_win": None, "expected_loss": None,
                  "significant": adjusted_p < 0.05,
                  "verdict": "better" if adjusted_p < 0.05 else "inconclusive"}
    return {"level": level, "units": {"control": n, "one-page": n},
            "srm": {"p_value": 0.5, "detected": False},
            "metrics": [{"key": "purchase", "kind": "conversion", "role": "primary",
                         "direction": "increase",
                         "variants": [{"variant": "control", "units": n, "estimate": control},
                                      {"variant": "one-page", "units": n, "estimate": treatment}],
                         "comparisons": [comparison]}],
            "heterogeneity": [{"metric": "purchase", "variant": "one-page",
                               "effect": treatment - control, "rest_effect": 0.005,
                               "p_value": adjusted_p / 4 if n >= 100 else None,
                               "adjusted_p_value": 0.0024 if detected else (
                                   1.0 if n >= 100 else None),
                               "detected": detected}],
            "friction_points": [],
            "warnings": [] if n >= 100 else ["fewer than 100 units in some variant: "
                                             "estimates only, no tests"]}


SEGMENTS = [
    {"dimension": "country", "merged_levels": 5, "warnings": [], "levels": [
        conversion("FR", 812, 0.10, 0.13, True, 0.004),
        conversion("DE", 790, 0.10, 0.105, False, 0.6),
        conversion("__other__", 60, 0.10, 0.2, False, 1.0)]},
    {"dimension": "device", "merged_levels": 0, "warnings": [], "levels": [
        conversion("mobile", 900, 0.10, 0.11, False, 0.3)]},
]
PAYMENT_P90 = {"key": "payment-time-p90", "kind": "quantile", "role": "secondary",
               "direction": "decrease", "quantile": 0.9, "source": "step_duration",
               "step": "payment",
               "variants": [{"variant": "control", "units": 3000, "estimate": 41.5},
                            {"variant": "one-page", "units": 3000, "estimate": 33.0}],
               "comparisons": [{"variant": "one-page", "absolute_effect": -8.5,
                                "absolute_ci": [-12.0, -5.0], "relative_effect": -0.2048,
                                "relative_ci": [-0.29, -0.12], "p_value": 0.0001,
                                "adjusted_p_value": 0.0002, "chance_to_win": None,
                                "expected_loss": None, "significant": True,
                                "verdict": "better"}]}


def test_form_saves_a_quantile_metric_and_dimensions(app):
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/new", form_data(
        metric_key=["purchase", "payment-p90"], metric_kind=["conversion", "quantile"],
        metric_step=["", "payment"], metric_friction_kind=["", ""],
        metric_quantile=["", "0.9"], metric_source=["", "step_duration"],
        analysis_dimensions="country, device"))
    assert response.status_code == 302, errors_on(response.get_data(as_text=True))
    with get_db(app).session() as session:
        created = experiment_to_dict(get_experiment(session, "address-autocomplete"))
    p90 = created["metrics"][1]
    assert (p90["kind"], p90["quantile"], p90["source"], p90["step"], p90["direction"]) == (
        "quantile", 0.9, "step_duration", "payment", "decrease")
    assert created["analysis"]["dimensions"] == ["country", "device"]
    edit = client.get("/admin/experiments/address-autocomplete/edit").get_data(as_text=True)
    assert 'value="country, device"' in edit and 'name="metric_quantile" value="0.9"' in edit


def test_form_names_bad_quantile_fields_and_dimensions(app):
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/new", form_data(
        metric_key=["purchase", "payment-p90"], metric_kind=["conversion", "quantile"],
        metric_step=["", ""], metric_friction_kind=["", ""],
        metric_quantile=["", "1.5"], metric_source=["", "step_duration"],
        analysis_dimensions="a, b, c, d"))
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    errors = errors_on(page)
    assert errors["f-metrics-1-quantile"] == "must be 0.99 or less"
    assert "at most 3 allowed" in page and "Segment dimensions" in page
    response = post(client, "/admin/experiments/new", form_data(
        metric_key=["purchase", "payment-p90"], metric_kind=["conversion", "quantile"],
        metric_step=["", ""], metric_friction_kind=["", ""],
        metric_quantile=["", "0.9"], metric_source=["", "step_duration"]))
    assert errors_on(response.get_data(as_text=True))["f-metrics-1-step"] == (
        "is required for a step_duration quantile metric")


def test_report_page_shows_segments_with_picker_verdicts_flag_and_warning(app):
    seed_experiment(app)
    insert_report(app, segments=SEGMENTS)
    client = logged_in(app, "viewer")
    page = client.get("/admin/experiments/checkout-redesign").get_data(as_text=True)
    section = page[page.index('id="segments"'):page.index('aria-labelledby="funnel-title"')]
    assert "Slices are for hypotheses, not decisions" in section
    assert 'dimension=country#segments" aria-current="page"' in section
    assert 'dimension=device#segments"' in section
    assert section.count('class="segment-level"') == 3  # country is picked first
    fr = section[section.index('data-level="FR"'):section.index('data-level="DE"')]
    assert "Effect differs from the rest" in fr and "yes (p 0.002)" in fr
    assert "verdict-better" in fr and "+3.00 pts" in fr
    de = section[section.index('data-level="DE"'):section.index('data-level="__other__"')]
    assert "Effect differs from the rest" not in de and "verdict-inconclusive" in de
    other = section[section.index('data-level="__other__"'):]
    assert "fewer than 100 units" in other and "1 note on this level</summary>" in other
    assert "5 smaller values are grouped" in section
    device = client.get("/admin/experiments/checkout-redesign?dimension=device").get_data(
        as_text=True)
    picked = device[device.index('id="segments"'):]
    assert 'dimension=device#segments" aria-current="page"' in picked
    assert 'data-level="mobile"' in picked and 'data-level="FR"' not in picked


def _segment_section(app, segments, **report):
    seed_experiment(app)
    insert_report(app, segments=segments, **report)
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    return page[page.index('id="segments"'):page.index('aria-labelledby="funnel-title"')]


def _row(section, level):
    row = section[section.index(f'data-level="{level}"'):]
    row = row[row.index('<th scope="row">purchase'):]
    return row[:row.index("</tr>")]


def test_segment_table_says_which_p_is_adjusted_and_explains_an_interval_without_verdict(app):
    # ES: its own p 0.02 and an interval excluding 0, but BH over the dimension's 4 tests
    # gives 0.08: inconclusive, which the row explains instead of contradicting it.
    spain = conversion("ES", 700, 0.10, 0.12, False, 0.08)
    spain["metrics"][0]["comparisons"][0]["absolute_ci"] = [0.004, 0.036]
    country = {**SEGMENTS[0], "levels": [*SEGMENTS[0]["levels"], spain]}
    section = _segment_section(app, [country])
    head = section[section.index("<thead>"):section.index("</thead>")]
    assert "p <span class=\"small muted\">(adjusted)</span>" in head
    assert "(95%, unadj.)" in head
    assert ("adjusted (Benjamini–Hochberg) over the 4 tested comparisons of country"
            in section)
    es = _row(section, "ES")
    assert "0.080" in es and "own 0.020" in es and "verdict-inconclusive" in es
    assert ("Its interval alone excludes 0, but not significant once adjusted for the 4 "
            "comparisons of country.") in es
    fr = _row(section, "FR")  # significant and its interval excludes 0: nothing to explain
    assert "verdict-better" in fr and "0.004" in fr and "own 0.001" in fr
    assert "segment-reading" not in fr
    de = _row(section, "DE")  # its interval includes 0: nothing to explain either
    assert "verdict-inconclusive" in de and "segment-reading" not in de


def test_bayesian_segment_table_says_its_numbers_are_unadjusted(app):
    level = conversion("FR", 812, 0.10, 0.13, False, 0.5)
    level["metrics"][0]["comparisons"][0].update(
        p_value=None, adjusted_p_value=None, chance_to_win=0.96, significant=True,
        verdict="better", absolute_ci=[-0.001, 0.061])
    section = _segment_section(app, [{"dimension": "country", "merged_levels": 0,
                                      "warnings": [], "levels": [level]}], method="bayesian")
    head = section[section.index("<thead>"):section.index("</thead>")]
    assert "Chance to win <span class=\"small muted\">(unadj.)</span>" in head
    assert "credible intervals are each row's own, not adjusted" in section
    fr = _row(section, "FR")
    assert "96%" in fr and "verdict-better" in fr
    assert ("Its chance to win passes 95% (one side); its 95% interval covers both sides "
            "and still includes 0.") in fr


def test_a_dimension_note_is_shown_once_above_its_levels(app):
    note = QUANTILE_HETEROGENEITY_NOTE.format("payment-time-p90")
    country = {**SEGMENTS[0], "warnings": [SLICE_WARNING, note]}
    section = _segment_section(app, [country])
    assert section.count(note) == 1
    assert section.index(note) < section.index('class="segment-level"')
    assert SLICE_WARNING not in section  # the page says it in its own words


def test_a_report_without_segments_has_no_segments_section(app):
    seed_experiment(app)
    insert_report(app)
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    assert 'id="segments"' not in page


def test_quantile_metric_reads_as_seconds_on_the_report(app):
    seed_experiment(app)
    insert_report(app, metrics=[*report_body()["metrics"], PAYMENT_P90])
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    group = page[page.index('data-metric="payment-time-p90"'):]
    group = group[:group.index("</tbody>")]
    assert "p90 of time on payment" in group
    assert "41.5 s" in group and "33 s" in group and "−8.5 s" in group


def test_export_has_segment_rows(app):
    seed_experiment(app)
    insert_report(app, segments=SEGMENTS)
    client = logged_in(app, "viewer")
    text = client.get("/admin/experiments/checkout-redesign/export.csv").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4 + 2 * 4
    fr = [r for r in rows if r["level"] == "FR"]
    assert [(r["dimension"], r["variant"], r["heterogeneity_detected"]) for r in fr] == [
        ("country", "control", ""), ("country", "one-page", "True")]
    exported = client.get("/admin/experiments/checkout-redesign/export.json").get_json()
    assert json.dumps(exported["rows"][-1]["level"]) == '"mobile"'


def test_the_report_table_explains_an_interval_that_excludes_0_without_a_verdict(app):
    """The whole report's p are adjusted over its metrics (Holm by default), its intervals
    are each row's own: a row whose interval excludes 0 but whose adjusted p does not pass
    says why, and the footer names the correction."""
    metrics = report_body()["metrics"]
    metrics[0]["comparisons"][0].update(p_value=0.03, adjusted_p_value=0.09,
                                        significant=False, verdict="inconclusive")
    seed_experiment(app)
    insert_report(app, metrics=metrics)
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    table = page[page.index('aria-labelledby="metrics-title"'):]
    table = table[:table.index("</section>")]
    purchase = table[table.index('data-metric="purchase"'):]
    purchase = purchase[:purchase.index("</tbody>")]
    assert "0.090" in purchase and "raw 0.030" in purchase
    assert ("Its interval alone excludes 0, but not significant once adjusted for the "
            "several metrics and variants of the report.") in purchase
    errors = table[table.index('data-metric="payment-errors"'):]
    assert "interval-reading" not in errors[:errors.index("</tbody>")]  # they agree
    assert "adjusted for multiple comparisons (Holm over every variant" in table
