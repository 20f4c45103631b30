"""Segments (SPEC §11): per-level aggregates of one dimension → the report's ``segments`` entry.

:func:`segmented_aggregates` runs the report's aggregation ONCE (one column per dimension:
the level of the unit's exposure-time attribute snapshot), summed per day for the whole
report and per level for each dimension separately (never their cross product);
everything else here is arithmetic on those sums.

Per level: units, an SRM check, every metric's estimates and comparisons (no CUPED;
sequential p-values for sequential experiments, without the running minimum), friction
points, and one-level-against-the-rest heterogeneity tests. ``adjusted_p_value`` is BH over
levels × metrics × treatments of the dimension; heterogeneity p-values are Bonferroni-adjusted
over levels × metrics × treatments of all the report's dimensions. A level with fewer than
``MIN_UNITS_PER_ARM`` units in some arm keeps its estimates with null tests and a warning.
Segments never feed decisions.

Quantile metrics are not sums: :func:`with_level_quantiles` asks the database for their
order statistics per variant and merged level, one statement per dimension and metric;
they are compared within each level (same BH family), without a heterogeneity test.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import case, literal
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from experiments.models import Experiment, Metric
from experiments.schemas import AnalysisSettings
from experiments.services.pipeline import (
    ExperimentAggregates,
    JourneyCounts,
    MetricSpec,
    PipelineSources,
    QuantileSpec,
    aggregate_dimensions,
    attribute_level,
    quantile_stats,
    to_stats,
)
from experiments.services.quantiles import quantile_metric
from experiments.services.report import (
    ORDER_STATISTIC_KINDS,
    _analyze_metric,
    friction_matrix,
    friction_points,
    quantile_fields,
)
from experiments.services.results import comparison_to_dict
from stats import Comparison, StatsInputError, apply_correction, srm_test, summarize
from stats.heterogeneity import bonferroni, level_vs_rest
from stats.quantile import QuantileStats

OTHER, NULL = "__other__", "__null__"
MAX_LEVELS = 20  # levels with most units kept; the rest are merged into __other__
MIN_UNITS_PER_ARM = 100  # below this in some arm: estimates only
SLICE_WARNING = ("segments are for generating hypotheses, not for decisions: with many slices "
                 "some differ by chance; confirm a segment effect in its own experiment")
# SPEC §11 defines the level-against-the-rest test on differences of means: a quantile
# metric is compared within each level, never against the rest of the dimension.
QUANTILE_HETEROGENEITY_NOTE = ("{}: a quantile is not tested against the rest of the "
                               "dimension (the test compares differences of means)")
Sums = Mapping[str, float]


@dataclass(frozen=True)
class LevelAggregates:
    """What the database returns for one level of a dimension (all sums additive).

    ``metrics``: metric key → variant → the aggregation's sums (as ``to_stats`` reads them,
    without CUPED's pre-period sums). ``journey``: friction units per (variant, step, kind).
    ``quantiles``: metric key → variant → the order statistics of ``stats.quantile``; they do
    not add up, so ``__other__`` needs its own (the database groups by the merged level).
    """

    level: str
    units: Mapping[str, int]
    metrics: Mapping[str, Mapping[str, Sums]] = field(default_factory=dict)
    journey: JourneyCounts = field(default_factory=JourneyCounts)
    quantiles: Mapping[str, Mapping[str, QuantileStats]] = field(default_factory=dict)
    merged_levels: int = 0  # an ``__other__`` the database merged itself: how many it holds


def segmented_aggregates(connection: Session | Connection, experiment_id: int | None,
                         metrics: Sequence[MetricSpec], dimensions: Sequence[str], *,
                         sources: PipelineSources, hours: float, cuped: bool,
                         journey: Sequence[str] | None = None, rollup: bool = True,
                         ) -> tuple[ExperimentAggregates, dict[str, list[LevelAggregates]]]:
    """The whole report's aggregates and each dimension's levels, from ONE grouped round
    of queries over ``sources`` (Parcours's tables or a warehouse's: the exposures need an
    ``attributes`` column). The report's caps apply unchanged to every level; CUPED's
    pre-period sums are computed for the whole report only (segments never use them)."""
    labels = {f"segment_{index}": attribute_level(sources, name)
              for index, name in enumerate(dimensions)}
    whole, breakdowns = aggregate_dimensions(connection, experiment_id, metrics, hours=hours,
                                             cuped=cuped, journey=journey, rollup=rollup,
                                             sources=sources.grouped_by(**labels))
    return whole, {name: [_level(str(level), aggregates) for level, aggregates in levels.items()]
                   for name, levels in zip(dimensions, breakdowns, strict=True)}


def _level(name: str, aggregates: ExperimentAggregates) -> LevelAggregates:
    units = aggregates.units.totals()
    return LevelAggregates(
        name, {variant: int(sums.get("n", 0)) for variant, sums in units.items()},
        {key: {variant: dict(sums) for variant, sums in daily.totals().items()}
         for key, daily in aggregates.metrics.items()},
        aggregates.journey)


def kept_levels(units_by_level: Mapping[str, int], *, limit: int = MAX_LEVELS) -> list[str]:
    """The `limit` levels with most units (ties by name); ``__null__`` is always its own."""
    ranked = sorted((level for level in units_by_level if level not in (NULL, OTHER)),
                    key=lambda level: (-units_by_level[level], level))
    return ranked[:limit]


def _add(target: dict[str, float], sums: Sums) -> None:
    for name, value in sums.items():
        target[name] = target.get(name, 0.0) + float(value)


def _added(levels: Iterable[LevelAggregates], name: str) -> LevelAggregates:
    """Several levels as one (units, metric sums and friction counts added)."""
    units: dict[str, int] = defaultdict(int)
    metrics: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    journey = JourneyCounts()
    for level in levels:
        for variant, n in level.units.items():
            units[variant] += n
        for key, by_variant in level.metrics.items():
            for variant, sums in by_variant.items():
                _add(metrics[key][variant], sums)
        for step_cell, count in level.journey.reached.items():
            journey.reached[step_cell] = journey.reached.get(step_cell, 0) + count
        for friction_cell, count in level.journey.friction.items():
            journey.friction[friction_cell] = journey.friction.get(friction_cell, 0) + count
    return LevelAggregates(name, dict(units), {k: dict(v) for k, v in metrics.items()}, journey)


def merge_levels(levels: Sequence[LevelAggregates], *,
                 limit: int = MAX_LEVELS) -> tuple[list[LevelAggregates], int]:
    """Top `limit` levels, then ``__other__`` (the rest, added up), then ``__null__``.

    Returns the levels in report order and how many levels were merged into ``__other__``.
    Quantile order statistics cannot be added: a merged ``__other__`` has none unless the
    database already returned ``__other__`` as a level of its own.
    """
    by_name = {level.level: level for level in levels}
    kept = kept_levels({level.level: sum(level.units.values()) for level in levels},
                       limit=limit)
    merged = [level for level in levels if level.level not in (*kept, NULL, OTHER)]
    ordered = [by_name[name] for name in kept]
    rest = [*([by_name[OTHER]] if OTHER in by_name else []), *merged]
    if len(rest) == 1:
        ordered.append(replace(rest[0], level=OTHER))
    elif rest:
        ordered.append(_added(rest, OTHER))
    if NULL in by_name:
        ordered.append(by_name[NULL])
    return ordered, len(merged) + sum(level.merged_levels for level in rest)


def merged_level(level: Any, kept: Sequence[str]) -> Any:
    """A unit's level as the report shows it: a kept level or ``__null__`` as is, any other
    ``__other__`` (:func:`merge_levels`, in SQL)."""
    return case((level.in_([*kept, NULL]), level), else_=literal(OTHER))


def with_level_quantiles(connection: Session | Connection, sources: PipelineSources,
                         specs: Sequence[QuantileSpec],
                         breakdowns: Mapping[str, Sequence[LevelAggregates]], *,
                         journey: Sequence[str], hours: float,
                         alpha: float) -> dict[str, list[LevelAggregates]]:
    """Each dimension's levels merged as the report shows them (:func:`merge_levels`), each
    with its quantile metrics' order statistics per variant.

    Order statistics do not add up, so the database computes them per variant and MERGED
    level (``__other__`` is one partition, not a sum of its levels): one statement per
    dimension and metric (two for an event-level one), whatever the number of levels.
    """
    out = {}
    for dimension, levels in breakdowns.items():
        merged, count = merge_levels(levels)
        by_level: dict[str, dict[str, dict[str, QuantileStats]]] = {}
        if specs and merged:
            kept = [level.level for level in merged if level.level not in (OTHER, NULL)]
            grouped = sources.grouped_by(
                segment=merged_level(attribute_level(sources, dimension), kept))
            for spec in specs:
                for (variant, name), stats in quantile_stats(
                        connection, grouped, spec, journey=journey, hours=hours, alpha=alpha,
                        grouping=("segment",)).items():
                    by_level.setdefault(str(name), {}).setdefault(spec.key, {})[variant] = stats
        # An __other__ keeps its count: merge_levels of these levels gives them back as is.
        out[dimension] = [replace(level, quantiles=by_level.get(level.level, {}),
                                  merged_levels=count if level.level == OTHER else 0)
                          for level in merged]
    return out


def _untested(comparison: Comparison) -> Comparison:
    """The estimates only: a level too small for inference (SPEC §11)."""
    return replace(comparison, absolute_ci=None, relative_ci=None, p_value=None,
                   adjusted_p_value=None, chance_to_win=None, expected_loss=None,
                   significant=False, verdict="inconclusive", statistic=None)


def _metric_result(experiment: Experiment, metric: Metric, settings: AnalysisSettings,
                   level: LevelAggregates,
                   warnings: list[str]) -> tuple[list[dict[str, Any]], list[Comparison]]:
    """One metric's variant entries and raw comparisons within one level."""
    if metric.kind in ORDER_STATISTIC_KINDS:
        return quantile_metric(experiment, metric, settings, level.quantiles.get(metric.key, {}),
                               warnings)
    return _analyze_metric(experiment, metric, settings, level.metrics.get(metric.key, {}), {},
                           warnings)


