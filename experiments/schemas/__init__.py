"""Request and response schemas (one module per resource; experiments and shared ones here).

Field-level rules live in the pydantic models; rules that span fields
(exactly one control, metric steps in the journey…) live in
:func:`experiment_problems` so that they can name the exact field path.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

NUL_MESSAGE = "must not contain NUL characters"


def text_problem(value: str) -> str | None:
    """Why a string cannot be hashed and stored as-is (NUL bytes, lone surrogates), if so."""
    if "\x00" in value:
        return NUL_MESSAGE
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid UTF-8 text"
    return None


def json_text_problem(value: Any) -> str | None:
    """Why a JSON value holds a string (or object key) that cannot be stored, if so.

    PostgreSQL's text and jsonb refuse NUL characters anywhere, nested payloads included,
    so the problem is found here (naming where) instead of as a 500 on insert.
    """
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if (problem := text_problem(node)) is not None:
                return f"{problem} (at {where})" if where else problem
        elif isinstance(node, dict):
            for key, item in node.items():
                if isinstance(key, str) and (problem := text_problem(key)) is not None:
                    return f"keys {problem} (in {where or 'the object'})"
                stack.append((item, f"{where}.{key}" if where else str(key)))
        elif isinstance(node, list):
            stack.extend((item, f"{where}[{index}]") for index, item in enumerate(node))
    return None


def _storable_text(value: str) -> str:
    if (problem := text_problem(value)) is not None:
        raise ValueError(problem)
    return value


def _storable_json(value: Any) -> Any:
    if (problem := json_text_problem(value)) is not None:
        raise ValueError(problem)
    return value


# Every string a request can store is Text (or built on it): one rule, one message, on
# SQLite and PostgreSQL alike. JSON values (payloads, targeting values) are JsonValue.
Text = Annotated[str, AfterValidator(_storable_text)]
JsonValue = Annotated[Any, AfterValidator(_storable_json)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_json)]

KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
Key = Annotated[str, Field(pattern=KEY_PATTERN, examples=["checkout-redesign"])]
MAX_STEP_LENGTH = 64
StepName = Annotated[Text, Field(min_length=1, max_length=MAX_STEP_LENGTH)]
EventName = Annotated[Text, Field(min_length=1, max_length=200)]
UnitId = Annotated[Text, Field(min_length=1, max_length=200)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]

FrictionKind = Literal[
    "error", "abandonment", "retry", "rage_click", "dead_click", "slow_step",
    "back_navigation", "form_error", "support_contact", "bounce",
]
FRICTION_KINDS: tuple[str, ...] = get_args(FrictionKind)
MetricKind = Literal["conversion", "mean", "count", "ratio", "friction", "nps", "time_to_convert",
                     "quantile"]
QuantileSource = Literal["event_value", "unit_value", "step_duration"]
QUANTILE_SOURCES: tuple[str, ...] = get_args(QuantileSource)
MIN_QUANTILE, MAX_QUANTILE = 0.01, 0.99  # as stats.quantile checks
# A segment dimension is an attribute name, written as targeting rules write one (SPEC §11).
MAX_DIMENSIONS = 3
DimensionName = Annotated[Text, Field(min_length=1, max_length=200, examples=["country"])]
TargetingOp = Literal["eq", "neq", "in", "not_in", "gt", "gte", "lt", "lte", "contains",
                      "regex", "exists"]
Status = Literal["draft", "running", "paused", "concluded"]
Outcome = Literal["ship", "rollback", "no_difference"]
WEIGHT_TOLERANCE = 1e-6
_LOWER_IS_BETTER = {"friction", "time_to_convert"}


class Strict(BaseModel):
    """Unknown fields are refused: a typo must not silently change an experiment."""

    model_config = ConfigDict(extra="forbid")


class VariantIn(Strict):
    key: Key
    name: Text = Field("", max_length=200)
    weight: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    is_control: bool = False
    payload: JsonObject = Field(default_factory=dict)


class TargetingRule(Strict):
    attribute: Text = Field(min_length=1, max_length=200)
    op: TargetingOp
    value: JsonValue = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> TargetingRule:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list value")
        if self.op in ("gt", "gte", "lt", "lte") and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float | str)
        ):
            raise ValueError(f"op {self.op!r} needs a number or string value")
        if self.op == "regex":
            if not isinstance(self.value, str) or len(self.value) > 500:
                raise ValueError("op 'regex' needs a pattern string of at most 500 characters")
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        if self.op in ("eq", "neq", "contains") and self.value is None:
            raise ValueError(f"op {self.op!r} needs a value")
        return self


CAPPABLE_KINDS = frozenset({"mean", "count", "ratio"})
MAX_ABSOLUTE_CAP = 1e12  # as an event's value (SPEC §5)


class MetricCap(Strict):
    """Winsorisation of per-unit values (SPEC §6): above the cap, a unit counts as the cap."""

    type: Literal["absolute", "percentile"]
    value: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _value_fits_type(self) -> MetricCap:
        if self.type == "percentile" and not 0.0 < self.value < 1.0:
            raise ValueError("a percentile cap needs a value between 0 and 1 (e.g. 0.99)")
        if self.type == "absolute" and not 0.0 < self.value <= MAX_ABSOLUTE_CAP:
            raise ValueError("an absolute cap needs a value above 0 and at most 1e12")
        return self


class MetricIn(Strict):
    key: Key
    kind: MetricKind
    role: Literal["primary", "secondary", "guardrail"] = "secondary"
    direction: Literal["increase", "decrease"] | None = None
    event: EventName | None = None
    numerator: EventName | None = None
    denominator: EventName | None = None
    friction_kind: FrictionKind | None = None
    step: StepName | None = None
    cap: MetricCap | None = None
    quantile: float | None = Field(None, ge=MIN_QUANTILE, le=MAX_QUANTILE, allow_inf_nan=False)
    source: QuantileSource | None = None

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> MetricIn:
        if self.direction is None:
            lower = self.kind in _LOWER_IS_BETTER or self.source == "step_duration"
            self.direction = "decrease" if lower else "increase"

        if self.kind == "nps" and self.event is None:
            self.event = "nps"
        if self.kind in ("conversion", "mean", "count", "time_to_convert") and not self.event:
            raise ValueError(f"a {self.kind} metric needs 'event'")
        if self.kind == "ratio" and not (self.numerator and self.denominator):
            raise ValueError("a ratio metric needs 'numerator' and 'denominator'")
        if self.friction_kind is not None and self.kind != "friction":
            raise ValueError("'friction_kind' applies to friction metrics only")
        if self.cap is not None and self.kind not in CAPPABLE_KINDS:
            raise ValueError("'cap' applies to mean, count and ratio metrics only")
        return self


def quantile_problems(metric: MetricIn) -> list[tuple[str, str]]:
    """(field, message) for a quantile metric's own fields: level, source, event or step."""
    if metric.kind != "quantile":
        return [(name, "applies to quantile metrics only") for name in ("quantile", "source")
                if getattr(metric, name) is not None]
    problems = []
    if metric.quantile is None:
        problems.append(("quantile", "is required for a quantile metric (0.01 to 0.99)"))
    if metric.source is None:
        problems.append(("source", f"is required for a quantile metric "
                                   f"({', '.join(QUANTILE_SOURCES)})"))
    elif metric.source == "step_duration" and not metric.step:
        problems.append(("step", "is required for a step_duration quantile metric"))
    elif metric.source != "step_duration" and not metric.event:
        problems.append(("event", f"is required for a {metric.source} quantile metric"))
    return problems


