"""Report (SPEC §6), export and calculator schemas, so /openapi.json documents them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from experiments.schemas import (
    MAX_QUANTILE,
    MIN_QUANTILE,
    DecisionOut,
    ListQuery,
    MetricKind,
    Strict,
)

Verdict = Literal["better", "worse", "flat", "inconclusive"]
Method = Literal["frequentist", "bayesian", "sequential"]
Correction = Literal["holm", "bh", "none"]
Finite = Annotated[float, Field(allow_inf_nan=False)]
# Calculator inputs: far beyond any real experiment (1e12 per unit × 1e15 units), yet far
# enough below the float range that squares and variances never overflow into NaN results.
MAX_STATISTIC = 1e150
MAX_COUNT = 10 ** 15
Statistic = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_STATISTIC, le=MAX_STATISTIC)]
Count = Annotated[int, Field(le=MAX_COUNT)]
Interval = list[float] | None
MAX_QUANTILE_VALUES = 100_000  # per variant, for the quantile calculator


class VariantEstimate(BaseModel):
    """One variant's estimate with the counts behind it (which ones depends on the kind)."""

    variant: str
    units: int
    estimate: float | None
    ci: Interval = None
    conversions: int | None = None  # conversion, friction
    sum: float | None = None  # mean, count, time_to_convert
    promoters: int | None = None  # nps
    detractors: int | None = None
    numerator_sum: float | None = None  # ratio
    denominator_sum: float | None = None
    # Observed per-unit standard deviation (ddof=1): mean, count, time_to_convert; the
    # delta-method SD of a ratio; the SD of the +100/0/-100 scores (points) of NPS.
    sd: float | None = None


class ComparisonOut(BaseModel):
    variant: str
    absolute_effect: float | None
    absolute_ci: Interval
    relative_effect: float | None
    relative_ci: Interval
    p_value: float | None
    adjusted_p_value: float | None
    chance_to_win: float | None
    expected_loss: float | None
    significant: bool
    verdict: Verdict


class CapUsed(BaseModel):
    """A metric's cap as configured and the threshold this analysis used."""

    type: Literal["absolute", "percentile"]
    value: float
    capped_at: float | None
    denominator_capped_at: float | None = None


class SegmentMetric(BaseModel):
    """A metric's estimates and comparisons (one segment level's; the report's adds more)."""

    key: str
    kind: str
    role: str
    direction: str
    variants: list[VariantEstimate]
    comparisons: list[ComparisonOut]
    quantile: float | None = None  # kind quantile: the level (0.9 = p90) …
    source: Literal["event_value", "unit_value", "step_duration"] | None = None  # … and values
    step: str | None = None  # source step_duration: the journey step timed


class MetricResult(SegmentMetric):
    warnings: list[str] = Field(default_factory=list)
    cap: CapUsed | None = None
    period_weighted: bool = False  # a bandit's primary metric (SPEC §13)


class SrmOut(BaseModel):
    p_value: float | None
    detected: bool


class TimeOnStep(BaseModel):
    """Seconds on a journey step, over the units that left it for a later step (SPEC §11)."""

    p50: float | None
    p90: float | None
    n: int


class FunnelVariant(BaseModel):
    units: int
    rate: float | None
    from_previous: float | None
    time_on_step: TimeOnStep | None = None  # None: reports stored before time on step


class DataQuality(BaseModel):
    """Units left out of the analysis for exposure problems (a warehouse's exposures may
    name one unit under two variants; Parcours's own table cannot)."""

    multi_variant_units: int = 0


class FunnelStep(BaseModel):
    step: str
    variants: dict[str, FunnelVariant]
    largest_drop_off: bool


class FrictionPoint(BaseModel):
    step: str
    friction_kind: str
    variant: str
    rate: float | None
    control_rate: float | None
    relative_effect: float | None
    adjusted_p_value: float | None
    chance_to_win: float | None = None


class FrictionCell(FrictionPoint):
    """A heatmap cell: every step × friction kind × treatment with any friction."""

    significant: bool
    count: int | None = None  # treatment units that met this friction here
    units: int | None = None  # treatment units exposed
    control_count: int | None = None
    control_units: int | None = None


class TimelinePoint(BaseModel):
    date: str
    variant: str
    units: int
    absolute_effect: float | None = None
    absolute_ci: Interval = None
    relative_effect: float | None
    relative_ci: Interval


class AlertOut(BaseModel):
    """Something a manager must see now, whatever ``min_days`` (SPEC §6)."""

    kind: Literal["guardrail_breach", "srm", "events_before_exposure"]
    metric: str | None
    variant: str | None
    message: str


class FailedReportOut(BaseModel):
    """An analysis that failed for this experiment (the others went on)."""

    id: int
    experiment: str
    computed_at: datetime
    error: str


class EffectPoint(BaseModel):
    units: int
    control_units: int
    absolute_effect: float | None
    absolute_ci: Interval


class MetricTimelinePoint(BaseModel):
    date: str
    variant: str
    daily: EffectPoint  # units first exposed on this day only
    cumulative: EffectPoint  # every unit exposed up to and including this day


class MetricTimeline(BaseModel):
    """One metric's absolute effect per exposure day and treatment, in the report's framework."""

    metric: str
    kind: str
    points: list[MetricTimelinePoint]


class HeterogeneityOut(BaseModel):
    """One level's effect against the rest of its dimension (Bonferroni-adjusted)."""

    metric: str
    variant: str
    effect: float | None
    rest_effect: float | None
    p_value: float | None
    adjusted_p_value: float | None
    detected: bool