def _effect(kind: str, control: Sums, treatment: Sums) -> tuple[float, float] | None:
    """Absolute effect and the variance of its difference of means (unpooled), if defined."""
    try:
        arms = [summarize(to_stats(kind, sums)[0]) for sums in (control, treatment)]
    except StatsInputError:
        return None
    c, t = arms
    if c.mean is None or t.mean is None or c.se2 is None or t.se2 is None:
        return None
    return t.mean - c.mean, c.se2 + t.se2


def _heterogeneity(experiment: Experiment, levels: Sequence[LevelAggregates],
                   tested: Sequence[bool]) -> list[list[dict[str, Any]]]:
    """Per level: each metric × treatment effect against the rest of the dimension's units."""
    control = next(v.key for v in experiment.variants if v.is_control)
    treatments = [v.key for v in experiment.variants if not v.is_control]
    additive = [m for m in experiment.metrics if m.kind not in ORDER_STATISTIC_KINDS]
    out: list[list[dict[str, Any]]] = []
    for level, testable in zip(levels, tested, strict=True):
        # Added, not subtracted from a total: exact sums, and at most 22 levels.
        rest = _added((other for other in levels if other is not level), "rest").metrics
        entries = []
        for metric in additive:
            own, others = level.metrics.get(metric.key, {}), rest.get(metric.key, {})
            for variant in treatments:
                mine = _effect(metric.kind, own.get(control, {}), own.get(variant, {}))
                theirs = _effect(metric.kind, others.get(control, {}), others.get(variant, {}))
                test = None
                if testable and mine is not None and theirs is not None:
                    test = level_vs_rest(effect=mine[0], variance=mine[1], rest_effect=theirs[0],
                                         rest_variance=theirs[1])
                entries.append({"metric": metric.key, "variant": variant,
                                "effect": None if mine is None else mine[0],
                                "rest_effect": None if theirs is None else theirs[0],
                                "p_value": None if test is None else test.p_value,
                                "adjusted_p_value": None, "detected": False})
        out.append(entries)
    return out


