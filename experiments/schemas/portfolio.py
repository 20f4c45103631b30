"""Portfolio response schema (SPEC §8), so /openapi.json documents ``GET /api/v1/portfolio``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

HealthKind = Literal["srm", "guardrail_breach", "events_before_exposure", "stale",
                     "analysis_error", "not_analyzed"]


class HealthChip(BaseModel):
    """Something that needs a manager's attention."""

    kind: HealthKind
    message: str
    metric: str | None = None
    variant: str | None = None


class PortfolioEntry(BaseModel):
    """One running or paused experiment: progress to power, health and verdict."""

    key: str
    name: str
    owner: str
    status: Literal["running", "paused"]
    started_at: str | None
    days_running: int | None
    min_days: int | None
    max_days: int | None
    units: dict[str, int]
    baseline: float | None
    units_needed_per_variant: int | None
    daily_units: float | None
    days_left: int | None
    # What days_left counts to: the units the power calculation needs, at the observed
    # rate ("power"), or a bandit's maximum duration ("max_days"); 0 once the report's
    # decision is made ("decided"); null without days left.
    days_left_basis: Literal["power", "max_days", "decided"] | None
    progress_note: str | None
    health: list[HealthChip]
    verdict: Literal["better", "worse", "flat", "inconclusive"] | None
    decision: str | None
    report_id: int | None
    report_computed_at: str | None


class PortfolioOut(BaseModel):
    items: list[PortfolioEntry]
