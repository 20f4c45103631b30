"""Report assembly (SPEC §6) end to end on both backends: effects, SRM, guardrails, friction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from experiments import signals
from experiments.db import get_db
from experiments.models import Decision, Experiment, Report
from experiments.services.analysis import analyze_experiment, analyze_running
from tests.test_aggregation import (
    T0,
    event,
    expose,
    hours,
    make_experiment,
    seed_traffic,
)
from tests.test_failed_analysis import fail_analysis_of

NOW = T0 + timedelta(days=10)
ANALYSIS = {"method": "sequential", "alpha": 0.05, "power": 0.8, "mde": 0.05,
            "correction": "holm", "min_units_per_variant": 100, "min_days": 7,
            "max_days": 28, "conversion_window_hours": 72, "cuped": True,
            "auto_decide": True, "auto_conclude": False}
JOURNEY_METRICS = [
    {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary"},
    {"key": "revenue", "kind": "mean", "event": "purchase"},
    {"key": "payment-errors", "kind": "friction", "friction_kind": "error", "step": "payment",
     "role": "guardrail"},
]
REACH = {"landing": 1.0, "cart": 0.6, "checkout": 0.45, "payment": 0.3, "confirmation": 0.12}


def running(db: Session, key: str = "checkout", **analysis: Any) -> Experiment:
    """A running experiment with journey metrics, started 10 days before NOW."""
    experiment = make_experiment(db, key, metrics=JOURNEY_METRICS,
                                 analysis={**ANALYSIS, **analysis})
    experiment.started_at = T0
    db.commit()
    return experiment


def metric(body: dict[str, Any], key: str) -> dict[str, Any]:
    return next(m for m in body["metrics"] if m["key"] == key)


@pytest.fixture
def captured() -> Any:
    """Every domain signal sent, with whether its session was still inside a transaction."""
    sent: list[tuple[str, dict[str, Any], bool]] = []

    def receiver(sender: Session, event_type: str, data: dict[str, Any]) -> None:
        sent.append((event_type, data, sender.in_transaction()))

    for signal in signals.DOMAIN_SIGNALS:
        signal.connect(receiver)
    yield sent
    for signal in signals.DOMAIN_SIGNALS:
        signal.disconnect(receiver)


def test_a_known_effect_is_better_with_the_true_effect_inside_its_ci(db):
    experiment = running(db)
    seed_traffic(db, experiment, units={"control": 3000, "one-page": 3000},
                 conversion={"control": 0.10, "one-page": 0.15}, days=7)
    body = analyze_experiment(db, "checkout", now=NOW).body
    comparison = metric(body, "purchase")["comparisons"][0]
    assert comparison["variant"] == "one-page" and comparison["verdict"] == "better"
    low, high = comparison["absolute_ci"]
    assert low < 0.05 < high
    assert comparison["p_value"] < 0.001 and comparison["chance_to_win"] is None
    assert body["units"] == {"control": 3000, "one-page": 3000}
    assert body["decision"]["outcome"] == "ship" and body["decision"]["winner"] == "one-page"
    assert "primary metric purchase significantly better for one-page" in (
        body["decision"]["reasons"][0])


def test_an_a_a_test_is_not_shipped(db):
    experiment = running(db, method="frequentist")
    seed_traffic(db, experiment, units={"control": 2000, "one-page": 2000},
                 conversion={"control": 0.10, "one-page": 0.10}, days=7, seed=3)
    body = analyze_experiment(db, "checkout", now=NOW).body
    assert metric(body, "purchase")["comparisons"][0]["verdict"] in ("flat", "inconclusive")
    assert body["decision"]["outcome"] == "keep_running"
    body = analyze_experiment(db, "checkout", now=T0 + timedelta(days=29)).body
    assert body["decision"]["outcome"] == "no_difference"


def test_a_52_48_split_is_a_sample_ratio_mismatch_that_blocks_decisions(db, captured):
    experiment = running(db)
    seed_traffic(db, experiment, units={"control": 5200, "one-page": 4800},
                 conversion={"control": 0.10, "one-page": 0.20}, days=7)
    report = analyze_experiment(db, "checkout", now=NOW)
    body = report.body
    assert body["srm"]["detected"] is True and body["srm"]["p_value"] < 0.001
    assert body["decision"]["outcome"] == "keep_running"
    assert "sample ratio mismatch" in body["decision"]["reasons"][0]
    srm_events = [data for kind, data, _ in captured if kind == "srm.detected"]
    assert srm_events == [{"experiment": "checkout", "report_id": report.id,
                           "srm": body["srm"], "units": {"control": 5200, "one-page": 4800}}]


def test_a_worse_guardrail_rolls_back_and_names_the_guardrail(db, captured):
    experiment = running(db, method="frequentist")
    friction = {("control", "payment", "error"): 0.05, ("one-page", "payment", "error"): 0.30}
    seed_traffic(db, experiment, units={"control": 3000, "one-page": 3000},
                 conversion={"control": 0.10, "one-page": 0.12}, reach=REACH,
                 friction=friction, days=7)
    report = analyze_experiment(db, "checkout", now=NOW)
    decision = report.body["decision"]
    assert decision["outcome"] == "rollback" and decision["winner"] is None
    assert decision["reasons"][0].startswith(
        "guardrail payment-errors significantly worse for one-page")
    breached = [data for kind, data, _ in captured if kind == "guardrail.breached"]
    assert [(b["metric"], b["variant"]) for b in breached] == [("payment-errors", "one-page")]
    assert all(in_transaction for _, _, in_transaction in captured)
    db.expire_all()
    stored = db.scalars(select(Decision).where(Decision.experiment_id == experiment.id)).all()
    assert [(d.outcome, d.report_id, d.automatic) for d in stored] == [
        ("rollback", report.id, True)]
    assert db.get(Experiment, experiment.id).decision["outcome"] == "rollback"


def test_the_step_with_injected_error_friction_is_the_first_friction_point(db):
    experiment = running(db, method="frequentist")
    friction = {(variant, step, kind): 0.05 for variant in ("control", "one-page")
                for step in REACH for kind in ("error", "rage_click", "form_error")}
    friction[("one-page", "checkout", "error")] = 0.40
    friction[("one-page", "cart", "rage_click")] = 0.09
    seed_traffic(db, experiment, units={"control": 2000, "one-page": 2000},
                 conversion={"control": 0.10, "one-page": 0.10}, reach=REACH,
                 friction=friction, days=7)
    body = analyze_experiment(db, "checkout", now=NOW).body
    points = body["friction_points"]
    matrix = {(c["step"], c["friction_kind"]): c for c in body["friction_matrix"]}
    assert len(matrix) == len(body["friction_matrix"]) == 5 * 3  # steps × kinds × 1 treatment
    assert sum(cell["significant"] for cell in matrix.values()) == len(points)
    assert points[0]["step"] == "checkout" and points[0]["friction_kind"] == "error"
    assert points[0]["variant"] == "one-page"
    assert points[0]["rate"] > 0.1 > points[0]["control_rate"]
    assert points[0]["relative_effect"] > 3
    p_values = [p["adjusted_p_value"] for p in points]
    assert p_values == sorted(p_values) and p_values[-1] < 0.05


def test_the_funnel_marks_the_largest_drop_off(db):
    experiment = running(db)
    seed_traffic(db, experiment, units={"control": 500, "one-page": 500},
                 conversion={"control": 0.1, "one-page": 0.1},
                 reach={"landing": 1.0, "cart": 0.9, "checkout": 0.8, "payment": 0.2,
                        "confirmation": 0.18})
    funnel = analyze_experiment(db, "checkout", now=NOW).body["funnel"]
    assert [step["step"] for step in funnel] == REACH_ORDER
    assert [step["step"] for step in funnel if step["largest_drop_off"]] == ["payment"]
    landing = funnel[0]["variants"]["control"]
    # Time on step is asked for (analysis.time_on_step): absent by default.
    assert landing == {"units": 500, "rate": 1.0, "from_previous": 1.0}
    payment = funnel[3]["variants"]["control"]
    checkout = funnel[2]["variants"]["control"]
    assert payment["from_previous"] == pytest.approx(payment["units"] / checkout["units"])


REACH_ORDER = ["landing", "cart", "checkout", "payment", "confirmation"]


def test_no_units_gives_estimates_with_null_tests_and_warnings(db):
    running(db)
    body = analyze_experiment(db, "checkout", now=NOW).body
    assert body["units"] == {"control": 0, "one-page": 0}
    assert body["srm"] == {"p_value": None, "detected": False}
    comparison = metric(body, "purchase")["comparisons"][0]
    assert comparison["p_value"] is None and comparison["verdict"] == "inconclusive"
    assert "no exposed units yet" in body["warnings"]
    assert body["timeline"] == [] and body["friction_points"] == []
    assert body["decision"]["outcome"] == "keep_running"


def test_one_empty_variant_gives_null_tests_and_a_warning(db):
    experiment = running(db)
    for index in range(30):
        expose(db, experiment, f"u{index}", "control")
        if index % 3 == 0:
            event(db, f"u{index}", "purchase", hours(1), value=10)
    db.commit()
    body = analyze_experiment(db, "checkout", now=NOW).body
    purchase = metric(body, "purchase")
    assert purchase["variants"][0]["estimate"] == pytest.approx(10 / 30)
    assert purchase["variants"][1] == {"variant": "one-page", "units": 0, "estimate": None,
                                       "ci": None, "conversions": 0}
    assert purchase["comparisons"][0]["p_value"] is None
    assert "variant one-page has no units" in body["warnings"]
    assert body["srm"]["detected"] is True


def test_sequential_p_values_are_a_running_minimum(db):
    experiment = running(db)
    seed_traffic(db, experiment, units={"control": 400, "one-page": 400},
                 conversion={"control": 0.10, "one-page": 0.13})
    first = analyze_experiment(db, "checkout", now=NOW).body
    raw = metric(first, "purchase")["comparisons"][0]["p_value"]
    db.execute(Report.__table__.update().values(body={
        **first, "metrics": [{"key": "purchase", "comparisons": [
            {"variant": "one-page", "p_value": raw / 10}]}]}))
    db.commit()
    second = analyze_experiment(db, "checkout", now=NOW).body
    assert metric(second, "purchase")["comparisons"][0]["p_value"] == pytest.approx(raw / 10)


def test_adjusted_p_values_are_corrected_across_primary_and_secondary_metrics(db):
    experiment = running(db, method="frequentist", correction="bh")
    seed_traffic(db, experiment, units={"control": 800, "one-page": 800},
                 conversion={"control": 0.10, "one-page": 0.12})
    body = analyze_experiment(db, "checkout", now=NOW).body
    raw = [metric(body, key)["comparisons"][0]["p_value"] for key in ("purchase", "revenue")]
    adjusted = [metric(body, key)["comparisons"][0]["adjusted_p_value"]
                for key in ("purchase", "revenue")]
    from statsmodels.stats.multitest import multipletests
    assert adjusted == pytest.approx(list(multipletests(raw, method="fdr_bh")[1]))


def test_the_timeline_is_cumulative_per_day_since_the_start(db):
    experiment = running(db)
    seed_traffic(db, experiment, units={"control": 700, "one-page": 700},
                 conversion={"control": 0.10, "one-page": 0.2}, days=7)
    timeline = analyze_experiment(db, "checkout", now=T0 + timedelta(days=8)).body["timeline"]
    assert [p["date"] for p in timeline][:2] == ["2026-03-01", "2026-03-02"]
    assert len(timeline) == 9 and {p["variant"] for p in timeline} == {"one-page"}
    units = [p["units"] for p in timeline]
    assert units[0] == 100 and units[6] == 700 and units == sorted(units)
    assert timeline[-1]["relative_ci"][0] < timeline[-1]["relative_effect"]


def test_reports_are_history_and_unchanged_decisions_are_stored_once(db, captured):
    experiment = running(db)
    seed_traffic(db, experiment, units={"control": 300, "one-page": 300},
                 conversion={"control": 0.1, "one-page": 0.1})
    for day in (8, 9):
        analyze_experiment(db, "checkout", now=T0 + timedelta(days=day))
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(Report)) == 2
    decisions = db.scalars(select(Decision)).all()
    assert [d.outcome for d in decisions] == ["keep_running"]
    kinds = [kind for kind, _, _ in captured]
    assert kinds.count("analysis.completed") == 2 and kinds.count("experiment.decided") == 1
    completed = next(data for kind, data, _ in captured if kind == "analysis.completed")
    assert completed["summary"]["primary"]["metric"] == "purchase"


def test_auto_conclude_ships_the_winner_so_assignment_serves_it(db):
    experiment = running(db, auto_conclude=True)
    seed_traffic(db, experiment, units={"control": 3000, "one-page": 3000},
                 conversion={"control": 0.10, "one-page": 0.16}, days=7)
    report = analyze_experiment(db, "checkout", now=NOW)
    db.expire_all()
    concluded = db.get(Experiment, experiment.id)
    assert (concluded.status, concluded.outcome, concluded.winner) == (
        "concluded", "ship", "one-page")
    assert concluded.decision["reasons"][-1] == "concluded automatically (analysis.auto_conclude)"
    last = db.scalars(select(Decision).order_by(Decision.id.desc())).first()
    assert (last.automatic, last.report_id) == (True, report.id)


def test_without_auto_decide_the_decision_is_a_recommendation_only(db):
    experiment = running(db, auto_decide=False)
    seed_traffic(db, experiment, units={"control": 3000, "one-page": 3000},
                 conversion={"control": 0.10, "one-page": 0.16}, days=7)
    body = analyze_experiment(db, "checkout", now=NOW).body
    assert body["decision"]["outcome"] == "ship"
    assert body["decision"]["reasons"][-1].startswith("recommendation only")
    db.expire_all()
    assert db.get(Experiment, experiment.id).decision is None
    assert db.scalar(select(func.count()).select_from(Decision)) == 0


def test_analyze_running_isolates_a_failing_experiment(app, db, monkeypatch):
    running(db, "good")
    running(db, "bad")
    running(db, "paused-one").status = "paused"
    db.commit()
    fail_analysis_of(monkeypatch, "bad", RuntimeError("boom"))
    results = analyze_running(get_db(app).session, now=NOW)
    assert results == {"bad": "error: RuntimeError: boom", "good": "ok"}
    db.expire_all()
    reports = {r.body["experiment"]: r.body for r in db.scalars(select(Report))}
    assert set(reports) == {"bad", "good"}
    assert reports["bad"] == {"experiment": "bad", "computed_at": NOW.isoformat(),
                              "error": "RuntimeError: boom"}
    assert "error" not in reports["good"] and reports["good"]["computed_at"] == NOW.isoformat()


# -- end to end through the simulator (assignment + ingestion services) ---------------------

SIM_END = datetime(2026, 11, 20, tzinfo=UTC)


def simulated(db: Session, plan_units: int, **plan: Any) -> dict[str, Any]:
    """Run the factory experiment's metrics on simulated traffic and analyse it."""
    from experiments.services.simulate import SimulationPlan, simulate_traffic

    experiment = make_experiment(db, "sim", metrics=SIM_METRICS,
                                 analysis={**ANALYSIS, "method": "frequentist"})
    experiment.started_at = SIM_END - timedelta(days=15)
    db.commit()
    counts = simulate_traffic(db, "sim", SimulationPlan(units=plan_units, days=14, start=SIM_END,
                                                        **plan))
    body = analyze_experiment(db, "sim", now=SIM_END + timedelta(hours=1)).body
    assert body["units"] == counts
    return body


