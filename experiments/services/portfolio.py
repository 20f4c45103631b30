"""The portfolio: every running and paused experiment with its progress and health.

A manager's first question is "what is running, is it healthy, when will we know".
This module answers it from each experiment's latest report: units against the
units the power calculation needs (the same calculator as ``/api/v1/stats/power``,
on the primary metric's observed control baseline and, for kinds whose spread the
estimate does not imply, the control's observed standard deviation; for a sequential
experiment, the units its own test needs: ``stats.power``, ``design="sequential"``), days left at
the observed daily rate, and health chips (SRM, guardrail breach, events before exposure,
stale or failed analysis).

A bandit has no sample to reach: its allocation moves, and it ships when an arm's chance
to be best reaches 95 % (SPEC §13), else stops at ``max_days``. Its days left count to
that maximum (``days_left_basis: "max_days"``), and its note says what it waits for.

Once the report's decision is made (ship, rollback, no difference), no more units are
needed whatever the basis: ``days_left`` is 0 (``days_left_basis: "decided"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from experiments.db import utcnow
from experiments.errors import ValidationFailed
from experiments.models import Experiment, Report
from experiments.services.analysis import calculate_power, latest_reports, power_design
from experiments.services.bandits import bandit_settings
from experiments.services.decisions import BANDIT_SHIP_P_BEST, chance_text
from experiments.services.report import SD_KINDS

PORTFOLIO_STATUSES = ("running", "paused")
# Kinds the power calculator plans from the control rate alone (SPEC §6 power).
RATE_KINDS = ("conversion", "friction")
# Kinds planned as a mean with the control's observed per-unit SD (the report's ``sd``):
# Welch-style t-test power on a relative mde. Count falls back to Poisson (sd = sqrt(mean))
# on reports older than the ``sd`` field.
POWER_KINDS = (*RATE_KINDS, *SD_KINDS)
# Below one point, a relative mde on an NPS means an effect of almost nothing.
MIN_NPS_BASELINE = 1.0
ALERT_KINDS = ("srm", "guardrail_breach", "events_before_exposure")
_VERDICT_RANK = {"worse": 0, "better": 1, "inconclusive": 2, "flat": 3}
SECONDS_PER_DAY = 86_400.0
MIN_RATE_WINDOW_DAYS = 1.0


def portfolio(session: Session, *, analysis_interval_s: float,
              now: datetime | None = None) -> list[dict[str, Any]]:
    """One entry per running or paused experiment, longest running first."""
    now = now or utcnow()
    rows = list(session.scalars(
        select(Experiment).where(Experiment.status.in_(PORTFOLIO_STATUSES))
        .options(selectinload(Experiment.variants), selectinload(Experiment.metrics))
        .order_by(Experiment.started_at, Experiment.id)))
    reports = latest_reports(session, [row.id for row in rows])
    return [portfolio_entry(row, reports.get(row.id), analysis_interval_s=analysis_interval_s,
                            now=now) for row in rows]


def portfolio_entry(experiment: Experiment, report: Report | None, *,
                    analysis_interval_s: float, now: datetime) -> dict[str, Any]:
    """Progress, health and verdict of one experiment from its latest report."""
    body: Mapping[str, Any] = report.body if report is not None else {}
    settings = experiment.analysis or {}
    units = {v.key: int(_dict(body.get("units")).get(v.key, 0) or 0)
             for v in experiment.variants}
    days_running = _whole_days(experiment, now)
    if bandit_settings(experiment) is None:
        progress = sample_progress(experiment, body, units, _elapsed_days(experiment, report))
    else:
        progress = bandit_progress(body, units, _elapsed_days(experiment, report),
                                   days_running=days_running,
                                   max_days=settings.get("max_days"))
    decision = _dict(body.get("decision")).get("outcome") or None
    if decision in DECIDED:  # "248 days left" beside "Ship" asked the manager to wait
        progress.update(days_left=0, days_left_basis="decided",
                        progress_note=progress["progress_note"] or decided_early_note(
                            body.get("method"), units, progress["units_needed_per_variant"]))
    return {
        "key": experiment.key, "name": experiment.name, "owner": experiment.owner,
        "status": experiment.status,
        "started_at": experiment.started_at.isoformat() if experiment.started_at else None,
        "days_running": days_running,
        "min_days": settings.get("min_days"), "max_days": settings.get("max_days"),
        "units": units, **progress,
        "health": health_chips(body, report, analysis_interval_s=analysis_interval_s, now=now),
        "verdict": primary_verdict(body),
        "decision": decision,
        "report_id": report.id if report is not None else None,
        "report_computed_at": report.computed_at.isoformat() if report is not None else None,
    }


DECIDED = frozenset({"ship", "rollback", "no_difference"})
"""Decision outcomes that need no more units: the experiment waits to be concluded."""
# What a decision made before the planned sample means, by the report's method: "3,038 /
# 55,272" beside "Decided" read as a contradiction; a fixed-horizon test read early is one.
EARLY_DECISION = {
    "sequential": "the sequential test stays valid when it stops early",
    "frequentist": "a fixed-horizon p-value read before its planned sample overstates "
                   "significance: confirm with the sequential method",
    "bayesian": "the chance to win crossed its threshold first",
}


def decided_early_note(method: Any, units: Mapping[str, int],
                       needed_per_variant: int | None) -> str | None:
    """Why a decided experiment shows fewer units than its power calculation planned."""
    if needed_per_variant is None or not units or min(units.values()) >= needed_per_variant:
        return None
    share = min(units.values()) / needed_per_variant
    reason = EARLY_DECISION.get(method if isinstance(method, str) else "")
    return (f"decided at {share:.0%} of the {needed_per_variant:,} units per variant planned"
            + (f": {reason}" if reason else ""))


def sample_progress(experiment: Experiment, body: Mapping[str, Any], units: Mapping[str, int],
                    elapsed_days: float | None) -> dict[str, Any]:
    """Units needed per variant and days left; nulls with a reason when not computable."""
    out = _progress(units, elapsed_days)
    primary = next((m for m in experiment.metrics if m.role == "primary"), None)
    if primary is None or not body:
        out["progress_note"] = "no report yet" if primary else "no primary metric"
        return out
    if primary.kind not in POWER_KINDS:
        out["progress_note"] = f"no power calculation for a {primary.kind} primary metric"
        return out
    control = next((v.key for v in experiment.variants if v.is_control), None)
    entry = control_entry(body, primary.key, control)
    baseline = _number(entry.get("estimate"))
    out["baseline"] = baseline
    if baseline is None:
        out["progress_note"] = "the control has no observed baseline yet"
        return out
    inputs = power_inputs(primary.kind, baseline, _number(entry.get("sd")))
    if isinstance(inputs, str):
        out["progress_note"] = inputs
        return out
    settings = experiment.analysis or {}
    try:
        needed = calculate_power(inputs[0], baseline=baseline, baseline_sd=inputs[1],
                                 mde=settings.get("mde", 0.05),
                                 alpha=settings.get("alpha", 0.05),
                                 power=settings.get("power", 0.8),
                                 variants=max(2, len(experiment.variants)),
                                 design=power_design(settings))["units_per_variant"]
    except ValidationFailed as exc:
        detail = exc.details[0] if exc.details else {}
        out["progress_note"] = "power calculation impossible" + (
            f": {detail.get('field')} {detail.get('message')}" if detail else "")
        return out
    out["units_needed_per_variant"] = needed
    out["days_left"] = days_left(needed, units, elapsed_days)
    out["days_left_basis"] = None if out["days_left"] is None else "power"
    return out


def bandit_progress(body: Mapping[str, Any], units: Mapping[str, int],
                    elapsed_days: float | None, *, days_running: int | None,
                    max_days: int | None) -> dict[str, Any]:
    """A bandit's progress: no units to reach (a power calculation assumes fixed weights),
    days left until its maximum duration, and a note on what ends it sooner."""
    out = _progress(units, elapsed_days)
    if days_running is not None and max_days is not None:
        out["days_left"] = max(0, max_days - days_running)
        out["days_left_basis"] = "max_days"
    p_best = {arm: chance for arm, chance in _dict(body.get("p_best")).items()
              if _finite(chance)}
    out["progress_note"] = (
        f"bandit: no fixed sample size; it ships when an arm's chance to be best reaches "
        f"{BANDIT_SHIP_P_BEST:.0%}" + _bandit_leader(p_best)
        + (f", else it stops after {max_days} days" if max_days is not None else ""))
    return out


def _bandit_leader(p_best: Mapping[str, float]) -> str:
    """The leading arm's chance to be best, and whether it already reached the bar."""
    leader = max(p_best, key=p_best.__getitem__, default=None)
    if leader is None:
        return ""
    reached = ", reached" if p_best[leader] >= BANDIT_SHIP_P_BEST else ""
    return f" (now {leader}: {chance_text(p_best[leader], 0)}{reached})"


