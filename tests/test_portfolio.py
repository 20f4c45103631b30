"""Portfolio (SPEC §8): running and paused experiments with progress to power and health."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import proportion_effectsize

from experiments.db import get_db, utcnow
from experiments.models import Event, Experiment, Exposure, Report
from experiments.services.analysis import analyze_experiment
from tests.factories import experiment_payload
from tests.test_admin_support import logged_in
from tests.test_bandits import bandit_payload

URL = "/api/v1/portfolio"


FIXED_HORIZON = {**experiment_payload()["analysis"], "method": "frequentist"}


def create(client, headers, key: str, *, start: bool = True, **overrides: Any) -> None:
    """An experiment through the API, started unless told otherwise."""
    payload = experiment_payload(key, layer=None, targeting=[], overrides={}, **overrides)
    assert client.post("/api/v1/experiments", json=payload, headers=headers).status_code == 201
    if start:
        assert client.post(f"/api/v1/experiments/{key}/start",
                           headers=headers).status_code == 200


def report_body(key: str, units: dict[str, int], *, control_rate: float = 0.10,
                guardrail_verdict: str = "flat", srm: bool = False,
                **extra: Any) -> dict[str, Any]:
    """A minimal SPEC §6 report: primary conversion, one guardrail."""
    treatment = [v for v in units if v != "control"]
    return {
        "experiment": key, "method": "sequential", "units": units,
        "srm": {"p_value": 0.0001 if srm else 0.6, "detected": srm},
        "metrics": [
            {"key": "purchase", "kind": "conversion", "role": "primary",
             "variants": [{"variant": v, "units": n,
                           "estimate": control_rate if v == "control" else 0.12}
                          for v, n in units.items()],
             "comparisons": [{"variant": v, "verdict": "better"} for v in treatment]},
            {"key": "payment-errors", "kind": "friction", "role": "guardrail",
             "variants": [], "comparisons": [{"variant": v, "verdict": guardrail_verdict}
                                             for v in treatment]},
        ],
        "decision": {"outcome": "keep_running", "winner": None, "reasons": []},
        **extra,
    }


def store_report(app, key: str, body: dict[str, Any], *, started_days_ago: float,
                 age: timedelta = timedelta(minutes=1)) -> None:
    """Backdate the start and store ``body`` as the latest report, ``age`` old."""
    with get_db(app).session() as session:
        experiment = session.scalar(select(Experiment).where(Experiment.key == key))
        now = utcnow()
        experiment.started_at = now - timedelta(days=started_days_ago)
        session.add(Report(experiment_id=experiment.id, computed_at=now - age,
                           method="sequential", body=body))


def items_by_key(client, headers) -> dict[str, dict[str, Any]]:
    response = client.get(URL, headers=headers)
    assert response.status_code == 200
    return {item["key"]: item for item in response.get_json()["items"]}


def test_days_left_come_from_the_power_calculator_and_the_observed_daily_rate(
        app, client, admin_headers):
    create(client, admin_headers, "checkout", analysis=FIXED_HORIZON)
    store_report(app, "checkout", report_body("checkout", {"control": 1000, "one-page": 800}),
                 started_days_ago=4, age=timedelta(0))
    item = items_by_key(client, admin_headers)["checkout"]

    # Reference (a fixed-horizon experiment): statsmodels directly, relative mde 5 % on
    # the observed 10 % control rate.
    effect = abs(proportion_effectsize(0.105, 0.10))
    needed = math.ceil(NormalIndPower().solve_power(effect_size=effect, alpha=0.05, power=0.8,
                                                    ratio=1.0, alternative="two-sided"))
    assert item["units_needed_per_variant"] == needed == 57_756
    assert item["baseline"] == pytest.approx(0.10)
    assert item["daily_units"] == pytest.approx(1800 / 4, rel=1e-3)
    # The slower variant (800 units in 4 days = 200/day) decides.
    assert item["days_left"] == math.ceil((needed - 800) / 200) == 285
    assert item["days_left_basis"] == "power"
    assert item["units"] == {"control": 1000, "one-page": 800}
    assert (item["days_running"], item["min_days"], item["max_days"]) == (4, 7, 28)
    assert item["owner"] == "journey-team@example.com" and item["status"] == "running"
    assert item["verdict"] == "better" and item["health"] == []
    # 4 days in, 285 more would end after the 28-day maximum: the page says so.
    page = logged_in(app, "viewer").get("/admin/").get_data(as_text=True)
    row = page[page.index('data-key="checkout"'):]
    assert "after the 28-day maximum" in row[:row.index("</tr>")]


def test_a_bandit_counts_days_to_its_maximum_not_to_a_power_sample(app, client,
                                                                   admin_headers):
    # Its weights move, so a fixed-allocation power calculation means nothing: no units
    # needed, days left to max_days, and what would end it sooner.
    payload = bandit_payload("banner", analysis={"min_days": 0, "max_days": 21})
    assert client.post("/api/v1/experiments", json=payload,
                       headers=admin_headers).status_code == 201
    assert client.post("/api/v1/experiments/banner/start",
                       headers=admin_headers).status_code == 200
    units = {"control": 900, "b": 1500, "c": 2100}
    body = report_body("banner", units, period_weighted=True,
                       p_best={"control": 0.02, "b": 0.15, "c": 0.83})
    store_report(app, "banner", body, started_days_ago=5, age=timedelta(0))
    item = items_by_key(client, admin_headers)["banner"]
    assert (item["days_running"], item["max_days"]) == (5, 21)
    assert (item["days_left"], item["days_left_basis"]) == (16, "max_days")
    assert item["units_needed_per_variant"] is None and item["baseline"] is None
    assert item["daily_units"] == pytest.approx(4500 / 5, rel=1e-3)
    assert item["progress_note"] == (
        "bandit: no fixed sample size; it ships when an arm's chance to be best reaches "
        "95% (now c: 83%), else it stops after 21 days")
    page = logged_in(app, "viewer").get("/admin/").get_data(as_text=True)
    row = page[page.index('data-key="banner"'):]
    row = row[:row.index("</tr>")]
    assert "16<div" in row and "to the 21-day maximum" in row
    assert "bandit: no fixed sample, may end sooner" in row
    assert "Enough units" not in row and "past-max" not in row and "/day" not in row
    assert "Bandit: no fixed sample size; it ships when" in row

    reached = report_body("banner", units, period_weighted=True,
                          p_best={"control": 0.01, "b": 0.02, "c": 0.97})
    store_report(app, "banner", reached, started_days_ago=5, age=timedelta(0))
    assert items_by_key(client, admin_headers)["banner"]["progress_note"] == (
        "bandit: no fixed sample size; it ships when an arm's chance to be best reaches "
        "95% (now c: 97%, reached), else it stops after 21 days")
    store_report(app, "banner", body, started_days_ago=23, age=timedelta(0))
    item = items_by_key(client, admin_headers)["banner"]
    assert (item["days_left"], item["days_left_basis"]) == (0, "max_days")
    page = logged_in(app, "editor").get("/admin/").get_data(as_text=True)
    row = page[page.index('data-key="banner"'):]
    assert "Maximum reached" in row[:row.index("</tr>")]


def test_the_experiments_alpha_power_and_mde_drive_the_units_needed(app, client, admin_headers):
    analysis = {**FIXED_HORIZON, "alpha": 0.01, "power": 0.9, "mde": 0.2}
    create(client, admin_headers, "strict", analysis=analysis)
    store_report(app, "strict", report_body("strict", {"control": 5000, "one-page": 5000},
                                            control_rate=0.2), started_days_ago=10,
                 age=timedelta(0))
    item = items_by_key(client, admin_headers)["strict"]
    effect = abs(proportion_effectsize(0.24, 0.20))
    needed = math.ceil(NormalIndPower().solve_power(effect_size=effect, alpha=0.01, power=0.9,
                                                    ratio=1.0, alternative="two-sided"))
    assert item["units_needed_per_variant"] == needed
    assert needed < 5000 and item["days_left"] == 0


MEAN_PRIMARY = [{"key": "revenue", "kind": "mean", "event": "purchase", "role": "primary",
                 "direction": "increase"}]


def seed_revenue(app, key: str, revenue: dict[str, list[float]], *, now, started_days_ago: float,
                 ) -> None:
    """Backdate the start; one exposure per value and, when it is not 0, one purchase."""
    with get_db(app).session() as session:
        experiment = session.scalar(select(Experiment).where(Experiment.key == key))
        experiment.started_at = now - timedelta(days=started_days_ago)
        exposed_at = now - timedelta(days=started_days_ago / 2)
        for variant, values in revenue.items():
            for i, value in enumerate(values):
                unit = f"{variant}-{i}"
                session.add(Exposure(experiment_id=experiment.id, unit_id=unit,
                                     variant_key=variant, exposed_at=exposed_at))
                if value:
                    session.add(Event(event_id=f"buy-{unit}", unit_id=unit, type="conversion",
                                      name="purchase", value=value,
                                      occurred_at=exposed_at + timedelta(hours=1)))


def t_test_units(baseline: float, sd: float, *, mde: float = 0.05, alpha: float = 0.05,
                 power: float = 0.8) -> int:
    """statsmodels directly: Cohen's d = |baseline × mde| / sd, two-sided, equal split."""
    return math.ceil(TTestIndPower().solve_power(effect_size=abs(baseline * mde) / sd,
                                                 alpha=alpha, power=power, ratio=1.0,
                                                 alternative="two-sided"))


