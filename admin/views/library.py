"""Learnings library across concluded experiments, and the power calculator."""

from __future__ import annotations

from typing import Any

from flask import render_template, request

from admin import queries
from admin.blueprint import bp
from admin.session_auth import requires
from experiments.db import db_session
from experiments.errors import ValidationFailed
from experiments.services.analysis import calculate_power
from stats.records import KINDS

POWER_KINDS = tuple(kind for kind in KINDS if kind not in ("ratio", "nps"))
POWER_DEFAULTS = {"kind": "conversion", "baseline": "0.10", "baseline_sd": "", "mde": "0.05",
                  "alpha": "0.05", "power": "0.8", "variants": "2", "daily_units": "2000"}


@bp.route("/learnings")
@requires("viewer")
def learnings() -> str:
    """What every concluded experiment taught, newest first, searchable."""
    text = (request.args.get("q") or "").strip()[:200] or None
    rows, next_cursor = queries.search_experiments(
        db_session(), status="concluded", text=text, limit=100, cursor=request.args.get("cursor"))
    return render_template("admin/learnings.html", rows=rows, q=text or "",
                           next_cursor=next_cursor)


@bp.route("/power")
@requires("viewer")
def power() -> tuple[str, int]:
    """Units and days needed to detect an effect: the calculator behind POST /api/v1/stats/power."""
    values = {name: request.args.get(name, default).strip()[:50]
              for name, default in POWER_DEFAULTS.items()}
    result, errors = None, {}
    if request.args:
        try:
            result = calculate_power(values["kind"], **_numbers(values))
        except ValidationFailed as exc:
            errors = {str(d.get("field")): str(d.get("message")) for d in exc.details}
    return render_template("admin/power.html", values=values, result=result, errors=errors,
                           kinds=POWER_KINDS), 422 if errors else 200


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
