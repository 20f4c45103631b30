"""Experiments: list, create/edit form, the experiment page, lifecycle actions, exports."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin import exports, launch, presenters, queries
from admin.blueprint import MAX_ID, bp
from admin.forms import (
    blank_state,
    field_id,
    merge_errors,
    parse_form,
    state_from_experiment,
)
from admin.session_auth import principal, requires
from admin.views import flash_refusal, run_action
from experiments.db import db_session, utcnow
from experiments.errors import ApiError, Conflict, ValidationFailed, validated
from experiments.models import EXPERIMENT_STATUSES, Experiment
from experiments.schemas import (
    FRICTION_KINDS,
    ConcludeIn,
    ExperimentPatch,
    IterateIn,
    MetricKind,
    TargetingOp,
)
from experiments.schemas.identity import ConflictList
from experiments.services import analysis, audit, bandits, identity, lifecycle, portfolio
from experiments.services.simulate import SimulationPlan, simulate_traffic
from experiments.services.warehouses.engines import configured_warehouses

PAGE_SIZE = 50
_CONCLUDED_EDITABLE = ("name", "hypothesis", "owner", "learnings")
PAST_TENSE = {"start": "started", "pause": "paused", "resume": "resumed"}


def days_running(experiment: Experiment, now: datetime | None = None) -> int | None:
    """Whole days between start and conclusion (or now)."""
    if experiment.started_at is None:
        return None
    end = experiment.concluded_at or now or utcnow()
    return max(0, (end - experiment.started_at).days)


@bp.route("/experiments")
@requires("viewer")
def experiments() -> str:
    """All experiments with their status, units and the primary metric's verdict."""
    status = request.args.get("status") or None
    if status not in (None, *EXPERIMENT_STATUSES):
        abort(400, f"unknown status {status!r}")
    text = (request.args.get("q") or "").strip()[:200] or None
    session = db_session()
    rows, next_cursor = queries.search_experiments(
        session, status=status, text=text, limit=PAGE_SIZE, cursor=request.args.get("cursor"))
    reports = analysis.latest_reports(session, [row.id for row in rows])
    items = [_list_item(row, reports.get(row.id)) for row in rows]
    return render_template("admin/experiments.html", items=items, status=status, q=text or "",
                           statuses=EXPERIMENT_STATUSES, next_cursor=next_cursor)


def _list_item(experiment: Experiment, report: Any) -> dict[str, Any]:
    body = report.body if report is not None else None
    return {"experiment": experiment, "days": days_running(experiment),
            "units": presenters.total_units(body) if body else None,
            "verdict": presenters.primary_verdict(body), "srm": presenters.srm_detected(body),
            "decision": presenters.decision_of(experiment.status, experiment.decision, body)}


def _form_page(state: dict[str, Any], *, errors: dict[str, list[str]] | None = None,
               experiment: Experiment | None = None, status: int = 200) -> tuple[str, int]:
    # The configured warehouses, and the experiment's own even if no longer configured (its
    # option must stay selected, or saving the form would move the analysis back home).
    chosen = state["analysis"].get("warehouse")
    warehouses = sorted({*configured_warehouses(), *([chosen] if chosen else [])})
    return render_template(
        "admin/experiment_form.html", state=state, errors=errors or {}, experiment=experiment,
        field_id=field_id, friction_kinds=FRICTION_KINDS, metric_kinds=MetricKind.__args__,
        ops=TargetingOp.__args__, concluded_only=_CONCLUDED_EDITABLE, warehouses=warehouses,
    ), status


