"""Quantile metrics (SPEC §11): order statistics → ``stats.quantile`` → report JSON.

The report pipeline hands over, per variant, a ``QuantileStats`` built from the few order
statistics the database returns (ranks from ``stats.quantile.needed_ranks``); the
calculator sorts the raw values it was sent (at most 100,000 per variant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.errors import ValidationFailed
from experiments.models import Experiment, Metric
from experiments.schemas import AnalysisSettings
from experiments.services.results import calculation_to_dict
from stats import Comparison, StatsInputError
from stats.quantile import (
    QuantileStats,
    QuantileVariantInput,
    analyze_quantiles,
    stats_from_sorted,
)


def calculate_quantiles(variants: Sequence[Mapping[str, Any]], *, quantile: float | None,
                        method: str, alpha: float, correction: str, direction: str = "increase",
                        mde: float | None = None,
                        weights: Sequence[float] | None = None) -> dict[str, Any]:
    """The calculator's quantile comparison from raw values (unit level); 422 names the field."""
    if quantile is None:
        raise ValidationFailed.field("quantile", "is required for kind quantile (0.01 to 0.99)")
    inputs = []
    for index, data in enumerate(variants):
        if data.get("values") is None:
            raise ValidationFailed.field(f"variants[{index}].values",
                                         "is required for kind quantile")
        values = np.sort(np.asarray(data["values"], dtype=float))
        inputs.append(QuantileVariantInput(
            str(data["key"]), bool(data.get("is_control", False)),
            stats_from_sorted(values, quantile=quantile, alpha=alpha)))
    try:
        result = analyze_quantiles(inputs, quantile=quantile, method=method,  # type: ignore[arg-type]
                                   alpha=alpha, correction=correction,  # type: ignore[arg-type]
                                   direction=direction, mde=mde,  # type: ignore[arg-type]
                                   weights=weights)
    except StatsInputError as error:
        raise ValidationFailed.field(error.field, error.message) from None
    return calculation_to_dict(result)


def quantile_metric_result(variants: Sequence[tuple[str, bool, QuantileStats]], *,
                           quantile: float, method: str, alpha: float, direction: str,
                           mde: float | None, nonnegative: bool
                           ) -> tuple[list[dict[str, Any]], list[Any], list[str]]:
    """One quantile metric's variant entries, raw comparisons and warnings (never raises).

    Comparisons are uncorrected: the caller corrects them within their family.
    ``nonnegative``: the values are never negative (time on a step).
    """
    try:
        result = analyze_quantiles(
            [QuantileVariantInput(key, is_control, stats) for key, is_control, stats in variants],
            quantile=quantile, method=method, alpha=alpha, correction="none",  # type: ignore[arg-type]
            direction=direction, mde=mde, nonnegative=nonnegative)  # type: ignore[arg-type]
    except StatsInputError as error:
        return ([{"variant": key, "units": stats.n, "estimate": None, "ci": None}
                 for key, _, stats in variants], [], [str(error)])
    # A note the whole metric already carries (the fixed-horizon test) is said once.
    notes = [*result.warnings, *(f"{c.variant}: {note}" for c in result.comparisons
                                 for note in c.warnings if note not in result.warnings)]
    entries = [{"variant": v.variant, "units": v.units, "estimate": v.estimate,
                "ci": None if v.ci is None else list(v.ci)} for v in result.variants]
    return entries, list(result.comparisons), notes


def quantile_metric(experiment: Experiment, metric: Metric, settings: AnalysisSettings,
                    order_statistics: Mapping[str, QuantileStats],
                    warnings: list[str]) -> tuple[list[dict[str, Any]], list[Comparison]]:
    """A quantile metric's variant entries and raw comparisons in a report (or a segment
    level) from each variant's order statistics (a variant without values has none)."""
    variants = [(v.key, v.is_control, order_statistics.get(v.key, QuantileStats(0, None, None,
                                                                                None)))
                for v in experiment.variants]
    entries, comparisons, notes = quantile_metric_result(
        variants, quantile=float(metric.quantile),  # type: ignore[arg-type]
        method=settings.method, alpha=settings.alpha, direction=metric.direction,
        mde=settings.mde, nonnegative=metric.source == "step_duration")
    warnings.extend(f"{metric.key}: {note}" for note in notes)
    return entries, comparisons