SIM_METRICS = [*JOURNEY_METRICS, {"key": "nps", "kind": "nps"}]


def test_simulated_true_effect_is_found_inside_the_ci(db):
    # Salts and seed are fixed, so this draw is reproducible (coverage itself is checked by
    # simulation in tests/stats/test_calibration.py).
    body = simulated(db, 4000, seed=3, effects={"one-page": 0.5}, base_conversion=0.10)
    comparison = metric(body, "purchase")["comparisons"][0]
    assert comparison["verdict"] == "better"
    low, high = comparison["relative_ci"]
    assert low < 0.5 < high
    assert body["decision"]["outcome"] == "ship" and body["decision"]["winner"] == "one-page"


def test_simulated_guardrail_friction_rolls_back_and_is_the_top_friction_point(db):
    body = simulated(db, 4000, seed=2, friction={("one-page", "payment", "error"): 0.25})
    assert body["decision"]["outcome"] == "rollback"
    assert "guardrail payment-errors significantly worse for one-page" in (
        body["decision"]["reasons"][0])
    top = body["friction_points"][0]
    assert (top["step"], top["friction_kind"], top["variant"]) == ("payment", "error",
                                                                  "one-page")



def test_cuped_is_skipped_silently_for_units_without_pre_exposure_activity(db):
    body = simulated(db, 400, seed=5)
    warnings = [w for m in body["metrics"] for w in m.get("warnings", [])] + body["warnings"]
    assert not [w for w in warnings if "cuped" in w]


