"""Learnings library across concluded experiments, and the power calculator."""

from __future__ import annotations

from typing import Any

from flask import render_template, request

from admin import format as fmt
from admin import queries
from admin.blueprint import bp
from admin.session_auth import requires
from experiments.db import db_session
from experiments.errors import ValidationFailed
from experiments.models import Experiment
from experiments.services.analysis import calculate_power, latest_reports
from stats.records import KINDS

POWER_KINDS = tuple(kind for kind in KINDS if kind not in ("ratio", "nps"))
POWER_DEFAULTS = {"kind": "conversion", "baseline": "0.10", "baseline_sd": "", "mde": "0.05",
                  "alpha": "0.05", "power": "0.8", "variants": "2", "daily_units": "2000",
                  "design": "fixed_horizon"}
POWER_DESIGNS = {"fixed_horizon": "Fixed horizon (frequentist, Bayesian)",
                 "sequential": "Sequential (always valid)"}


@bp.route("/learnings")
@requires("viewer")
def learnings() -> str:
    """What every concluded experiment taught, newest first, searchable."""
    text = (request.args.get("q") or "").strip()[:200] or None
    session = db_session()
    rows, next_cursor = queries.search_experiments(
        session, status="concluded", text=text, limit=100, cursor=request.args.get("cursor"))
    reports = latest_reports(session, [row.id for row in rows])
    results = {row.id: learning_results(row, reports[row.id].body if row.id in reports else {})
               for row in rows}
    return render_template("admin/learnings.html", rows=rows, q=text or "", results=results,
                           next_cursor=next_cursor)


def learning_results(experiment: Experiment, body: dict[str, Any]) -> dict[str, Any] | None:
    """The numbers behind a learning: the primary effect (of the winner, else the first
    treatment) and every guardrail's, each with its interval and verdict, from the last
    report."""
    metrics = [m for m in body.get("metrics") or [] if isinstance(m, dict)]
    primary = next((m for m in metrics if m.get("role") == "primary"), None)
    if primary is None:
        return None
    comparison = _comparison_of(primary, experiment.winner)
    return {
        "metric": primary.get("key"), "kind": primary.get("kind"),
        "variant": comparison.get("variant") if comparison else None,
        "effect": _effect_text(comparison) if comparison else None,
        "verdict": comparison.get("verdict") if comparison else None,
        "guardrails": [{"metric": m.get("key"), "variant": c.get("variant"),
                        "effect": _effect_text(c), "verdict": c.get("verdict")}
                       for m in metrics if m.get("role") == "guardrail"
                       for c in m.get("comparisons") or [] if isinstance(c, dict)],
    }


def _comparison_of(metric: dict[str, Any], winner: str | None) -> dict[str, Any] | None:
    comparisons = [c for c in metric.get("comparisons") or [] if isinstance(c, dict)]
    return next((c for c in comparisons if c.get("variant") == winner),
                comparisons[0] if comparisons else None)


def _effect_text(comparison: dict[str, Any]) -> str:
    """Relative effect and interval; NPS (and other unbounded ratios) in absolute terms."""
    if comparison.get("relative_effect") is not None:
        return (f"{fmt.signed_pct(comparison['relative_effect'])} "
                f"{fmt.interval(comparison.get('relative_ci'))}")
    if comparison.get("absolute_effect") is not None:
        return (f"{fmt.number(comparison['absolute_effect'], 3)} "
                f"{fmt.interval(comparison.get('absolute_ci'), relative=False)} (absolute)")
    return fmt.DASH


@bp.route("/power")
@requires("viewer")
def power() -> tuple[str, int]:
    """Units and days needed to detect an effect: the calculator behind POST /api/v1/stats/power."""
    values = {name: request.args.get(name, default).strip()[:50]
              for name, default in POWER_DEFAULTS.items()}
    result, errors = None, {}
    if request.args:
        try:
            result = calculate_power(values["kind"], **_numbers(values),
                                     design=values["design"])
        except ValidationFailed as exc:
            errors = {str(d.get("field")): str(d.get("message")) for d in exc.details}
    return render_template("admin/power.html", values=values, result=result, errors=errors,
                           kinds=POWER_KINDS, designs=POWER_DESIGNS), 422 if errors else 200


def _numbers(values: dict[str, str]) -> dict[str, Any]:
    """The typed numbers; a field that is not a number is a 422 naming it."""
    numbers: dict[str, Any] = {}
    for name in ("baseline", "baseline_sd", "mde", "alpha", "power", "daily_units", "variants"):
        if values[name] == "" and name in ("baseline_sd", "daily_units"):
            continue
        try:
            numbers[name] = int(values[name]) if name == "variants" else float(values[name])
        except ValueError:
            raise ValidationFailed.field(name, "must be a number") from None
    return numbers