def _progress(units: Mapping[str, int], elapsed_days: float | None) -> dict[str, Any]:
    """The progress fields, nulls but the observed daily rate (units so far per day)."""
    total = sum(units.values())
    return {"baseline": None, "units_needed_per_variant": None,
            "daily_units": total / elapsed_days if elapsed_days is not None and total > 0
            else None, "days_left": None, "days_left_basis": None, "progress_note": None}


def days_left(needed_per_variant: int, units: Mapping[str, int],
              elapsed_days: float | None) -> int | None:
    """Whole days until the slowest variant reaches the units it needs, at its observed rate."""
    if units and all(n >= needed_per_variant for n in units.values()):
        return 0
    if not elapsed_days or elapsed_days <= 0 or not units or min(units.values()) <= 0:
        return None
    waits = [(needed_per_variant - n) / (n / elapsed_days) for n in units.values()
             if n < needed_per_variant]
    return math.ceil(max(waits))


def power_inputs(kind: str, baseline: float, sd: float | None) -> tuple[str, float | None] | str:
    """The calculator's kind and baseline SD for a primary metric, or why there are none.

    Rates need no SD; count uses its observed SD, else the calculator's Poisson default;
    the others are planned as a mean with the control's observed SD (NPS in points).
    """
    if kind in RATE_KINDS:
        return kind, None
    if kind == "count":
        return "count", sd
    if kind == "nps" and abs(baseline) < MIN_NPS_BASELINE:
        return (f"the control NPS ({baseline:.2g} points) is too close to 0 for a relative "
                f"minimum detectable effect")
    if sd is None:
        return "the control has no observed standard deviation yet"
    return ("nps" if kind == "nps" else "mean"), sd


