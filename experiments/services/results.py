"""Statistics results as the report's JSON (SPEC §6 field names): shared by the report's
sections, the segments, the quantile metrics and the calculators, so every place that shows
a comparison shows it the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stats import AnalysisResult, Comparison


def pair(value: Sequence[float] | None) -> list[float] | None:
    """An interval as a JSON pair of floats (None stays None)."""
    return None if value is None else [float(value[0]), float(value[1])]


def comparison_to_dict(comparison: Comparison) -> dict[str, Any]:
    """The report's JSON of one comparison (SPEC §6 field names)."""
    return {"variant": comparison.variant, "absolute_effect": comparison.absolute_effect,
            "absolute_ci": pair(comparison.absolute_ci),
            "relative_effect": comparison.relative_effect,
            "relative_ci": pair(comparison.relative_ci), "p_value": comparison.p_value,
            "adjusted_p_value": comparison.adjusted_p_value,
            "chance_to_win": comparison.chance_to_win,
            "expected_loss": comparison.expected_loss,
            "significant": comparison.significant, "verdict": comparison.verdict}


def calculation_to_dict(result: AnalysisResult) -> dict[str, Any]:
    """A calculator's answer: the report's variant and comparison shapes, SRM, warnings."""
    notes = [*result.warnings, *(f"{c.variant}: {note}" for c in result.comparisons
                                 for note in c.warnings)]
    return {
        "variants": [{"variant": v.variant, "units": v.units, "estimate": v.estimate,
                      "ci": pair(v.ci)} for v in result.variants],
        "comparisons": [comparison_to_dict(c) for c in result.comparisons],
        "srm": None if result.srm is None else {"p_value": result.srm.p_value,
                                                "detected": result.srm.detected},
        "warnings": notes,
    }
