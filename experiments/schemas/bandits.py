"""Bandit schemas (SPEC §13): weight periods and the bandit calculator."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from experiments.schemas import Strict, Text
from experiments.schemas.reports import Count, SrmOut, Statistic

Weight = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
ArmKey = Annotated[Text, Field(min_length=1, max_length=64)]  # as the other calculators' keys


class AllocationOut(BaseModel):
    """One weight period: new units from ``started_at`` on are split by ``weights``."""

    period: int
    started_at: datetime
    weights: dict[str, float]
    p_best: dict[str, float] | None
    seed: int


class AllocationList(BaseModel):
    items: list[AllocationOut]


class BanditVariantIn(Strict):
    """One arm's per-unit sums in one period (0/1 outcomes for a conversion rate)."""

    key: ArmKey
    n: Count = Field(ge=0)
    sum: Statistic
    sum_squares: Statistic


class BanditPeriodIn(Strict):
    weights: dict[ArmKey, Weight] = Field(min_length=1, max_length=10)
    variants: list[BanditVariantIn] = Field(min_length=1, max_length=10)


class StatsBanditIn(Strict):
    periods: list[BanditPeriodIn] = Field(min_length=1, max_length=1000)
    min_weight: Weight = 0.01
    seed: int = Field(0, ge=0, le=2 ** 63 - 1)
    direction: Literal["increase", "decrease"] = "increase"


class ArmEstimateOut(BaseModel):
    """Period-weighted mean m and the variance V of m."""

    n: int
    mean: float | None
    variance: float | None


class StatsBanditOut(BaseModel):
    estimates: dict[str, ArmEstimateOut]
    p_best: dict[str, float] | None
    weights: dict[str, float] | None
    expected_units: dict[str, float]
    srm: SrmOut
    seed: int
    warnings: list[str]
