"""The home page: the portfolio of running and paused experiments (SPEC §8)."""

from __future__ import annotations

from flask import current_app, render_template

from admin.blueprint import bp
from admin.session_auth import requires
from experiments.db import db_session
from experiments.services import portfolio as portfolio_service

HEALTH_LABELS = {"srm": "SRM", "guardrail_breach": "Guardrail breach",
                 "events_before_exposure": "Events before exposure", "stale": "Stale analysis",
                 "analysis_error": "Analysis failed", "not_analyzed": "Not analysed yet"}


@bp.route("/")
@requires("viewer")
def portfolio() -> str:
    """What is running, is it healthy, when will we know: the manager's first page."""
    interval = current_app.config["PARCOURS"].ANALYSIS_INTERVAL_S
    items = portfolio_service.portfolio(db_session(), analysis_interval_s=interval)
    return render_template("admin/portfolio.html", items=items, labels=HEALTH_LABELS)