def _dimension_entry(experiment: Experiment, settings: AnalysisSettings, dimension: str,
                     levels: Sequence[LevelAggregates]) -> dict[str, Any]:
    """One dimension's entry, heterogeneity p-values not yet adjusted (see segments_section)."""
    plain = settings.model_copy(update={"cuped": False})  # no CUPED in segments (SPEC §11)
    ordered, merged = merge_levels(levels)
    keys = [v.key for v in experiment.variants]
    weights = [v.weight for v in experiment.variants]
    entries: list[dict[str, Any]] = []
    family: list[tuple[int, int, Comparison]] = []  # (level, metric) positions, for BH
    tested: list[bool] = []
    for position, level in enumerate(ordered):
        units = {key: int(level.units.get(key, 0)) for key in keys}
        testable = min(units.values()) >= MIN_UNITS_PER_ARM
        tested.append(testable)
        warnings: list[str] = []
        if not testable:
            warnings.append(f"fewer than {MIN_UNITS_PER_ARM} units in some variant: "
                            f"estimates only, no tests")
        srm = srm_test(list(units.values()), weights)
        metrics = []
        for index, metric in enumerate(experiment.metrics):
            variants, comparisons = _metric_result(experiment, metric, plain, level, warnings)
            for comparison in comparisons:
                family.append((position, index,
                               comparison if testable else _untested(comparison)))
            metrics.append({"key": metric.key, "kind": metric.kind, "role": metric.role,
                            "direction": metric.direction, "variants": variants,
                            "comparisons": [], **quantile_fields(metric)})
        matrix = friction_matrix(experiment, plain, units, level.journey) if testable else []
        entries.append({"level": level.level, "units": units,
                        "srm": {"p_value": srm.p_value, "detected": srm.detected},
                        "metrics": metrics, "friction_points": friction_points(matrix),
                        "warnings": list(dict.fromkeys(warnings))})
    corrected = apply_correction([c for _, _, c in family], "bh")
    for (position, index, _), comparison in zip(family, corrected, strict=True):
        entries[position]["metrics"][index]["comparisons"].append(comparison_to_dict(comparison))
    heterogeneity = _heterogeneity(experiment, ordered, tested)
    for entry, per_level in zip(entries, heterogeneity, strict=True):
        entry["heterogeneity"] = per_level
    # Said once for the dimension: no level of it has a level-against-the-rest test.
    untested = [QUANTILE_HETEROGENEITY_NOTE.format(metric.key) for metric in experiment.metrics
                if metric.kind in ORDER_STATISTIC_KINDS]
    return {"dimension": dimension, "levels": entries, "merged_levels": merged,
            "warnings": [SLICE_WARNING, *untested]}


def segments_section(experiment: Experiment, settings: AnalysisSettings,
                     breakdowns: Mapping[str, Sequence[LevelAggregates]]) -> list[dict[str, Any]]:
    """The report's ``segments``: one entry per dimension, in the order given.

    Heterogeneity is Bonferroni-adjusted over every level × metric × treatment of the
    report's dimensions together, so that "any heterogeneity flagged" in an A/A report stays
    within alpha however many dimensions are broken down (per dimension, 3 dimensions of 10
    levels would flag about 12 % of A/A reports).
    """
    entries = [_dimension_entry(experiment, settings, dimension, levels)
               for dimension, levels in breakdowns.items()]
    tests = [test for entry in entries for level in entry["levels"]
             for test in level["heterogeneity"]]
    adjusted, detected = bonferroni([test["p_value"] for test in tests], alpha=settings.alpha)
    for test, p, flag in zip(tests, adjusted, detected, strict=True):
        test["adjusted_p_value"], test["detected"] = p, flag
    return entries