def test_a_mean_primary_is_planned_with_the_control_mean_and_observed_sd(app, client,
                                                                          admin_headers):
    create(client, admin_headers, "basket", metrics=MEAN_PRIMARY, analysis=FIXED_HORIZON)
    rng = np.random.default_rng(42)
    revenue = {variant: [float(v) if rng.random() < 0.6 else 0.0
                         for v in rng.gamma(2.0, 25.0, size=n).round(2)]
               for variant, n in (("control", 40), ("one-page", 30))}
    now = utcnow()
    seed_revenue(app, "basket", revenue, now=now, started_days_ago=4)
    with get_db(app).session() as session:
        body = analyze_experiment(session, "basket", now=now).body
    control = next(v for v in body["metrics"][0]["variants"] if v["variant"] == "control")
    assert control["estimate"] == pytest.approx(np.mean(revenue["control"]), rel=1e-9)
    assert control["sd"] == pytest.approx(np.std(revenue["control"], ddof=1), rel=1e-9)

    item = items_by_key(client, admin_headers)["basket"]
    needed = t_test_units(np.mean(revenue["control"]), np.std(revenue["control"], ddof=1))
    assert item["units_needed_per_variant"] == needed
    assert item["baseline"] == pytest.approx(np.mean(revenue["control"]))
    assert item["progress_note"] is None and item["units"] == {"control": 40, "one-page": 30}
    # The slower variant (30 units in 4 days) decides.
    assert needed > 40 and item["days_left"] == math.ceil((needed - 30) / (30 / 4))