class AnalysisSettings(Strict):
    method: Literal["frequentist", "bayesian", "sequential"] = "sequential"
    alpha: float = Field(0.05, gt=0.0, le=0.5)
    power: float = Field(0.8, gt=0.0, lt=1.0)
    mde: float = Field(0.05, gt=0.0, le=100.0)
    correction: Literal["holm", "bh", "none"] = "holm"
    min_units_per_variant: int = Field(1000, ge=0, le=1_000_000_000)
    min_days: int = Field(7, ge=0, le=3650)
    max_days: int = Field(28, ge=1, le=3650)
    conversion_window_hours: float = Field(72, gt=0, le=24 * 366)
    cuped: bool = True
    auto_decide: bool = True
    auto_conclude: bool = False
    # Analyse in this warehouse (SPEC §15): a PARCOURS_WAREHOUSE_<NAME>_URL name, lower-cased.
    warehouse: Key | None = None
    # The funnel's p50/p90 time on each step (SPEC §11): one more statement over every step
    # event per analysis, never rolled up (a report with it measured at 2.3-10x the scheduled
    # report without, docs/performance.md), so asked for, not default.
    time_on_step: bool = False
    # Attributes every analysis breaks down by (SPEC §11): segments, never decisions.
    dimensions: list[DimensionName] = Field(default_factory=list, max_length=MAX_DIMENSIONS)


