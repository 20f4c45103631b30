"""One framework per report (SPEC §6), through the real analysis on SQLite and PostgreSQL.

A Bayesian report carries chance to win and credible intervals and no p-values; a
frequentist or sequential report carries p-values and no chance to win; NPS is in points.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from sqlalchemy.orm import Session

from experiments.services.analysis import analyze_experiment, export_rows
from tests.test_aggregation import T0, event, expose, make_experiment, seed_traffic
from tests.test_analysis import ANALYSIS, NOW, REACH, metric, running

P_VALUES = ("p_value", "adjusted_p_value")
BAYESIAN = ("chance_to_win", "expected_loss")
FRICTION = {("control", "payment", "error"): 0.02, ("one-page", "payment", "error"): 0.09}


def _report(db: Session, method: str) -> dict[str, Any]:
    """A week of traffic with a clear primary lift and a clear payment-error rise."""
    experiment = running(db, method=method)
    seed_traffic(db, experiment, units={"control": 1500, "one-page": 1500},
                 conversion={"control": 0.10, "one-page": 0.16}, reach=REACH,
                 friction=FRICTION, days=7)
    return analyze_experiment(db, "checkout", now=NOW).body


def _comparisons(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for m in body["metrics"] for c in m["comparisons"]]


@pytest.mark.parametrize("method", ["frequentist", "sequential"])
def test_frequentist_reports_have_no_chance_to_win(db: Session, method: str) -> None:
    body = _report(db, method)
    comparisons = _comparisons(body)
    assert body["method"] == method and len(comparisons) == 3
    for comparison in comparisons:
        assert comparison["chance_to_win"] is None and comparison["expected_loss"] is None
        assert comparison["p_value"] is not None and comparison["adjusted_p_value"] is not None
    purchase = metric(body, "purchase")["comparisons"][0]
    assert purchase["verdict"] == "better" and purchase["relative_ci"][0] > 0
    guardrail = metric(body, "payment-errors")["comparisons"][0]
    assert guardrail["verdict"] == "worse"
    assert body["friction_points"] and all(
        p["chance_to_win"] is None and p["adjusted_p_value"] < 0.05
        for p in body["friction_points"])
    for row in export_rows(body):
        assert row["chance_to_win"] is None and row["expected_loss"] is None


def test_bayesian_report_has_no_p_values(db: Session) -> None:
    body = _report(db, "bayesian")
    comparisons = _comparisons(body)
    assert body["method"] == "bayesian" and len(comparisons) == 3
    for comparison in comparisons:
        assert comparison["p_value"] is None and comparison["adjusted_p_value"] is None
        assert comparison["chance_to_win"] is not None
        assert comparison["absolute_ci"] is not None and comparison["relative_ci"] is not None
    purchase = metric(body, "purchase")["comparisons"][0]
    assert purchase["chance_to_win"] >= 0.95 and purchase["verdict"] == "better"
    assert 0 < purchase["relative_ci"][0] < purchase["relative_effect"] < purchase["relative_ci"][1]
    guardrail = metric(body, "payment-errors")["comparisons"][0]
    assert guardrail["chance_to_win"] <= 0.05 and guardrail["verdict"] == "worse"
    points = body["friction_points"]
    assert points and all(p["adjusted_p_value"] is None for p in points)
    certainty = [max(p["chance_to_win"], 1 - p["chance_to_win"]) for p in points]
    assert certainty == sorted(certainty, reverse=True) and certainty[0] >= 0.95
    assert body["decision"]["outcome"] == "rollback"
    assert "chance to win" in body["decision"]["reasons"][0]
    for row in export_rows(body):
        assert row["p_value"] is None and row["adjusted_p_value"] is None


def test_nps_effects_are_in_points_in_the_report_and_its_timeline(db: Session) -> None:
    experiment = make_experiment(db, "checkout", analysis={**ANALYSIS, "cuped": False},
                                 metrics=[{"key": "nps", "kind": "nps", "role": "primary"}])
    experiment.started_at = T0
    rng = random.Random(3)
    for variant, promoter in (("control", 0.30), ("one-page", 0.40)):
        for index in range(400):
            unit = f"{variant}-{index}"
            at = T0 + (NOW - T0) * (index / 500)
            expose(db, experiment, unit, variant, at)
            roll = rng.random()
            score = 10 if roll < promoter else (8 if roll < promoter + 0.35 else 3)
            event(db, unit, "nps", at + (NOW - T0) / 100, type="nps", value=score)
    db.commit()
    body = analyze_experiment(db, "checkout", now=NOW).body
    (comparison,) = metric(body, "nps")["comparisons"]
    control, treatment = (v["estimate"] for v in metric(body, "nps")["variants"])
    assert comparison["absolute_effect"] == pytest.approx(treatment - control)
    assert comparison["relative_effect"] is None and comparison["relative_ci"] is None
    last = body["timeline"][-1]
    assert last["absolute_effect"] == pytest.approx(comparison["absolute_effect"])
    assert last["absolute_ci"] == pytest.approx(comparison["absolute_ci"])
    assert all(p["relative_effect"] is None and p["relative_ci"] is None
               for p in body["timeline"])