def primary_report(key: str, kind: str, control: dict[str, Any],
                   units: dict[str, int]) -> dict[str, Any]:
    """A report whose only metric is a ``kind`` primary with the given control entry."""
    return {"experiment": key, "method": "sequential", "units": units,
            "srm": {"p_value": 0.6, "detected": False},
            "metrics": [{"key": "score", "kind": kind, "role": "primary",
                         "variants": [{"variant": v, "units": n, "estimate": 1.0,
                                       **(control if v == "control" else {})}
                                      for v, n in units.items()],
                         "comparisons": []}]}


@pytest.mark.parametrize(("kind", "control", "expected"), [
    ("time_to_convert", {"estimate": 20.0, "sd": 15.0}, t_test_units(20.0, 15.0)),
    ("ratio", {"estimate": 3.5, "sd": 4.0}, t_test_units(3.5, 4.0)),
    ("nps", {"estimate": 32.0, "sd": 81.0}, t_test_units(32.0, 81.0)),
    # Count: the observed SD when the report has one, else Poisson (sd = sqrt(mean)).
    ("count", {"estimate": 2.0, "sd": 3.0}, t_test_units(2.0, 3.0)),
    ("count", {"estimate": 2.0}, t_test_units(2.0, math.sqrt(2.0))),
])
def test_every_kind_with_a_spread_is_planned_with_the_reports_sd(app, client, admin_headers,
                                                                  kind, control, expected):
    metric = {"key": "score", "kind": kind, "role": "primary", "direction": "increase",
              **({"numerator": "purchase", "denominator": "session"} if kind == "ratio"
                 else {} if kind == "nps" else {"event": "purchase"})}
    create(client, admin_headers, "planned", metrics=[metric], analysis=FIXED_HORIZON)
    store_report(app, "planned", primary_report("planned", kind, control,
                                                {"control": 500, "one-page": 400}),
                 started_days_ago=5, age=timedelta(0))
    item = items_by_key(client, admin_headers)["planned"]
    assert item["units_needed_per_variant"] == expected and item["progress_note"] is None
    assert item["days_left"] == math.ceil((expected - 400) / (400 / 5))


