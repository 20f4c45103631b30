"""Pure statistics engine: sufficient statistics in, frozen JSON-safe results out."""

from stats.analyze import (
    AnalysisResult,
    VariantResult,
    analyze_variants,
    summarize_variants,
    variant_from_dict,
)
from stats.compare import Comparison, apply_correction, compare, decide_verdict
from stats.correction import adjust_p_values
from stats.power import PowerResult, sample_size
from stats.records import (
    CupedStats,
    MeanStats,
    NpsStats,
    ProportionStats,
    RatioStats,
    StatsInputError,
    VariantInput,
)
from stats.srm import SrmResult, srm_test
from stats.summary import ArmSummary, per_unit_sd, summarize

__all__ = [
    "AnalysisResult",
    "ArmSummary",
    "Comparison",
    "CupedStats",
    "MeanStats",
    "NpsStats",
    "PowerResult",
    "ProportionStats",
    "RatioStats",
    "SrmResult",
    "StatsInputError",
    "VariantInput",
    "VariantResult",
    "adjust_p_values",
    "analyze_variants",
    "apply_correction",
    "compare",
    "decide_verdict",
    "per_unit_sd",
    "sample_size",
    "srm_test",
    "summarize",
    "summarize_variants",
    "variant_from_dict",
]