# -- per-unit standard deviations (the portfolio's power calculation plans with them) -----


def seed_spread(db: Session, experiment: Experiment, units: int, seed: int) -> dict[str, Any]:
    """Seeded per-unit values for every kind of the aggregation metrics; returns them."""
    rng = np.random.default_rng(seed)
    values: dict[str, Any] = {}
    for variant in ("control", "one-page"):
        out = values[variant] = {"revenue": [], "views": [], "time": [], "sessions": [],
                                 "nps": []}
        for i in range(units):
            unit = f"{variant}-{i}"
            expose(db, experiment, unit, variant)
            times = np.sort(rng.uniform(0.1, 60.0, size=rng.poisson(1.0)))
            amounts = rng.gamma(2.0, 20.0, size=len(times)).round(2)
            for at, amount in zip(times, amounts, strict=True):
                event(db, unit, "purchase", hours(float(at)), value=float(amount))
            out["revenue"].append(float(amounts.sum()))
            if len(times):
                out["time"].append(float(times[0]))
            out["views"].append(int(rng.poisson(2.0)))
            for j in range(out["views"][-1]):
                event(db, unit, "page_view", hours(0.05 * (j + 1)), type="step", step="cart")
            out["sessions"].append(int(rng.poisson(1.5)) + 1)
            for j in range(out["sessions"][-1]):
                event(db, unit, "session", hours(0.01 * (j + 1)), type="custom")
            if rng.random() < 0.7:
                score = int(rng.integers(0, 11))
                event(db, unit, "nps", hours(2), type="nps", value=score)
                out["nps"].append(100 if score >= 9 else -100 if score <= 6 else 0)
    db.commit()
    return values


