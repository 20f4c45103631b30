"""Holdout pages: the list with the create form, one holdout (scope, groups, report), conclude."""

from __future__ import annotations

from typing import Any

from flask import redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin import presenters
from admin.blueprint import bp
from admin.format import error_text
from admin.session_auth import principal, requires
from admin.views import run_action
from experiments.db import db_session
from experiments.errors import ApiError, ValidationFailed, validated
from experiments.schemas.holdouts import HoldoutFields
from experiments.services import holdout_reports, holdouts

SCOPE_KINDS = ("all", "experiments", "layers")
EMPTY_FORM = {"key": "", "name": "", "percent": "5", "scope_kind": "all", "scope_keys": "",
              "event": "purchase"}


def _page(status: int = 200, **context: Any) -> tuple[str, int]:
    session = db_session()
    rows, next_cursor = holdouts.list_holdouts(session, status=None, limit=200,
                                               cursor=request.args.get("cursor"))
    context.setdefault("form", EMPTY_FORM)
    return render_template("admin/holdouts.html", holdouts=rows, next_cursor=next_cursor,
                           units=holdouts.group_counts(session, [row.id for row in rows]),
                           scope_kinds=SCOPE_KINDS, **context), status


@bp.route("/holdouts")
@requires("viewer")
def holdouts_page() -> tuple[str, int]:
    """Every holdout with its groups' sizes, and (editors) the form to create one."""
    return _page()


@bp.route("/holdouts", methods=["POST"])
@requires("editor")
def create_holdout() -> Response | tuple[str, int]:
    """Create a holdout from the form: percent in %, scope as a kind and a list of keys."""
    form = {name: request.form.get(name, default).strip()[:2000]
            for name, default in EMPTY_FORM.items()}
    try:
        holdout = holdouts.create_holdout(db_session(), form_fields(form), principal())
    except ApiError as exc:
        db_session().rollback()
        return _page(exc.status, form=form, error=error_text(exc))
    return redirect(url_for("admin.holdout", key=holdout.key))


def form_fields(form: dict[str, str]) -> HoldoutFields:
    """The form in API terms (422 naming the field as labelled when it does not parse)."""
    try:
        percent = float(form["percent"].rstrip("%")) / 100
    except ValueError:
        percent = float("nan")
    if not 0 < percent <= 0.2:
        raise ValidationFailed.field("percent", "type a share above 0 and at most 20 %, e.g. 5")
    keys = [key.strip() for key in form["scope_keys"].split(",") if key.strip()]
    scope = {"experiments": ["*"]} if form["scope_kind"] == "all" else {
        "layers" if form["scope_kind"] == "layers" else "experiments": keys}
    return validated(HoldoutFields, {
        "key": form["key"], "name": form["name"], "percent": percent, "scope": scope,
        "metrics": [{"key": form["event"] or "conversion", "kind": "conversion",
                     "event": form["event"], "role": "primary"}]}, "the holdout is invalid")


@bp.route("/holdouts/<key>")
@requires("viewer")
def holdout(key: str) -> str:
    """One holdout: scope, how many units each group holds, and its report."""
    session = db_session()
    found = holdouts.get_holdout(session, key)
    report = holdouts.holdout_report(session, key)
    view = {"metrics": presenters.metric_rows(report),
            "correction": holdout_reports.SETTINGS.correction,
            "method_line": presenters.method_line(report.get("method"),
                                                  holdout_reports.SETTINGS.alpha),
            "funnel": presenters.funnel(report, list(holdouts.GROUPS)),
            "identity": presenters.identity_line(report)}
    return render_template("admin/holdout.html", h=found, report=report, view=view)


@bp.route("/holdouts/<key>/analyze", methods=["POST"])
@requires("editor")
def analyze_holdout(key: str) -> Response:
    """Compute the holdout's report now."""
    return run_action(lambda: holdout_reports.analyze_holdout(db_session(), key),
                      "Holdout analysed.", "admin.holdout", key=key)


@bp.route("/holdouts/<key>/conclude", methods=["POST"])
@requires("editor")
def conclude_holdout(key: str) -> Response:
    """Release the held-out units (they are assigned like everyone from now on)."""
    return run_action(lambda: holdouts.conclude_holdout(db_session(), key, principal()),
                      "Holdout concluded: its units now see every experiment.",
                      "admin.holdout", key=key)