@bp.route("/experiments/new", methods=["GET", "POST"])
@requires("editor")
def new_experiment() -> Response | tuple[str, int]:
    """Create a draft through the same validation as ``POST /api/v1/experiments``."""
    if request.method == "GET":
        return _form_page(blank_state())
    state, data, errors = parse_form(request.form)
    session = db_session()
    try:
        if errors:
            lifecycle.validate_fields(data)  # collect the service's messages too
            return _form_page(state, errors=errors, status=422)
        experiment = lifecycle.create_experiment(session, data, principal())
    except ValidationFailed as exc:
        return _form_page(state, errors=merge_errors(errors, exc.details), status=422)
    except Conflict as exc:
        return _form_page(state, errors={"key": [exc.message]}, status=409)
    flash(f"Created draft experiment {experiment.key!r}.", "success")
    return redirect(url_for("admin.experiment", key=experiment.key))


@bp.route("/experiments/<key>/edit", methods=["GET", "POST"])
@requires("editor")
def edit_experiment(key: str) -> Response | tuple[str, int]:
    """Edit through ``update_experiment`` (what may change depends on the status)."""
    session = db_session()
    experiment = lifecycle.get_experiment(session, key)
    if request.method == "GET":
        return _form_page(state_from_experiment(lifecycle.experiment_to_dict(experiment)),
                          experiment=experiment)
    state, data, errors = parse_form(request.form)
    state["key"] = experiment.key
    data.pop("key")
    if experiment.status == "concluded":
        data = {name: data[name] for name in _CONCLUDED_EDITABLE if name in data}
        data["learnings"] = state["learnings"]
    else:
        data.pop("learnings", None)
    try:
        if errors:
            raise ValidationFailed([])
        patch = validated(ExperimentPatch, data, "the experiment is invalid")
        lifecycle.update_experiment(session, key, patch, principal())
    except ValidationFailed as exc:
        return _form_page(state, errors=merge_errors(errors, exc.details), experiment=experiment,
                          status=422)
    except Conflict as exc:
        session.rollback()
        return _form_page(state, errors={"form": [exc.message]},
                          experiment=lifecycle.get_experiment(session, key), status=409)
    flash("Saved.", "success")
    return redirect(url_for("admin.experiment", key=key))


@bp.route("/experiments/<key>")
@requires("viewer")
def experiment(key: str) -> str:
    """The experiment page: decision, charts, metric table, friction, history, audit, chain."""
    session = db_session()
    row = lifecycle.get_experiment(session, key)
    history = queries.report_history(session, row.id, limit=50)
    report = history[0] if history else None
    if request.args.get("report"):
        wanted = request.args["report"]
        report = (queries.get_report(session, row.id, int(wanted))
                  if wanted.isdigit() and int(wanted) <= MAX_ID else None)
        if report is None:
            abort(404, "no such report for this experiment")
    body = report.body if report is not None else {}
    entries, _ = audit.list_audit(session, experiment_key=key, limit=50, cursor=None)
    data = lifecycle.experiment_to_dict(row)
    return render_template(
        "admin/experiment.html", experiment=row, data=data,
        days=days_running(row), report=report, history=history,
        is_latest=bool(history) and report is history[0],
        view=_report_view(row, body), audit_entries=entries,
        segments=presenters.segment_views(body, request.args.get("dimension"),
                                         row.analysis.get("alpha")),
        children=queries.iterations_of(session, row.id),
        iteration_name=lifecycle.iteration_name(row),
        demo=_demo_mode(), ship_risks=_ship_risks(row), launch=_launch_view(session, row, data),
        bandit=_bandit_view(session, row, body),
    )


def _bandit_view(session: Any, row: Experiment, body: dict[str, Any]) -> dict[str, Any] | None:
    """Weights over time (one point per period) and the latest chance of being best per arm."""
    if bandits.bandit_settings(row) is None:
        return None
    periods = bandits.list_allocations(session, row.key)
    arms = [v.key for v in row.variants]
    p_best = body.get("p_best") if isinstance(body.get("p_best"), dict) else None
    return {
        "settings": row.allocation,
        "periods": periods,
        "arms": arms,
        "p_best": p_best or (periods[-1]["p_best"] if periods else None),
        "chart": {"labels": [f"P{p['period']} {p['started_at']:%Y-%m-%d %H:%M}" for p in periods],
                  "series": [{"variant": arm, "weights": [p["weights"].get(arm) for p in periods]}
                             for arm in arms]},
    }


