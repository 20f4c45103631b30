"""The admin funnel table shows the p50/p90 time on each step per variant (SPEC §11)."""

from __future__ import annotations

from admin import format as fmt
from tests.test_admin_support import insert_report, logged_in, report_body, seed_experiment


def _cell(units: int, p50: float | None, p90: float | None, n: int) -> dict[str, object]:
    return {"units": units, "rate": units / 5000, "from_previous": 1.0,
            "time_on_step": {"p50": p50, "p90": p90, "n": n}}


def test_the_funnel_table_shows_time_on_step(app):
    seed_experiment(app)
    insert_report(app, funnel=[
        {"step": "cart", "variants": {"control": _cell(3100, 42.5, 125.0, 2900),
                                      "one-page": _cell(3150, 30.0, 5400.0, 3000)}},
        {"step": "payment", "variants": {"control": _cell(2500, None, None, 0),
                                         "one-page": _cell(2700, None, None, 0)}}])
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    table = page[page.index('id="funnel-table"'):]
    table = table[:table.index("</table>")]
    assert table.count("time on step p50 / p90") == 2  # one column per variant
    assert ('title="p50 / p90 over the 2,900 units that moved on">42.5 s / 2 min 5 s<'
            in table)
    assert "30 s / 1 h 30 min" in table and "– / –" in table


def test_reports_without_time_on_step_keep_the_plain_table(app):
    seed_experiment(app)
    insert_report(app)  # a report stored before time on step existed
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    assert 'id="funnel-table"' in page and "time on step" not in page


def test_durations_read_like_people_say_them():
    assert [fmt.duration(v) for v in (0.25, 59.4, 60, 3599.6, 3600, 90061, None)] == [
        "0.25 s", "59.4 s", "1 min 0 s", "1 h 0 min", "1 h 0 min", "25 h 1 min", "–"]


def test_metric_values_in_seconds_read_as_durations_and_others_keep_their_unit():
    assert fmt.estimate_in("quantile", 161.1, "s") == "2 min 41 s"
    assert fmt.effect_in("quantile", 0.40843, "s") == "+0.408 s"
    assert fmt.effect_in("quantile", -65.0, "s") == "−1 min 5 s"
    assert fmt.effect_interval_in("quantile", [-6.36, 9.802], "s") == "[−6.36 s, +9.80 s]"
    assert fmt.effect_interval_in("quantile", None, "s") == "–"
    assert fmt.estimate_in("quantile", 12.5, "") == "12.50"  # 4 significant digits
    assert fmt.estimate_in("mean", 3.0, "€") == "3 €" and fmt.effect_in("mean", None, "€") == "–"
    assert fmt.effect_interval_in("conversion", [0.001, 0.038]) == "[+0.10, +3.80] pts"


def test_a_metric_note_is_said_in_its_row_not_again_above_the_report(app):
    """The demo said 'payment-time-p90: quantile metrics use a fixed-horizon test…' twice:
    above the report and in the metric's row. Notes of no metric stay above."""
    note = "payment-errors: quantile metrics use a fixed-horizon test, not a sequential one"
    seed_experiment(app)
    metrics = report_body()["metrics"]
    variant_note = "payment-errors, one-page: the control's interval includes 0"
    assert metrics[1]["key"] == "payment-errors"
    metrics[1] = {**metrics[1], "warnings": [note, variant_note]}
    insert_report(app, metrics=metrics,
                  warnings=[note, variant_note, "a note of the whole report"])
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    in_its_row = note.removeprefix("payment-errors: ")  # the row names the metric
    assert page.count(note) == 0 and page.count(in_its_row) == 1
    assert page.index(in_its_row) > page.index('id="metrics-table"')
    assert page.count("a note of the whole report") == 1
    assert page.count("payment-errors, one-page") == 0
    assert page.count("one-page: the control&#39;s interval includes 0") == 1