@pytest.mark.parametrize(("kind", "control", "note"), [
    ("mean", {"estimate": 12.0}, "the control has no observed standard deviation yet"),
    ("nps", {"estimate": 0.4, "sd": 70.0},
     "the control NPS (0.4 points) is too close to 0 for a relative minimum detectable effect"),
    ("mean", {"estimate": 12.0, "sd": 0.0},
     "power calculation impossible: baseline_sd must be a positive number"),
])
def test_without_a_usable_spread_or_baseline_the_progress_note_says_why(
        app, client, admin_headers, kind, control, note):
    metric = {"key": "score", "kind": kind, "role": "primary", "direction": "increase",
              **({} if kind == "nps" else {"event": "purchase"})}
    create(client, admin_headers, "unplanned", metrics=[metric])
    store_report(app, "unplanned", primary_report("unplanned", kind, control,
                                                  {"control": 50, "one-page": 50}),
                 started_days_ago=2)
    item = items_by_key(client, admin_headers)["unplanned"]
    assert item["units_needed_per_variant"] is None and item["days_left"] is None
    assert item["progress_note"] == note


def test_health_chips_read_the_reports_alerts(app, client, admin_headers):
    create(client, admin_headers, "alerted")
    alerts = [{"kind": "guardrail_breach", "metric": "payment-errors", "variant": "one-page",
               "message": "payment-errors is worse in one-page"},
              {"kind": "events_before_exposure", "metric": "purchase", "variant": "control",
               "message": "8 % of events before exposure"}]
    # The alerts list wins over the fallback (here SRM would otherwise be reported).
    store_report(app, "alerted", report_body("alerted", {"control": 10, "one-page": 10},
                                             srm=True, alerts=alerts), started_days_ago=1)
    health = items_by_key(client, admin_headers)["alerted"]["health"]
    assert [(c["kind"], c["metric"], c["variant"]) for c in health] == [
        ("guardrail_breach", "payment-errors", "one-page"),
        ("events_before_exposure", "purchase", "control")]


def test_without_alerts_srm_and_worse_guardrails_are_the_health_chips(app, client,
                                                                        admin_headers):
    create(client, admin_headers, "legacy")
    store_report(app, "legacy", report_body("legacy", {"control": 10, "one-page": 30}, srm=True,
                                            guardrail_verdict="worse"), started_days_ago=1)
    health = items_by_key(client, admin_headers)["legacy"]["health"]
    assert [(c["kind"], c["metric"], c["variant"]) for c in health] == [
        ("srm", None, None), ("guardrail_breach", "payment-errors", "one-page")]


def test_an_old_or_failed_analysis_is_flagged(app, client, admin_headers):
    create(client, admin_headers, "stale")
    create(client, admin_headers, "failed")
    interval = app.config["PARCOURS"].ANALYSIS_INTERVAL_S
    store_report(app, "stale", report_body("stale", {"control": 10, "one-page": 10}),
                 started_days_ago=2, age=timedelta(seconds=2 * interval + 60))
    store_report(app, "failed", {"experiment": "failed", "error": "warehouse unreachable"},
                 started_days_ago=2)
    items = items_by_key(client, admin_headers)
    assert [c["kind"] for c in items["stale"]["health"]] == ["stale"]
    failed = items["failed"]
    assert [c["kind"] for c in failed["health"]] == ["analysis_error"]
    assert failed["health"][0]["message"] == "warehouse unreachable"
    assert failed["units_needed_per_variant"] is None and failed["days_left"] is None


def test_only_running_and_paused_experiments_are_listed(app, client, admin_headers):
    create(client, admin_headers, "draft", start=False)
    create(client, admin_headers, "running")
    create(client, admin_headers, "paused")
    assert client.post("/api/v1/experiments/paused/pause",
                       headers=admin_headers).status_code == 200
    items = items_by_key(client, admin_headers)
    assert set(items) == {"running", "paused"}
    assert items["paused"]["status"] == "paused"
    assert [c["kind"] for c in items["running"]["health"]] == ["not_analyzed"]
    assert items["running"]["days_left"] is None and items["running"]["report_id"] is None


def test_the_portfolio_needs_an_admin_key(client, client_headers):
    assert client.get(URL).status_code == 401
    response = client.get(URL, headers=client_headers)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"]


