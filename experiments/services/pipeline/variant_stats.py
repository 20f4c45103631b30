"""Stage 3: per-variant, per-UTC-exposure-day sufficient statistics.

Two queries: :func:`units_query` counts the first exposures per variant and day (every
unit, with or without events), :func:`variant_day_query` sums the per-unit values of
stage 2 — n-independent sums, sums of squares and cross products, capped where the metric
says so (caps: :mod:`experiments.services.capping`, one pooled threshold for every arm) —
plus the funnel/friction counts (:mod:`.journey`) and the event timing. Units absent from
stage 2 add zero to every sum, so nothing here needs an outer join. The rows are additive
over days: the report's totals and its cumulative timeline come from the same rows.
:func:`to_stats` turns one variant's sums into the ``stats`` records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, true

from experiments.services.capping import CapKey, cap_label, cap_thresholds, capped
from experiments.services.pipeline.dialects import (
    answer_class,
    count_if,
    grouping_sets_select,
    hours_between,
    utc_day,
)
from experiments.services.pipeline.exposures import first_exposures
from experiments.services.pipeline.journey import journey_columns
from experiments.services.pipeline.sources import PipelineSources
from experiments.services.pipeline.unit_values import (
    CUPED_KINDS,
    PROPORTION_KINDS,
    MetricSpec,
    Plan,
    count_flag,
)
from stats import CupedStats, MeanStats, NpsStats, ProportionStats, RatioStats
from stats.records import Stats

Sums = dict[str, float]


GroupingSet = tuple[tuple[str, ...], bool]  # grouping columns, and whether also per UTC day


def grouped_rows(relation: Any, sets: Sequence[GroupingSet], aggregates: Sequence[Any], *,
                 merges: Mapping[str, Any] | None = None, constants: Sequence[Any] = ()) -> Any:
    """``aggregates`` (labelled) over ``relation`` per variant and each grouping set, and
    ``constants`` (labelled, the same on every row). One set: a plain grouped SELECT.

    Several: one statement (:class:`grouping_sets_select`: ``GROUP BY GROUPING SETS`` where
    the engine has it) whose rows name their set (``grouping_set``, the position in
    ``sets``) and carry ``day`` and every set's columns, read only where their set groups by
    them. The aggregates are first computed per crossed group (variant × day × every set's
    columns: one pass over the relation's rows), then those few rows are combined per set
    by ``merges`` (label → aggregate function; default ``sum``: counts and sums add up).

    PostgreSQL cannot estimate the crossed groups (JSON levels, days of exposure times): it
    assumes one per row and would sort every row to feed the sets. So the crossed rows are
    their own step (``MATERIALIZED``), hashed under :func:`~.dialects.hashed_grouping`."""
    day = utc_day(relation.c.exposed_at).label("day")
    if len(sets) == 1:
        ((columns, daily),) = sets
        grouped = [relation.c[name] for name in columns]
        # Grouped by the labelled day: BigQuery's dialect groups by the label's name.
        return (select(relation.c.variant_key,
                       day if daily else func.min(day.element).label("day"), *grouped,
                       *aggregates, *constants)
                .group_by(relation.c.variant_key, *([day] if daily else []), *grouped))
    names = list(dict.fromkeys(name for columns, _ in sets for name in columns))
    keys = [relation.c.variant_key.label("variant_key"), day,
            *(relation.c[name].label(name) for name in names)]
    crossed = (select(*keys, *aggregates).group_by(*(key.element for key in keys))
               .cte("crossed").prefix_with("MATERIALIZED", dialect="postgresql"))
    merge = merges or {}
    return grouping_sets_select(
        [crossed.c[key.name].label(key.name) for key in keys],
        [("variant_key", *(("day",) if daily else ()), *columns) for columns, daily in sets],
        [*(merge.get(a.name, func.sum)(crossed.c[a.name]).label(a.name) for a in aggregates),
         *constants])


def units_query(sources: PipelineSources, sets: Sequence[GroupingSet] | None = None) -> Any:
    """Exposed units per variant and grouping set (default: per day and every grouping
    column), with the first and last exposure times."""
    x = first_exposures(sources)
    return grouped_rows(x, sets or [(sources.grouping, True)],
                        [func.count().label("n"), func.min(x.c.exposed_at).label("first"),
                         func.max(x.c.exposed_at).label("last")],
                        merges={"first": func.min, "last": func.max})


def _moment_columns(plan: Plan, metric: MetricSpec, index: int, unit: Any,
                    caps: Mapping[CapKey, Any]) -> list[Any]:
    """Per-variant sums of the per-unit values (capped where the metric says so):
    n-independent sufficient statistics."""
    def col(name: str) -> Any:
        threshold = caps.get((index, "y" if name == "pre" else name))
        return capped(unit.c[f"m{index}_{name}"], threshold)

    def moments(prefix: str, value: Any) -> list[Any]:
        return [func.sum(value).label(f"{prefix}_sum"),
                func.sum(value * value).label(f"{prefix}_sum_squares")]

    if metric.kind in PROPORTION_KINDS:  # 0/1 values: sum of squares = sum (added later)
        columns = [count_flag(unit, plan, f"m{index}_y").label(f"m{index}_sum")]
        if plan.cuped:
            columns += [count_flag(unit, plan, f"m{index}_pre").label(f"m{index}_pre_sum"),
                        count_flag(unit, plan, f"m{index}_y", f"m{index}_pre")
                        .label(f"m{index}_cross_sum")]
        return columns
    if metric.kind == "nps":
        klass = answer_class(col("answer"))
        return [func.count(col("answer")).label(f"m{index}_n"),
                count_if(klass == 2).label(f"m{index}_promoters"),
                count_if(klass == 1).label(f"m{index}_detractors")]
    if metric.kind == "ratio":
        return [*moments(f"m{index}_num", col("num")), *moments(f"m{index}_den", col("den")),
                func.sum(col("num") * col("den")).label(f"m{index}_num_den_sum")]
    if metric.kind == "time_to_convert":
        hours = hours_between(unit.c.exposed_at, col("y"))
        return [func.count(col("y")).label(f"m{index}_n"), *moments(f"m{index}", hours)]
    columns = moments(f"m{index}", col("y"))
    if f"m{index}_pre" in unit.c:
        columns += [*moments(f"m{index}_pre", col("pre")),
                    func.sum(col("pre") * col("y")).label(f"m{index}_cross_sum")]
    return columns


def variant_day_query(plan: Plan, unit: Any, *, units: int = 0,
                      sets: Sequence[GroupingSet] = (((), True),)) -> Any:
    """Per variant and grouping set (see :func:`grouped_rows`), the sums of the per-unit
    values of ``unit`` (capped among ``units`` exposed units), and each cap's threshold."""
    unit, caps, ranked = _with_ranked_thresholds(plan, unit,
                                                 cap_thresholds(plan.metrics, unit, units))
    sums = [c for i, m in enumerate(plan.metrics)
            for c in _moment_columns(plan, m, i, unit, caps)]
    timing = [func.sum(unit.c[label]).label(label) for label in ("events_post", "events_pre")]
    return grouped_rows(unit, sets, [*sums, *journey_columns(plan, unit), *timing,
                                     *(func.min(caps[key]).label(cap_label(*key))
                                       for key in ranked)],
                        merges=dict.fromkeys((cap_label(*key) for key in ranked), func.min),
                        constants=[caps[key].label(cap_label(*key)) for key in caps
                                   if key not in ranked])


def _with_ranked_thresholds(plan: Plan, unit: Any, caps: Mapping[CapKey, Any]
                            ) -> tuple[Any, dict[CapKey, Any], list[CapKey]]:
    """``unit`` joined to ONE row of the percentile thresholds, and every threshold as a
    column of it (absolute ones stay literals).

    A percentile threshold is a scalar subquery that ranks every unit's value. Written
    where it is used, it would be repeated in each capped sum, sum of squares and cross
    product (17 times for a CUPED mean), and no engine here folds identical subqueries:
    each copy would rank every unit again. Computed once in a one-row table joined to every
    unit, it is ranked once."""
    ranked = [key for key in caps if plan.metrics[key[0]].cap_type == "percentile"]
    if not ranked:
        return unit, dict(caps), []
    row = select(*(caps[key].label(cap_label(*key)) for key in ranked)).subquery("cap_thresholds")
    joined = select(*unit.c, *row.c).select_from(unit.join(row, true())).subquery("capped_units")
    return joined, {key: joined.c[cap_label(*key)] if key in ranked else threshold
                    for key, threshold in caps.items()}, ranked


def sum_names(metric: MetricSpec, cuped: bool) -> list[str]:
    """The names of a (non-NPS) metric's sums, as the analysis rows carry them."""
    if metric.kind == "ratio":
        return ["num_sum", "num_sum_squares", "den_sum", "den_sum_squares", "num_den_sum"]
    if metric.kind == "time_to_convert":
        return ["n", "sum", "sum_squares"]
    names = ["sum", "sum_squares"]
    if cuped and metric.kind in CUPED_KINDS:
        names += ["pre_sum", "pre_sum_squares", "cross_sum"]
    return names


def to_stats(kind: str, sums: Mapping[str, float]) -> tuple[Stats, CupedStats | None]:
    """Turn one variant's sums into the ``stats`` records (and CUPED covariates, if any)."""
    n = int(sums.get("n", 0))
    get = lambda name: float(sums.get(name, 0.0))  # noqa: E731 - tiny local accessor
    cuped = None
    if "pre_sum" in sums:
        cuped = CupedStats(get("pre_sum"), get("pre_sum_squares"), get("cross_sum"))
    if kind in PROPORTION_KINDS:
        return ProportionStats(n, int(get("sum"))), cuped
    if kind == "ratio":
        return RatioStats(n, get("num_sum"), get("num_sum_squares"), get("den_sum"),
                          get("den_sum_squares"), get("num_den_sum")), None
    if kind == "nps":
        return NpsStats(n, int(get("promoters")), int(get("detractors"))), None
    return MeanStats(n, get("sum"), get("sum_squares")), cuped


__all__ = ["GroupingSet", "Sums", "grouped_rows", "sum_names", "to_stats", "units_query",
           "variant_day_query"]
