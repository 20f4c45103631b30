"""Automatic decisions (SPEC §6): ship, rollback, no_difference or keep_running, with reasons.

The rules run in this order: an SRM blocks everything; nothing is decided before
``min_units_per_variant`` units in every variant and ``min_days`` since the start; a
guardrail significantly worse for any treatment means ``rollback``; a primary metric
significantly better means ``ship`` the best such treatment; ``max_days`` without either
means ``no_difference``; anything else is ``keep_running``.

A decision is stored (a ``Decision`` row, ``Experiment.decision``, the
``experiment.decided`` signal) only when its outcome or winner differs from the
experiment's current decision, so a report every five minutes does not fire a webhook
every five minutes; the reasons of an unchanged decision live in each report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments import signals
from experiments.auth import SYSTEM
from experiments.models import Decision, Experiment, Report
from experiments.schemas import AnalysisSettings, ConcludeIn
from experiments.services.alerts import breached_guardrails
from experiments.services.lifecycle import transition

CONCLUDING = ("ship", "rollback", "no_difference")


@dataclass(frozen=True)
class DecisionResult:
    """What the engine recommends, and why."""

    outcome: str
    winner: str | None
    reasons: tuple[str, ...]

    def to_dict(self, decided_at: datetime) -> dict[str, Any]:
        """The report's and the experiment's ``decision`` JSON."""
        return {"outcome": self.outcome, "winner": self.winner, "reasons": list(self.reasons),
                "decided_at": decided_at.isoformat()}


def _metrics(body: Mapping[str, Any], role: str) -> list[dict[str, Any]]:
    return [m for m in body.get("metrics", []) if m.get("role") == role]


def _lift(comparison: Mapping[str, Any]) -> str:
    """The effect and, in a Bayesian report, the chance to win behind a verdict.

    Verdicts come from the report's own framework (p-values, or the chance to win in a
    Bayesian report, whose p-values are null), so the reason quotes that framework's number.
    NPS has no relative effect: its effect is quoted in points.
    """
    relative, absolute = comparison.get("relative_effect"), comparison.get("absolute_effect")
    parts = []
    if isinstance(relative, float):
        parts.append(f"{relative:+.1%}")
    elif isinstance(absolute, float):
        parts.append(f"{absolute:+.3g}")
    chance = comparison.get("chance_to_win")
    if isinstance(chance, float):
        parts.append(f"chance to win {chance:.0%}")
    return f" ({', '.join(parts)})" if parts else ""


def _best_treatment(primary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The significantly better treatment with the largest effect in the metric's direction."""
    better = [c for c in primary.get("comparisons", []) if c["verdict"] == "better"]
    sign = 1.0 if primary.get("direction", "increase") == "increase" else -1.0

    def gain(comparison: Mapping[str, Any]) -> float:
        effect = comparison.get("relative_effect")
        if effect is None:
            effect = comparison.get("absolute_effect") or 0.0
        return sign * float(effect)

    return max(better, key=gain) if better else None


def _blocking_reasons(settings: AnalysisSettings, body: Mapping[str, Any],
                      days: float) -> list[str]:
    """Why no decision may be taken yet (SRM, too few units, too few days)."""
    srm = body.get("srm") or {}
    if srm.get("detected"):
        return [f"sample ratio mismatch detected (p = {srm.get('p_value') or 0:.2g}): "
                "automatic decisions are blocked until the traffic split is fixed"]
    reasons = []
    units: Mapping[str, int] = body.get("units", {})
    # A bandit starves its losing arms by design: min_units_per_arm gated its updates.
    if units and not body.get("period_weighted"):
        smallest = min(units, key=lambda variant: units[variant])
        if units[smallest] < settings.min_units_per_variant:
            reasons.append(f"waiting for {settings.min_units_per_variant} units per variant "
                           f"({smallest} has {units[smallest]})")
    if days < settings.min_days:
        reasons.append(f"waiting for {settings.min_days} days of data ({days:.1f} days so far)")
    return reasons


def _rollback(breached: Sequence[tuple[str, Mapping[str, Any]]]) -> DecisionResult:
    return DecisionResult("rollback", None, tuple(
        f"guardrail {key} significantly worse for {c['variant']}{_lift(c)}"
        for key, c in breached))


def decide(settings: AnalysisSettings, body: Mapping[str, Any], *, days: float) -> DecisionResult:
    """Apply the SPEC §6 rules to a report body (without its decision).

    A sequential test is valid at every look, so its guardrail breach rolls back before
    ``min_units_per_variant`` and ``min_days`` (never under SRM: the split itself is broken).
    """
    blocking = _blocking_reasons(settings, body, days)
    breached = breached_guardrails(body)
    srm_detected = bool((body.get("srm") or {}).get("detected"))
    if blocking and breached and settings.method == "sequential" and not srm_detected:
        early = _rollback(breached)
        return DecisionResult("rollback", None, (
            *early.reasons, "the sequential test is valid at any time, so the rollback does "
            "not wait for " + " and ".join(r.removeprefix("waiting for ").split(" (")[0]
                                           for r in blocking)))
    if blocking:
        return DecisionResult("keep_running", None, tuple(blocking))
    if breached:
        return _rollback(breached)
    primaries = _metrics(body, "primary")
    primary = primaries[0] if primaries else {"key": "?", "comparisons": []}
    if body.get("period_weighted"):
        return _bandit_decision(settings, body, primary, days)
    best = _best_treatment(primary)
    if best is not None:
        return DecisionResult("ship", best["variant"], (
            f"primary metric {primary['key']} significantly better for "
            f"{best['variant']}{_lift(best)}", "no guardrail is significantly worse"))
    worse = [f"primary metric {primary['key']} significantly worse for {c['variant']}{_lift(c)}"
             for c in primary.get("comparisons", []) if c["verdict"] == "worse"]
    if days >= settings.max_days:
        return DecisionResult("no_difference", None, (
            *worse, f"{settings.max_days} days reached without a significantly better "
            f"primary metric {primary['key']}"))
    return DecisionResult("keep_running", None, (
        *worse, f"primary metric {primary['key']} is not significantly better yet"))


