"""Entry point shared by the calculator endpoint and the report pipeline."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stats import frequentist
from stats._numeric import finite, finite_pair
from stats.compare import Comparison, apply_correction, check_options, compare
from stats.records import (
    STATS_FOR_KIND,
    Correction,
    CupedStats,
    Direction,
    Kind,
    Method,
    StatsInputError,
    VariantInput,
)
from stats.srm import SrmResult, srm_test
from stats.summary import ArmSummary, cuped_adjust, cuped_fit, summarize


@dataclass(frozen=True)
class VariantResult:
    """One variant's units, estimate and (normal) confidence interval."""

    variant: str
    units: int
    estimate: float | None
    ci: tuple[float, float] | None


@dataclass(frozen=True)
class AnalysisResult:
    """A metric's per-variant estimates, comparisons with the control and SRM check."""

    kind: Kind
    method: Method
    variants: tuple[VariantResult, ...]
    comparisons: tuple[Comparison, ...]
    srm: SrmResult | None
    warnings: tuple[str, ...]


def _check_variants(kind: Kind, variants: Sequence[VariantInput]) -> int:
    """Validate the variant list and return the control's index."""
    if isinstance(variants, (str, bytes)) or not isinstance(variants, Sequence) or not variants:
        raise StatsInputError("variants", "must be a non-empty list")
    seen: set[str] = set()
    for i, variant in enumerate(variants):
        if not isinstance(variant, VariantInput):
            raise StatsInputError(f"variants[{i}]", "must be a VariantInput")
        if not isinstance(variant.stats, STATS_FOR_KIND[kind]):
            raise StatsInputError(
                f"variants[{i}]",
                f"needs {STATS_FOR_KIND[kind].__name__} for kind {kind}",
            )
        if variant.key in seen:
            raise StatsInputError(f"variants[{i}].key", "duplicate variant key")
        seen.add(variant.key)
    controls = [i for i, v in enumerate(variants) if v.is_control]
    if len(controls) != 1:
        raise StatsInputError("variants", "exactly one variant must have is_control true")
    return controls[0]


def summarize_variants(
    variants: Sequence[VariantInput],
) -> tuple[tuple[ArmSummary, ...], tuple[str, ...]]:
    """Per-variant summaries, CUPED-adjusted when every variant carries covariates."""
    with_cuped = [v.cuped is not None for v in variants]
    if not any(with_cuped):
        return tuple(summarize(v.stats) for v in variants), ()
    if not all(with_cuped):
        missing = with_cuped.index(False)
        raise StatsInputError(
            f"variants[{missing}].cuped", "CUPED needs covariates for every variant"
        )
    pairs = [(v.stats, v.cuped) for v in variants]
    fit = cuped_fit(pairs)  # type: ignore[arg-type]
    if fit is None:
        warning = "cuped: covariate has no variance, results are unadjusted"
        return tuple(summarize(v.stats) for v in variants), (warning,)
    return tuple(cuped_adjust(post, pre, fit) for post, pre in pairs), ()  # type: ignore[arg-type]


def _variant_result(key: str, summary: ArmSummary, alpha: float) -> VariantResult:
    """Estimate with a normal-approximation interval."""
    ci = None
    if summary.mean is not None and summary.se2 is not None:
        half = frequentist.critical_value(alpha) * math.sqrt(summary.se2)
        ci = finite_pair(summary.mean - half, summary.mean + half)
    return VariantResult(key, summary.n, finite(summary.mean), ci)


def analyze_variants(
    kind: Kind,
    variants: Sequence[VariantInput],
    *,
    method: Method = "frequentist",
    alpha: float = 0.05,
    correction: Correction = "holm",
    direction: Direction = "increase",
    mde: float | None = None,
    weights: Sequence[float] | None = None,
    previous_p_values: Mapping[str, float | None] | None = None,
) -> AnalysisResult:
    """Compare every treatment with the control for one metric, corrected across treatments."""
    check_options(
        kind=kind, method=method, alpha=alpha, direction=direction, mde=mde, correction=correction
    )
    control_index = _check_variants(kind, variants)
    summaries, warnings = summarize_variants(variants)
    previous = previous_p_values or {}
    control = summaries[control_index]
    comparisons = [
        compare(
            kind,
            control,
            summary,
            variant=variant.key,
            method=method,
            alpha=alpha,
            direction=direction,
            mde=mde,
            previous_p_value=previous.get(variant.key),
        )
        for variant, summary in zip(variants, summaries, strict=True)
        if not variant.is_control
    ]
    notes = list(warnings)
    if not comparisons:
        notes.append("only one variant: no comparisons")
    srm = None
    if weights is not None:
        srm = srm_test([v.stats.n for v in variants], weights)
        if srm.detected:
            notes.append(f"srm: sample ratio mismatch detected (p = {srm.p_value:.2g})")
    return AnalysisResult(
        kind=kind,
        method=method,
        variants=tuple(
            _variant_result(v.key, s, alpha) for v, s in zip(variants, summaries, strict=True)
        ),
        comparisons=apply_correction(comparisons, correction),
        srm=srm,
        warnings=tuple(notes),
    )


_FIELDS_FOR_KIND: dict[str, tuple[str, ...]] = {
    "conversion": ("n", "conversions"),
    "friction": ("n", "conversions"),
    "mean": ("n", "sum", "sum_squares"),
    "count": ("n", "sum", "sum_squares"),
    "time_to_convert": ("n", "sum", "sum_squares"),
    "ratio": (
        "n",
        "num_sum",
        "num_sum_squares",
        "den_sum",
        "den_sum_squares",
        "num_den_sum",
    ),
    "nps": ("n", "promoters", "detractors"),
}
_CUPED_FIELDS = ("pre_sum", "pre_sum_squares", "cross_sum")


def variant_from_dict(kind: Kind, data: Mapping[str, object], *, index: int) -> VariantInput:
    """Build a VariantInput from the calculator's flat JSON; errors name `variants[i].field`."""
    prefix = f"variants[{index}]"
    if kind not in _FIELDS_FOR_KIND:
        raise StatsInputError("kind", f"must be one of {', '.join(_FIELDS_FOR_KIND)}")
    if not isinstance(data, Mapping):
        raise StatsInputError(prefix, "must be an object")
    fields = _FIELDS_FOR_KIND[kind]
    for name in (*fields, "key"):
        if name not in data:
            raise StatsInputError(f"{prefix}.{name}", "is required")
    values = [data[name] for name in fields]
    try:
        record = STATS_FOR_KIND[kind](*values)
        cuped = None
        if any(name in data for name in _CUPED_FIELDS):
            cuped = CupedStats(*(data.get(name) for name in _CUPED_FIELDS))  # type: ignore[arg-type]
        return VariantInput(str(data["key"]), bool(data.get("is_control", False)), record, cuped)
    except StatsInputError as error:
        located = error.within(prefix)
        if located.field == f"{prefix}.successes":
            located = StatsInputError(f"{prefix}.conversions", error.message)
        raise located from None
