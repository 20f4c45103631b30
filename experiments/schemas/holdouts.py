"""Holdout schemas (SPEC §12): the resource, its patch, conclusion and report."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from experiments.schemas import Key, ListQuery, MetricIn, MetricOut, Strict, Text
from experiments.schemas.reports import (
    AlertOut,
    FrictionCell,
    FrictionPoint,
    FunnelStep,
    IdentityOut,
    Method,
    MetricResult,
    MetricTimeline,
    TimelinePoint,
)

HoldoutStatus = Literal["running", "concluded"]
MAX_PERCENT = 0.2
ALL_EXPERIMENTS = "*"


class HoldoutScope(Strict):
    """Which experiments the holdout keeps its units away from: exactly one of the two."""

    experiments: list[Key | Literal["*"]] | None = Field(None, min_length=1, max_length=500)
    layers: list[Key] | None = Field(None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _one_kind(self) -> HoldoutScope:
        if (self.experiments is None) == (self.layers is None):
            raise ValueError("give either 'experiments' (keys, or [\"*\"] for all) or 'layers'")
        if self.experiments and ALL_EXPERIMENTS in self.experiments and len(self.experiments) > 1:
            raise ValueError("'*' already means every experiment; list no keys with it")
        return self


_PERCENT = {"gt": 0.0, "le": MAX_PERCENT, "allow_inf_nan": False,
            "description": "share of units held out (and as many measured), in (0, 0.2]"}


class HoldoutFields(Strict):
    """The writable configuration of a holdout."""

    key: Key
    name: Text = Field(min_length=1, max_length=200)
    percent: float = Field(**_PERCENT)  # type: ignore[arg-type]
    scope: HoldoutScope
    metrics: list[MetricIn] = Field(min_length=1, max_length=50)


class HoldoutPatch(Strict):
    """Any subset of the writable fields but the key (``percent`` frozen once exposed)."""

    name: Text = Field(None, min_length=1, max_length=200)  # type: ignore[assignment]
    percent: float = Field(None, **_PERCENT)  # type: ignore[arg-type]
    scope: HoldoutScope = None  # type: ignore[assignment]
    metrics: list[MetricIn] = Field(None, min_length=1, max_length=50)  # type: ignore[assignment]


class HoldoutOut(BaseModel):
    key: str
    name: str
    percent: float
    scope: dict[str, Any]
    metrics: list[MetricOut]
    status: HoldoutStatus
    units: dict[str, int] = Field(description="holdout exposures stored, by group")
    created_at: datetime
    concluded_at: datetime | None


class HoldoutList(BaseModel):
    items: list[HoldoutOut]
    next_cursor: str | None


class HoldoutListQuery(ListQuery):
    status: HoldoutStatus | None = None


class HoldoutReportOut(BaseModel):
    """The experiment report's shape with the groups as variants (``holdout`` is control);
    before the first analysis only the units and SRM, with ``error``."""

    id: int | None = None
    holdout: str
    computed_at: datetime | None
    method: Method | None = None
    units: dict[str, int] = Field(default_factory=dict)
    srm: dict[str, Any] | None = None
    metrics: list[MetricResult] = Field(default_factory=list)
    funnel: list[FunnelStep] = Field(default_factory=list)
    friction_points: list[FrictionPoint] = Field(default_factory=list)
    friction_matrix: list[FrictionCell] = Field(default_factory=list)
    timeline: list[TimelinePoint] = Field(default_factory=list)
    metric_timeline: list[MetricTimeline] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    alerts: list[AlertOut] = Field(default_factory=list)
    identity: IdentityOut | None = None  # None: before the first analysis, or stored before
    error: str | None = None