def _ship_risks(row: Experiment) -> dict[str, list[str]]:
    """Per variant, the risks the conclude form's confirmation lists before shipping it."""
    if row.status not in ("running", "paused"):
        return {}
    return {variant: [risk["message"] for risk in risks]
            for variant, risks in lifecycle.ship_risks_by_variant(row).items()}


def _launch_view(session: Any, row: Experiment, data: dict[str, Any]) -> dict[str, Any]:
    """Targeting in words, the launch checklist and the SDK snippet (drafts show them open)."""
    power = launch.power_estimate(data, _parent_baseline(session, row, data))
    return {"targeting": launch.targeting_lines(data), "power": power,
            "checklist": launch.checklist(data, power),
            "snippet": launch.sdk_snippet(data, request.host_url.rstrip("/"))}


def _parent_baseline(session: Any, row: Experiment, data: dict[str, Any]) -> float | None:
    """The control rate of the same primary metric in the experiment this one iterates."""
    primary = next((m["key"] for m in data["metrics"] if m["role"] == "primary"), None)
    if row.iteration_of is None or primary is None:
        return None
    parent = analysis.latest_reports(session, [row.iteration_of.id]).get(row.iteration_of.id)
    if parent is None:
        return None
    control = next((v.key for v in row.iteration_of.variants if v.is_control), None)
    estimate = portfolio.control_entry(parent.body, primary, control).get("estimate")
    return float(estimate) if isinstance(estimate, int | float) else None


def _report_view(row: Experiment, body: dict[str, Any]) -> dict[str, Any]:
    variants = [v.key for v in row.variants]
    treatments = [v.key for v in row.variants if not v.is_control]
    metrics = presenters.metric_rows(body)
    in_rows = presenters.metric_notes(body)  # said in the metric's own row
    warnings = body.get("warnings") if isinstance(body.get("warnings"), list) else []
    return {
        "body": body,
        "decision": presenters.decision_of(row.status, row.decision, body),
        "srm": body.get("srm") if isinstance(body.get("srm"), dict) else None,
        "split": presenters.unit_split(body, {v.key: v.weight for v in row.variants}),
        "metrics": metrics,
        "correction": row.analysis.get("correction", "holm"),
        "method_line": presenters.method_line(body.get("method"), row.analysis.get("alpha")),
        "lift": presenters.lift_chart(body),
        "timelines": presenters.metric_timelines(body),
        "alerts": _alerts(body),
        "funnel": presenters.funnel(body, variants),
        "heatmaps": presenters.friction_heatmaps(body, list(row.journey), treatments),
        "warnings": [w for w in warnings if w not in in_rows],
        "identity": presenters.identity_line(body),
    }


def _alerts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's alerts to list in red (SRM has its own banner already)."""
    alerts = body.get("alerts") if isinstance(body.get("alerts"), list) else []
    return [a for a in alerts if isinstance(a, dict)
            and not (a.get("kind") == "srm" and presenters.srm_detected(body))]



def _act(key: str, action: Callable[[], Any], done: str) -> Response:
    """Run an action, flash its result and go back to the experiment page."""
    return run_action(action, done, "admin.experiment", key=key)


def _transition(action: str) -> None:
    def view(key: str) -> Response:
        return _act(key, lambda: lifecycle.transition(db_session(), key, action, principal()),
                    f"Experiment {PAST_TENSE[action]}.")

    view.__name__ = f"{action}_experiment"
    view.__doc__ = f"{action.capitalize()} the experiment."
    bp.add_url_rule(f"/experiments/<key>/{action}", view.__name__,
                    requires("editor")(view), methods=["POST"])


for _action in ("start", "pause", "resume"):
    _transition(_action)