def test_each_variant_carries_the_observed_per_unit_sd(db):
    experiment = make_experiment(db, "spread")
    experiment.started_at = T0
    db.commit()
    values = seed_spread(db, experiment, units=30, seed=11)
    body = analyze_experiment(db, "spread", now=NOW).body
    for variant, data in values.items():
        def sd(key: str, variant: str = variant) -> float | None:
            return next(v for v in metric(body, key)["variants"]
                        if v["variant"] == variant).get("sd", "absent")

        assert sd("revenue") == pytest.approx(np.std(data["revenue"], ddof=1), rel=1e-9)
        assert sd("views") == pytest.approx(np.std(data["views"], ddof=1), rel=1e-9)
        assert sd("time-to-buy") == pytest.approx(np.std(data["time"], ddof=1), rel=1e-6)
        assert sd("nps") == pytest.approx(np.std(data["nps"], ddof=1), rel=1e-9)
        # Ratio: the delta-method SD, i.e. the SD of x - r y over the mean denominator.
        x, y = np.array(data["revenue"]), np.array(data["sessions"], dtype=float)
        ratio_sd = np.std(x - x.mean() / y.mean() * y, ddof=1) / y.mean()
        assert sd("revenue-per-session") == pytest.approx(ratio_sd, rel=1e-9)
        # Proportions carry no sd: it follows from the rate.
        assert sd("purchase") == "absent" and sd("payment-errors") == "absent"