class AnalyzeIn(Strict):
    """Optional body of ``POST …/analyze``: extra breakdowns for this run only."""

    dimensions: list[DimensionName] = Field(default_factory=list, max_length=MAX_DIMENSIONS)

    @model_validator(mode="after")
    def _distinct_dimensions(self) -> AnalyzeIn:
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError("'dimensions' must not repeat an attribute")
        return self


class FixedAllocation(Strict):
    """Weights as configured, for the whole experiment (the default)."""

    type: Literal["fixed"] = "fixed"


class BanditAllocation(Strict):
    """Weights moved towards the best arm on the primary metric by the scheduler (SPEC §13)."""

    type: Literal["bandit"]
    burn_in_hours: float = Field(24, ge=0, le=24 * 366, allow_inf_nan=False)
    update_every_hours: float = Field(24, gt=0, le=24 * 366, allow_inf_nan=False)
    min_weight: float = Field(0.01, ge=0, le=0.5, allow_inf_nan=False)
    min_units_per_arm: int = Field(100, ge=2, le=1_000_000_000)


Allocation = Annotated[FixedAllocation | BanditAllocation, Field(discriminator="type")]
# Metrics a bandit can optimise: one number per unit, so periods combine linearly.
BANDIT_METRIC_KINDS = ("conversion", "mean", "count", "friction")


