"""Decision rules (SPEC §6) on report bodies: blocking, rollback, ship, no_difference."""

from __future__ import annotations

from typing import Any

from experiments.schemas import AnalysisSettings
from experiments.services.decisions import DecisionResult, changes_decision, decide

SETTINGS = AnalysisSettings(min_units_per_variant=1000, min_days=7, max_days=28)


def comparison(variant: str, verdict: str, relative: float = 0.1) -> dict[str, Any]:
    return {"variant": variant, "verdict": verdict, "relative_effect": relative,
            "absolute_effect": relative / 10, "significant": verdict in ("better", "worse")}


def body(primary: list[dict[str, Any]], guardrail: list[dict[str, Any]] | None = None, *,
         units: int = 2000, srm: bool = False, direction: str = "increase") -> dict[str, Any]:
    metrics = [{"key": "purchase", "role": "primary", "direction": direction,
                "comparisons": primary},
               {"key": "payment-errors", "role": "guardrail", "direction": "decrease",
                "comparisons": guardrail or []}]
    return {"units": {"control": units, "b": units, "c": units}, "metrics": metrics,
            "srm": {"p_value": 1e-6 if srm else 0.5, "detected": srm}}


def test_a_better_primary_metric_ships_the_best_treatment():
    result = decide(SETTINGS, body([comparison("b", "better", 0.05),
                                    comparison("c", "better", 0.12)]), days=10)
    assert (result.outcome, result.winner) == ("ship", "c")
    assert result.reasons == ("primary metric purchase significantly better for c (+12.0%)",
                              "no guardrail is significantly worse")


def test_for_a_decrease_metric_the_largest_reduction_wins():
    primary = [comparison("b", "better", -0.05), comparison("c", "better", -0.20)]
    result = decide(SETTINGS, body(primary, direction="decrease"), days=10)
    assert result.winner == "c"


def test_a_worse_guardrail_rolls_back_even_when_the_primary_metric_is_better():
    result = decide(SETTINGS, body([comparison("b", "better")],
                                   [comparison("b", "worse", 0.4)]), days=10)
    assert (result.outcome, result.winner) == ("rollback", None)
    assert result.reasons == ("guardrail payment-errors significantly worse for b (+40.0%)",)


def test_sample_ratio_mismatch_blocks_every_decision():
    result = decide(SETTINGS, body([comparison("b", "better")], [comparison("b", "worse")],
                                   srm=True), days=30)
    assert result.outcome == "keep_running"
    assert result.reasons[0].startswith("sample ratio mismatch detected (p = 1e-06)")


def test_nothing_is_decided_before_min_units_and_min_days():
    result = decide(SETTINGS, body([comparison("b", "better")], units=999), days=3.5)
    assert result == DecisionResult("keep_running", None, (
        "waiting for 1000 units per variant (control has 999)",
        "waiting for 7 days of data (3.5 days so far)"))


def test_max_days_without_a_winner_is_no_difference():
    flat = body([comparison("b", "flat"), comparison("c", "worse", -0.1)])
    assert decide(SETTINGS, flat, days=27.9).outcome == "keep_running"
    result = decide(SETTINGS, flat, days=28)
    assert result.outcome == "no_difference"
    assert result.reasons == ("primary metric purchase significantly worse for c (-10.0%)",
                              "28 days reached without a significantly better primary metric "
                              "purchase")


class _Experiment:
    def __init__(self, decision: dict[str, Any] | None) -> None:
        self.decision = decision


def test_only_a_new_outcome_or_winner_changes_the_decision():
    keep = DecisionResult("keep_running", None, ("primary metric purchase …",))
    assert changes_decision(_Experiment(None), keep) is True
    current = _Experiment({"outcome": "keep_running", "winner": None, "reasons": ["other"]})
    assert changes_decision(current, keep) is False
    assert changes_decision(current, DecisionResult("ship", "b", ())) is True
    shipped = _Experiment({"outcome": "ship", "winner": "b"})
    assert changes_decision(shipped, DecisionResult("ship", "c", ())) is True


def test_a_bandit_ships_on_a_chance_it_never_calls_certain():
    shipped = decide(SETTINGS, {**body([]), "period_weighted": True,
                                "p_best": {"b": 1.0, "c": 0.0}}, days=10)
    assert (shipped.outcome, shipped.winner) == ("ship", "b")
    assert shipped.reasons[0] == ("b is the best arm on primary metric purchase with "
                                  "probability >99.9% (bandit: at least 95%)")
    waiting = decide(SETTINGS, {**body([]), "period_weighted": True,
                                "p_best": {"b": 0.9, "c": 0.1}}, days=10)
    assert waiting.reasons == ("no arm is best with probability 95% yet (leader b: 90.0%)",)