class SegmentLevel(BaseModel):
    level: str  # the attribute's value; "__other__" (merged levels) and "__null__" (missing)
    units: dict[str, int]
    srm: SrmOut
    metrics: list[SegmentMetric]
    heterogeneity: list[HeterogeneityOut]
    friction_points: list[FrictionPoint]
    warnings: list[str] = Field(default_factory=list)


class SegmentOut(BaseModel):
    """One dimension's breakdown (SPEC §11): for hypotheses, never for decisions."""

    dimension: str
    levels: list[SegmentLevel]
    merged_levels: int
    # The slice warning, then what holds for every level (a quantile's missing
    # level-against-the-rest test): said once here, not per level.
    warnings: list[str] = Field(default_factory=list)


class IdentityOut(BaseModel):
    """Identity clusters (SPEC §14): analysed as units; conflicting ones left out."""

    clusters: int  # exposed clusters, conflicting ones included
    linked_units: int  # exposed ids named in a link (devices and customer ids)
    conflicts: int  # clusters exposed to two variants, left out of the analysis


class ReportOut(BaseModel):
    """One analysis run (SPEC §6)."""

    id: int
    experiment: str
    computed_at: datetime
    method: Method
    units: dict[str, int]
    srm: SrmOut
    metrics: list[MetricResult]
    funnel: list[FunnelStep]
    friction_points: list[FrictionPoint]
    friction_matrix: list[FrictionCell] = Field(default_factory=list)
    timeline: list[TimelinePoint]
    metric_timeline: list[MetricTimeline] = Field(default_factory=list)
    decision: DecisionOut | None
    warnings: list[str]
    alerts: list[AlertOut] = Field(default_factory=list)
    # Bandits (SPEC §13): primary metric period-weighted, chance of being best per arm.
    period_weighted: bool = False
    p_best: dict[str, float] | None = None
    expected_units: dict[str, float] | None = None
    segments: list[SegmentOut] = Field(default_factory=list)
    identity: IdentityOut | None = None  # None: reports stored before identity clusters
    data_quality: DataQuality | None = None  # None: reports stored before it was counted


class ReportList(BaseModel):
    items: list[ReportOut | FailedReportOut]
    next_cursor: str | None


class ReportListQuery(ListQuery):
    pass


class ExportQuery(Strict):
    format: Literal["csv", "json"] = "json"


class ExportRow(BaseModel):
    metric: str
    kind: str
    role: str
    variant: str
    units: int
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    absolute_effect: float | None
    absolute_ci_low: float | None
    absolute_ci_high: float | None
    relative_effect: float | None
    relative_ci_low: float | None
    relative_ci_high: float | None
    p_value: float | None
    adjusted_p_value: float | None
    chance_to_win: float | None
    expected_loss: float | None
    significant: bool | None
    verdict: Verdict | None
    # Segment rows (SPEC §11); null on the whole-report rows.
    dimension: str | None = None
    level: str | None = None
    heterogeneity_adjusted_p_value: float | None = None
    heterogeneity_detected: bool | None = None


class ExportOut(BaseModel):
    """Per-variant, per-metric results of the latest report (CSV has the same columns)."""

    experiment: str
    report_id: int
    computed_at: datetime
    rows: list[ExportRow]
    identity: IdentityOut | None = None  # the report's identity clusters (SPEC §14)


class StatsVariantIn(Strict):
    """One variant's sufficient statistics; which fields are required depends on ``kind``."""

    key: str = Field(min_length=1, max_length=64)
    is_control: bool = False
    n: Count | None = None
    conversions: Count | None = None
    sum: Statistic | None = None
    sum_squares: Statistic | None = None
    num_sum: Statistic | None = None
    num_sum_squares: Statistic | None = None
    den_sum: Statistic | None = None
    den_sum_squares: Statistic | None = None
    num_den_sum: Statistic | None = None
    promoters: Count | None = None
    detractors: Count | None = None
    pre_sum: Statistic | None = None
    pre_sum_squares: Statistic | None = None
    cross_sum: Statistic | None = None
    # kind quantile: the raw values, one per unit (SPEC §11)
    values: list[Statistic] | None = Field(None, max_length=MAX_QUANTILE_VALUES)


class StatsAnalyzeIn(Strict):
    kind: Literal["conversion", "mean", "count", "ratio", "nps", "quantile"]
    quantile: Finite | None = Field(None, ge=MIN_QUANTILE, le=MAX_QUANTILE)
    method: Method = "frequentist"
    alpha: Finite = 0.05
    correction: Correction = "holm"
    direction: Literal["increase", "decrease"] = "increase"
    mde: Finite | None = None
    weights: list[Finite] | None = Field(None, max_length=10)
    variants: list[StatsVariantIn] = Field(min_length=1, max_length=10)


class StatsAnalyzeOut(BaseModel):
    variants: list[VariantEstimate]
    comparisons: list[ComparisonOut]
    srm: SrmOut | None
    warnings: list[str]


class PowerIn(Strict):
    kind: MetricKind = "conversion"
    baseline: Finite
    baseline_sd: Finite | None = None
    mde: Finite
    alpha: Finite = 0.05
    power: Finite = 0.8
    variants: int = 2
    daily_units: Finite | None = None


class PowerOut(BaseModel):
    units_per_variant: int
    total_units: int
    days: int | None
