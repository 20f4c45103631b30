"""Standalone calculators (SPEC §6), for any valid key: the same code the reports use."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from experiments.api.routing import api_route
from experiments.schemas.reports import PowerIn, PowerOut, StatsAnalyzeIn, StatsAnalyzeOut
from experiments.services import analysis, quantiles

bp = Blueprint("calculators", __name__, url_prefix="/api/v1")
TAGS = ("calculators",)


@api_route(bp, "/stats/analyze", "POST", auth="client", body=StatsAnalyzeIn,
           response=StatsAnalyzeOut, tags=TAGS)
def analyze_numbers(body: StatsAnalyzeIn) -> dict[str, Any]:
    """Compare variants from their sufficient statistics (conversions, sums, NPS counts), or
    from raw values (kind quantile, at most 100,000 per variant)."""
    variants = [variant.model_dump(exclude_none=True) for variant in body.variants]
    if body.kind == "quantile":
        return quantiles.calculate_quantiles(
            variants, quantile=body.quantile, method=body.method, alpha=body.alpha,
            correction=body.correction, direction=body.direction, mde=body.mde,
            weights=body.weights)
    return analysis.calculate_comparisons(
        body.kind, variants, method=body.method, alpha=body.alpha,
        correction=body.correction, direction=body.direction, mde=body.mde,
        weights=body.weights)


@api_route(bp, "/stats/power", "POST", auth="client", body=PowerIn, response=PowerOut,
           tags=TAGS)
def power(body: PowerIn) -> dict[str, Any]:
    """Units per variant (and days) needed to detect a relative effect."""
    return analysis.calculate_power(body.kind, **body.model_dump(exclude={"kind"}))
