"""The audit log: who changed what, when."""

from __future__ import annotations

from flask import render_template, request

from admin.blueprint import bp
from admin.session_auth import requires
from experiments.db import db_session
from experiments.services import audit as audit_service


@bp.route("/audit")
@requires("viewer")
def audit() -> str:
    """Newest first, optionally for one experiment."""
    experiment = (request.args.get("experiment") or "").strip()[:64] or None
    rows, next_cursor = audit_service.list_audit(
        db_session(), experiment_key=experiment, limit=100, cursor=request.args.get("cursor"))
    return render_template("admin/audit.html", rows=rows, experiment=experiment or "",
                           next_cursor=next_cursor)
