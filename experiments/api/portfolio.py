"""Portfolio resource (SPEC §8): running and paused experiments, progress and health."""

from __future__ import annotations

from flask import Blueprint, current_app

from experiments.api.routing import api_route
from experiments.db import db_session
from experiments.schemas.portfolio import PortfolioOut
from experiments.services import portfolio as portfolio_service

bp = Blueprint("portfolio", __name__, url_prefix="/api/v1")


@api_route(bp, "/portfolio", response=PortfolioOut, tags=("portfolio",))
def portfolio() -> PortfolioOut:
    """Every running and paused experiment with units vs needed, days left and health."""
    interval = current_app.config["PARCOURS"].ANALYSIS_INTERVAL_S
    items = portfolio_service.portfolio(db_session(), analysis_interval_s=interval)
    return PortfolioOut.model_validate({"items": items})