@bp.route("/experiments/<key>/conclude", methods=["POST"])
@requires("editor")
def conclude_experiment(key: str) -> Response:
    """Conclude with an outcome, a winner (for ship) and the learnings."""
    def run() -> None:
        body = validated(ConcludeIn, {"outcome": request.form.get("outcome", ""),
                                      "winner": request.form.get("winner") or None,
                                      "learnings": request.form.get("learnings", "").strip(),
                                      "acknowledge_risks":
                                          request.form.get("acknowledge_risks") == "1"})
        lifecycle.transition(db_session(), key, "conclude", principal(), body)
    return _act(key, run, "Experiment concluded.")


@bp.route("/experiments/<key>/iterate", methods=["POST"])
@requires("editor")
def iterate_experiment(key: str) -> Response:
    """Start the next experiment of the chain as a draft, then edit it."""
    try:
        body = validated(IterateIn, {"key": request.form.get("new_key", "").strip(),
                                     "name": request.form.get("new_name", "").strip() or None,
                                     "from_winner": request.form.get("from_winner") == "1"})
        child = lifecycle.iterate_experiment(db_session(), key, body, principal())
    except ApiError as exc:
        flash_refusal(exc)
        return redirect(url_for("admin.experiment", key=key))
    flash(f"Created iteration {child.key!r}: review it, then start it.", "success")
    return redirect(url_for("admin.edit_experiment", key=child.key))


@bp.route("/experiments/<key>/delete", methods=["POST"])
@requires("editor")
def delete_experiment(key: str) -> Response:
    """Delete a draft."""
    try:
        lifecycle.delete_experiment(db_session(), key, principal())
    except ApiError as exc:
        flash_refusal(exc)
        return redirect(url_for("admin.experiment", key=key))
    flash(f"Deleted draft {key!r}.", "success")
    return redirect(url_for("admin.experiments"))


@bp.route("/experiments/<key>/analyze", methods=["POST"])
@requires("editor")
def analyze_experiment(key: str) -> Response:
    """Run the analysis now instead of waiting for the scheduler."""
    return _act(key, lambda: analysis.analyze_experiment(db_session(), key), "Analysis complete.")


def _demo_mode() -> bool:
    return bool(getattr(current_app.config["PARCOURS"], "DEMO", False))


@bp.route("/experiments/<key>/simulate", methods=["POST"])
@requires("editor")
def simulate_experiment(key: str) -> Response:
    """Demo mode only (`make run`): send simulated visitors through the real services."""
    if not _demo_mode():
        abort(404, "simulation is only available in demo mode")
    units = request.form.get("units", "2000")
    try:
        if not units.isdigit() or not 1 <= int(units) <= 20_000:
            raise ValidationFailed.field("units", "must be a whole number from 1 to 20000")
        # A fresh seed per click adds new visitors instead of replaying the same ones.
        plan = SimulationPlan(units=int(units), seed=secrets.randbelow(2**31))
        exposed = simulate_traffic(db_session(), key, plan)
    except ValueError as exc:
        flash_refusal(Conflict(str(exc)))
    except ApiError as exc:
        flash_refusal(exc)
    else:
        flash(f"Simulated {units} visitors; {sum(exposed.values())} entered the experiment "
              "(the others were excluded by traffic, targeting or layer). "
              "Run the analysis to see them.", "success")
    return redirect(url_for("admin.experiment", key=key))


@bp.route("/experiments/<key>/conflicts.json")
@requires("viewer")
def experiment_conflicts(key: str) -> Response:
    """The API's conflicts list (SPEC §14), for people signed in without a key."""
    found = ConflictList.model_validate({"items": identity.conflicts(db_session(), key)})
    return Response(found.model_dump_json(), mimetype="application/json")


@bp.route("/experiments/<key>/export.<fmt>")
@requires("viewer")
def export_experiment(key: str, fmt: str) -> Response:
    """The API's CSV/JSON export of the latest report, for people signed in without a key."""
    if fmt not in ("csv", "json"):
        abort(404, "export formats are csv and json")
    report = analysis.get_latest_report(db_session(), key)
    return exports.download(key, report, fmt)