def test_openapi_documents_the_portfolio(client):
    document = client.get("/openapi.json").get_json()
    operation = document["paths"]["/api/v1/portfolio"]["get"]
    assert operation["security"] == [{"bearer": []}]
    assert set(operation["responses"]) >= {"200", "401", "403"}
    entry = document["components"]["schemas"]["PortfolioEntry"]["properties"]
    assert {"days_left", "units_needed_per_variant", "health", "verdict"} <= set(entry)
    assert entry["days_left_basis"]["anyOf"][0]["enum"] == ["power", "max_days", "decided"]


@pytest.mark.parametrize("outcome", ["ship", "rollback", "no_difference"])
def test_a_decided_experiment_has_no_days_left(app, client, admin_headers, outcome):
    """The demo's sequential test shipped at 3,038 of the units its power needs and the
    portfolio still read '248 days left, after the 28-day maximum' beside 'Ship'."""
    create(client, admin_headers, "checkout")  # sequential: planned for its own test
    body = report_body("checkout", {"control": 1000, "one-page": 800},
                       decision={"outcome": outcome, "winner": None, "reasons": []})
    store_report(app, "checkout", body, started_days_ago=4, age=timedelta(0))
    item = items_by_key(client, admin_headers)["checkout"]
    assert (item["days_left"], item["days_left_basis"], item["decision"]) == (
        0, "decided", outcome)
    assert item["units_needed_per_variant"] == 126_753  # still said, as progress
    assert item["progress_note"] == ("decided at 1% of the 126,753 units per variant planned: "
                                     "the sequential test stays valid when it stops early")
    page = logged_in(app, "viewer").get("/admin/").get_data(as_text=True)
    row = page[page.index('data-key="checkout"'):]
    row = row[:row.index("</tr>")]
    assert "Decided" in row and "no more units needed" in row
    assert "Decided at 1% of the 126,753 units per variant planned" in row
    assert "past-max" not in row and "/day" not in row

    fixed = {**body, "method": "frequentist"}
    store_report(app, "checkout", fixed, started_days_ago=4, age=timedelta(0))
    assert items_by_key(client, admin_headers)["checkout"]["progress_note"].endswith(
        "a fixed-horizon p-value read before its planned sample overstates significance: "
        "confirm with the sequential method")

    keep = report_body("checkout", {"control": 1000, "one-page": 800},
                       decision={"outcome": "keep_running", "winner": None, "reasons": []})
    store_report(app, "checkout", keep, started_days_ago=4, age=timedelta(0))
    item = items_by_key(client, admin_headers)["checkout"]
    assert (item["days_left"], item["days_left_basis"]) == (math.ceil((126_753 - 800) / 200),
                                                            "power")
    assert item["progress_note"] is None


def test_a_sequential_experiment_is_planned_for_its_own_test(app, client, admin_headers):
    """Its always-valid intervals are wider than a fixed-horizon test's: at the 57,756
    units per variant that test needs (10 % control rate, +5 %), the sequential one has
    34 % power. The portfolio plans it with the sequential design (stats.power, checked
    there by simulation), so its days left are not half of what they will be."""
    from stats import sample_size

    create(client, admin_headers, "sequential")
    create(client, admin_headers, "fixed", analysis=FIXED_HORIZON)
    for key in ("sequential", "fixed"):
        store_report(app, key, report_body(key, {"control": 1000, "one-page": 800}),
                     started_days_ago=4, age=timedelta(0))
    items = items_by_key(client, admin_headers)
    planned = sample_size("conversion", baseline=0.10, mde=0.05, design="sequential")
    assert items["fixed"]["units_needed_per_variant"] == 57_756
    assert items["sequential"]["units_needed_per_variant"] == planned.units_per_variant == 126_753
    assert items["sequential"]["days_left"] == math.ceil((126_753 - 800) / 200) == 630


def test_a_rate_is_measured_over_at_least_one_day(app, client, admin_headers):
    create(client, admin_headers, "fresh")
    store_report(app, "fresh", report_body("fresh", {"control": 300, "one-page": 300}),
                 started_days_ago=0.1, age=timedelta(0))
    item = items_by_key(client, admin_headers)["fresh"]
    assert item["daily_units"] == pytest.approx(600)
    assert item["days_left"] == math.ceil((item["units_needed_per_variant"] - 300) / 300)


def test_the_favicon_is_served(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response.mimetype == "image/svg+xml"
    assert b"<svg" in response.get_data()