def control_entry(body: Mapping[str, Any], metric_key: str,
                  control: str | None) -> Mapping[str, Any]:
    """The primary metric's control variant in the report (estimate, sd), or {}."""
    for metric in _list(body.get("metrics")):
        if _dict(metric).get("key") != metric_key:
            continue
        for variant in _list(metric.get("variants")):
            if _dict(variant).get("variant") == control:
                return _dict(variant)
    return {}


def health_chips(body: Mapping[str, Any], report: Report | None, *, analysis_interval_s: float,
                 now: datetime) -> list[dict[str, Any]]:
    """What needs attention: the report's alerts (or SRM, worse guardrails), age, errors."""
    if report is None:
        return [{"kind": "not_analyzed", "message": "No analysis yet."}]
    chips = report_alerts(body)
    age_s = (now - report.computed_at).total_seconds()
    if age_s > 2 * analysis_interval_s:
        chips.append({"kind": "stale", "message": f"Latest analysis is {_age_text(age_s)} old."})
    if body.get("error"):
        chips.append({"kind": "analysis_error", "message": str(body["error"])[:300]})
    return chips


def report_alerts(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The report's ``alerts`` list when present, else SRM and guardrails verdict "worse"."""
    alerts = body.get("alerts")
    if isinstance(alerts, list):
        return [{"kind": a["kind"], "metric": a.get("metric"), "variant": a.get("variant"),
                 "message": a.get("message") or a["kind"]}
                for a in alerts if isinstance(a, dict) and a.get("kind") in ALERT_KINDS]
    chips: list[dict[str, Any]] = []
    srm = _dict(body.get("srm"))
    if srm.get("detected"):
        chips.append({"kind": "srm", "metric": None, "variant": None,
                      "message": f"Sample ratio mismatch (p = {srm.get('p_value')})."})
    for metric in _list(body.get("metrics")):
        if _dict(metric).get("role") != "guardrail":
            continue
        for comparison in _list(metric.get("comparisons")):
            if _dict(comparison).get("verdict") == "worse":
                chips.append({"kind": "guardrail_breach", "metric": metric.get("key"),
                              "variant": comparison.get("variant"),
                              "message": f"{metric.get('key')} is worse in "
                                         f"{comparison.get('variant')}."})
    return chips


def primary_verdict(body: Mapping[str, Any]) -> str | None:
    """The primary metric's headline verdict: any worse, else any better, else the rest."""
    for metric in _list(body.get("metrics")):
        if _dict(metric).get("role") == "primary":
            verdicts = [c.get("verdict") for c in _list(metric.get("comparisons"))
                        if _dict(c).get("verdict") in _VERDICT_RANK]
            return min(verdicts, key=_VERDICT_RANK.__getitem__) if verdicts else None
    return None


def _elapsed_days(experiment: Experiment, report: Report | None) -> float | None:
    """Days from the start to the moment the report counted its units (the rate's window).

    At least one day: a rate measured over minutes (or over traffic backdated by a
    simulation) would promise absurd speeds.
    """
    if experiment.started_at is None or report is None:
        return None
    elapsed = (report.computed_at - experiment.started_at).total_seconds() / SECONDS_PER_DAY
    return max(MIN_RATE_WINDOW_DAYS, elapsed)


def _whole_days(experiment: Experiment, now: datetime) -> int | None:
    if experiment.started_at is None:
        return None
    return max(0, (now - experiment.started_at).days)


def _age_text(seconds: float) -> str:
    if seconds >= 2 * SECONDS_PER_DAY:
        return f"{int(seconds // SECONDS_PER_DAY)} days"
    if seconds >= 7200:
        return f"{int(seconds // 3600)} hours"
    return f"{max(1, int(seconds // 60))} minutes"


def _number(value: Any) -> float | None:
    return float(value) if _finite(value) else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