EXPERIMENT_EXAMPLE: dict[str, Any] = {
    "key": "checkout-redesign",
    "name": "One-page checkout",
    "hypothesis": "Merging address and payment removes the friction at payment",
    "owner": "journey-team@example.com",
    "journey": ["landing", "cart", "checkout", "payment", "confirmation"],
    "variants": [
        {"key": "control", "name": "Current", "weight": 0.5, "is_control": True, "payload": {}},
        {"key": "one-page", "name": "One page", "weight": 0.5, "is_control": False,
         "payload": {"layout": "single"}},
    ],
    "traffic": 1.0,
    "metrics": [
        {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary"},
        {"key": "payment-errors", "kind": "friction", "friction_kind": "error",
         "step": "payment", "role": "guardrail"},
    ],
}


class ExperimentFields(Strict):
    """The writable configuration of an experiment (SPEC §3)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXPERIMENT_EXAMPLE]})

    key: Key
    name: Text = Field(min_length=1, max_length=200)
    hypothesis: Text = Field("", max_length=10_000)
    owner: Text = Field("", max_length=200)
    journey: list[StepName] = Field(default_factory=list, max_length=50)
    variants: list[VariantIn] = Field(min_length=2, max_length=10)
    traffic: Probability = 1.0
    targeting: list[TargetingRule] = Field(default_factory=list, max_length=50)
    layer: Key | None = None
    overrides: dict[UnitId, Key] = Field(default_factory=dict, max_length=10_000)
    metrics: list[MetricIn] = Field(min_length=1, max_length=50)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    allocation: Allocation = Field(default_factory=FixedAllocation)
    iteration_of: Key | None = None
    learnings: Text = Field("", max_length=50_000)

    @model_validator(mode="after")
    def _bandits_default_to_fixed_horizon(self) -> ExperimentFields:
        # A bandit's report is period-weighted, not a sequential test: when the method is
        # not given, a bandit gets frequentist tests instead of the sequential default.
        if self.allocation.type == "bandit" and "method" not in self.analysis.model_fields_set:
            self.analysis.method = "frequentist"
        return self


class ExperimentPatch(Strict):
    """Any subset of the writable fields; the merged result is validated as a whole.

    Fields default to "not given" but refuse an explicit null, except ``layer``
    (null leaves the layer).
    """

    key: Key = None  # type: ignore[assignment]
    name: Text = Field(None, min_length=1, max_length=200)  # type: ignore[assignment]
    hypothesis: Text = Field(None, max_length=10_000)  # type: ignore[assignment]
    owner: Text = Field(None, max_length=200)  # type: ignore[assignment]
    journey: list[StepName] = Field(None, max_length=50)  # type: ignore[assignment]
    variants: list[VariantIn] = Field(None, min_length=2, max_length=10)  # type: ignore[assignment]
    traffic: Probability = None  # type: ignore[assignment]
    targeting: list[TargetingRule] = Field(None, max_length=50)  # type: ignore[assignment]
    layer: Key | None = None
    overrides: dict[UnitId, Key] = Field(None, max_length=10_000)  # type: ignore[assignment]
    metrics: list[MetricIn] = Field(None, min_length=1, max_length=50)  # type: ignore[assignment]
    analysis: AnalysisSettings = None  # type: ignore[assignment]
    allocation: Allocation = None  # type: ignore[assignment]
    learnings: Text = Field(None, max_length=50_000)  # type: ignore[assignment]


def experiment_problems(config: ExperimentFields) -> list[dict[str, str]]:
    """Cross-field rules of SPEC §3, each reported with its exact field path."""
    problems: list[dict[str, str]] = []

    def add(field: str, message: str) -> None:
        problems.append({"field": field, "message": message})

    for index, step in enumerate(config.journey):
        if step in config.journey[:index]:
            add(f"journey[{index}]", f"duplicate journey step {step!r}")
    variant_keys = [variant.key for variant in config.variants]
    for index, key in enumerate(variant_keys):
        if key in variant_keys[:index]:
            add(f"variants[{index}].key", f"duplicate variant key {key!r}")
    controls = sum(variant.is_control for variant in config.variants)
    if controls != 1:
        add("variants", f"exactly one variant must have is_control=true (found {controls})")
    total = sum(variant.weight for variant in config.variants)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        # Never normalised silently: 0.1/0.2 is a typo far more often than a 1:2 split.
        add("variants", f"variant weights must sum to 1 (got {total:.6g})")
    metric_keys = [metric.key for metric in config.metrics]
    for index, metric in enumerate(config.metrics):
        if metric.key in metric_keys[:index]:
            add(f"metrics[{index}].key", f"duplicate metric key {metric.key!r}")
        if metric.step is not None and metric.step not in config.journey:
            add(f"metrics[{index}].step", f"step {metric.step!r} is not a journey step")
        for name, message in quantile_problems(metric):
            add(f"metrics[{index}].{name}", message)
    primaries = sum(metric.role == "primary" for metric in config.metrics)
    if primaries != 1:
        add("metrics", f"exactly one metric must have role=primary (found {primaries})")
    for unit_id, variant_key in config.overrides.items():
        if variant_key not in variant_keys:
            add(f"overrides.{unit_id}", f"unknown variant {variant_key!r}")
    dimensions = config.analysis.dimensions
    for index, name in enumerate(dimensions):
        if name in dimensions[:index]:
            add(f"analysis.dimensions[{index}]", f"duplicate dimension {name!r}")
    if config.analysis.max_days < config.analysis.min_days:
        add("analysis.max_days", "must be at least analysis.min_days")
    if config.allocation.type == "bandit":
        for index, metric in enumerate(config.metrics):
            if metric.role == "primary" and metric.kind not in BANDIT_METRIC_KINDS:
                add(f"metrics[{index}].kind", "a bandit optimises a conversion, mean, count "
                    f"or friction primary metric, not {metric.kind}")
        if config.analysis.method == "sequential":
            add("analysis.method", "a bandit is analysed with period-weighted estimates: "
                "use frequentist or bayesian, not sequential")
    return problems


class DecisionOut(BaseModel):
    outcome: Literal["ship", "rollback", "keep_running", "no_difference"]
    winner: str | None = None
    reasons: list[str] = Field(default_factory=list)
    decided_at: datetime | None = None


class VariantOut(VariantIn):
    # Read back as stored: a weight saved before the 0..1 rule must not break reading it.
    weight: float


class MetricOut(MetricIn):
    pass


class ExperimentOut(BaseModel):
    key: str
    name: str
    hypothesis: str
    owner: str
    journey: list[str]
    variants: list[VariantOut]
    traffic: float
    targeting: list[TargetingRule]
    layer: str | None
    overrides: dict[str, str]
    metrics: list[MetricOut]
    analysis: AnalysisSettings
    allocation: Allocation
    iteration_of: str | None
    status: Status
    created_at: datetime
    started_at: datetime | None
    concluded_at: datetime | None
    decision: DecisionOut | None
    learnings: str
    version: int


class ExperimentList(BaseModel):
    items: list[ExperimentOut]
    next_cursor: str | None


class ListQuery(Strict):
    limit: int = Field(50, ge=1, le=500)
    cursor: Text | None = Field(None, max_length=200)


class ExperimentListQuery(ListQuery):
    status: Status | None = None


class ConcludeIn(Strict):
    outcome: Outcome
    winner: Key | None = None
    learnings: Text = Field("", max_length=50_000)
    acknowledge_risks: bool = False


class IterateIn(Strict):
    key: Key
    name: Text | None = Field(None, min_length=1, max_length=200)
    hypothesis: Text | None = Field(None, max_length=10_000)
    # The shipped winner's payload becomes the new control's (409 without a shipped winner).
    from_winner: bool = False


class AuditQuery(ListQuery):
    experiment: Key | None = None


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    experiment: str | None
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditList(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorEnvelope(BaseModel):
    """SPEC §2: every error response has this body."""

    error: ErrorInfo