BANDIT_SHIP_P_BEST = 0.95


def chance_text(probability: float, digits: int = 1) -> str:
    """A chance in percent that never reads as certainty: '>99.9%' where rounding would say
    '100.0%' and '<0.1%' for '0.0%' (a posterior or Monte Carlo chance is never exactly
    either)."""
    shown, step = f"{probability:.{digits}%}", 10.0 ** -digits  # step: in percent
    if probability >= 1.0 or shown == f"{100:.{digits}f}%":
        return f">{100 - step:.{digits}f}%"
    if probability <= 0.0 or shown == f"{0:.{digits}f}%":
        return f"<{step:.{digits}f}%"
    return shown


def _bandit_decision(settings: AnalysisSettings, body: Mapping[str, Any],
                     primary: Mapping[str, Any], days: float) -> DecisionResult:
    """A bandit ships the arm whose chance of being best reaches 95 % (SPEC §13)."""
    p_best: Mapping[str, float] = body.get("p_best") or {}
    arm = max(p_best, key=lambda key: p_best[key], default=None)
    if arm is not None and p_best[arm] >= BANDIT_SHIP_P_BEST:
        return DecisionResult("ship", arm, (
            f"{arm} is the best arm on primary metric {primary['key']} with probability "
            f"{chance_text(p_best[arm])} (bandit: at least {BANDIT_SHIP_P_BEST:.0%})",
            "no guardrail is significantly worse"))
    if days >= settings.max_days:
        return DecisionResult("no_difference", None, (
            f"{settings.max_days} days reached without an arm best with probability "
            f"{BANDIT_SHIP_P_BEST:.0%}",))
    leader = f" (leader {arm}: {chance_text(p_best[arm])})" if arm is not None else ""
    return DecisionResult("keep_running", None, (
        f"no arm is best with probability {BANDIT_SHIP_P_BEST:.0%} yet{leader}",))


def days_running(experiment: Experiment, now: datetime) -> float:
    """Days since the experiment started (0 when it never started)."""
    if experiment.started_at is None:
        return 0.0
    return max((now - experiment.started_at).total_seconds() / 86400.0, 0.0)


def changes_decision(experiment: Experiment, result: DecisionResult) -> bool:
    """True when the outcome or winner differs from the experiment's current decision."""
    current = experiment.decision or {}
    return (current.get("outcome"), current.get("winner")) != (result.outcome, result.winner)


def record_decision(session: Session, experiment: Experiment, result: DecisionResult,
                    report: Report, now: datetime) -> Decision:
    """Store a changed decision and announce it (``experiment.decided``) in this transaction."""
    decision = Decision(experiment_id=experiment.id, report_id=report.id, outcome=result.outcome,
                        winner=result.winner, reasons=list(result.reasons), automatic=True,
                        decided_at=now)
    session.add(decision)
    experiment.decision = result.to_dict(now)
    signals.emit(signals.experiment_decided, session, {
        "experiment": experiment.key, "report_id": report.id, "automatic": True,
        "decision": result.to_dict(now)})
    return decision


def conclude_automatically(session: Session, experiment: Experiment, result: DecisionResult,
                           report: Report, now: datetime) -> None:
    """Conclude through the lifecycle (it commits), then keep the engine's reasons on record.

    ``lifecycle.transition`` stores its own Decision row with a generic reason; the second,
    small transaction restores the engine's reasons on it and on ``Experiment.decision``.
    """
    transition(session, experiment.key, "conclude", SYSTEM,
               ConcludeIn(outcome=result.outcome, winner=result.winner))
    reasons = [*result.reasons, "concluded automatically (analysis.auto_conclude)"]
    row = session.scalar(select(Decision).where(Decision.experiment_id == experiment.id)
                         .order_by(Decision.id.desc()).limit(1))
    if row is not None:
        row.reasons, row.automatic, row.report_id = reasons, True, report.id
    experiment.decision = {**result.to_dict(now), "reasons": reasons}
    session.commit()


def report_decision(experiment: Experiment, settings: AnalysisSettings,
                    body: Mapping[str, Any], now: datetime) -> DecisionResult | None:
    """The engine's result for a running experiment; None when it must not decide."""
    if experiment.status != "running":
        return None
    result = decide(settings, body, days=days_running(experiment, now))
    if not settings.auto_decide:
        return DecisionResult(result.outcome, result.winner, (
            *result.reasons, "recommendation only: analysis.auto_decide is off"))
    return result


def current_decision(experiment: Experiment) -> dict[str, Any] | None:
    """The stored decision, shown in reports of experiments the engine no longer decides."""
    return dict(experiment.decision) if experiment.decision else None


__all__: Sequence[str] = (
    "CONCLUDING", "DecisionResult", "changes_decision",
    "conclude_automatically", "current_decision", "days_running", "decide", "record_decision",
    "report_decision",
)
