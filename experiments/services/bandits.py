"""Bandit allocation (SPEC §13): weight periods, reallocation and the bandit report section.

A bandit experiment keeps versioned weight periods (:class:`AllocationPeriod`): period 0
holds the configured weights from the start; each reallocation opens the next one. New
units are split by the current period's weights (read from the in-memory configuration
cache, like every other assignment input); stored exposures keep their variant. The
statistics are in :mod:`stats.bandit`; this module reads the per-period per-arm sums from
the analysis pipeline grouped by weight period (:func:`period_aggregates`: the same SQL,
caps, windows and value bounds as every report, on any source) and period-weights a
bandit's report (:func:`weigh_metric`, :func:`apply_to_report`). Opening a new period
(burn-in, cadence, ``min_units_per_arm``, audit, webhook) is
:mod:`experiments.services.reallocation`'s, above the warehouses' routing that reads the
sums where the data lives: the imports point one way (reallocation → routing → bandits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from experiments.errors import Conflict, ValidationFailed
from experiments.models import AllocationPeriod, Experiment, Metric
from experiments.schemas import (
    BANDIT_METRIC_KINDS,
    AnalysisSettings,
    BanditAllocation,
    ExperimentFields,
)
from experiments.services import alerts, lifecycle
from experiments.services.pipeline import (
    Daily,
    ExperimentAggregates,
    MetricSpec,
    PipelineSources,
    aggregate_grouped,
    combine,
    marginal,
    own_sources,
    period_of,
)
from stats import ArmSummary, Comparison, MeanStats, StatsInputError, compare
from stats.bandit import ArmEstimate, BanditResult, Period, analyze_bandit, period_weighted
from stats.frequentist import critical_value

PeriodSums = dict[int, dict[str, MeanStats]]
EMPTY = MeanStats(0, 0.0, 0.0)
DaySpan = tuple[str, str | None]
"""Units exposed on these UTC days, first and last included ("" and None: unbounded)."""
EVERY_DAY: DaySpan = ("", None)


# --- configuration -----------------------------------------------------------------------------

def bandit_settings(experiment: Experiment) -> BanditAllocation | None:
    """The experiment's bandit settings, None for a fixed allocation."""
    allocation = experiment.allocation or {}
    if allocation.get("type") != "bandit":
        return None
    return BanditAllocation.model_validate(allocation)


def check_allocation_kept(experiment: Experiment, fields: ExperimentFields) -> None:
    """Once started, the allocation stays as it is, and a running bandit sets its own weights."""
    if experiment.status == "draft":
        return
    if fields.allocation.model_dump(mode="json") != (experiment.allocation or {"type": "fixed"}):
        raise Conflict(f"the allocation cannot change while {experiment.status}")
    if fields.allocation.type == "bandit":
        stored = {v.key: v.weight for v in experiment.variants}
        if any(abs(stored.get(v.key, -1.0) - v.weight) > 1e-9 for v in fields.variants):
            raise Conflict("a bandit moves its own weights: they cannot be edited once started")


def open_first_period(session: Session, experiment: Experiment, now: datetime) -> None:
    """Period 0 of a bandit being started: the configured weights, no p_best, no draws."""
    if bandit_settings(experiment) is None:
        return
    session.add(AllocationPeriod(experiment_id=experiment.id, period=0, started_at=now,
                                 weights={v.key: v.weight for v in experiment.variants},
                                 p_best=None, seed=0))


def periods_of(session: Session, experiment_id: int) -> list[AllocationPeriod]:
    """The experiment's weight periods, oldest first."""
    return list(session.scalars(select(AllocationPeriod)
                                .where(AllocationPeriod.experiment_id == experiment_id)
                                .order_by(AllocationPeriod.period)))


def period_to_dict(period: AllocationPeriod) -> dict[str, Any]:
    """The SPEC §13 JSON of one period."""
    return {"period": period.period, "started_at": period.started_at,
            "weights": dict(period.weights), "p_best": period.p_best, "seed": period.seed}


def list_allocations(session: Session, key: str) -> list[dict[str, Any]]:
    """``GET …/allocations``: every period of the experiment (empty for a fixed one)."""
    experiment = lifecycle.get_experiment(session, key)
    return [period_to_dict(p) for p in periods_of(session, experiment.id)]


# --- per-period aggregates ----------------------------------------------------------------------

@dataclass(frozen=True)
class BanditPeriods:
    """A bandit's weight periods and the pipeline's aggregates per period (the units first
    exposed in it), from one grouped pass: the report's SQL, caps, windows and value bounds."""

    experiment: Experiment
    periods: list[AllocationPeriod]
    by_period: dict[int, ExperimentAggregates]

    def pooled(self) -> ExperimentAggregates:
        """Every period together: the aggregates an ungrouped report pass would give."""
        total = combine(self.by_period.values())
        for metric in self.experiment.metrics:
            total.metrics.setdefault(metric.key, Daily())  # no exposure yet: empty sums
        return total

    def sums(self, metric_key: str, *, days: DaySpan = EVERY_DAY) -> PeriodSums:
        """Per period and arm, the metric's (n, sum, sum of squares) per unit, over the
        units exposed on ``days`` (default: all)."""
        out: PeriodSums = {}
        first, last = days
        for number, aggregates in self.by_period.items():
            for arm, totals in aggregates.metrics[metric_key].totals(
                    until=last, since=first).items():
                out.setdefault(number, {})[arm] = MeanStats(
                    int(totals.get("n", 0)), float(totals.get("sum", 0.0)),
                    float(totals.get("sum_squares", 0.0)))
        return out

    def inputs(self, metric_key: str, *, days: DaySpan = EVERY_DAY) -> list[Period]:
        """The metric's :class:`stats.bandit.Period` list (arms without units: zero sums)."""
        sums = self.sums(metric_key, days=days)
        arms = [v.key for v in self.experiment.variants]
        return [Period({k: float(p.weights.get(k, 0.0)) for k in arms},
                       {k: sums.get(p.period, {}).get(k, EMPTY) for k in arms})
                for p in self.periods]

    def result(self, *, seed: int, settings: BanditAllocation) -> BanditResult:
        """The primary metric's period-weighted estimates, p_best, next weights and SRM."""
        primary = next(m for m in self.experiment.metrics if m.role == "primary")
        return analyze_bandit(self.inputs(primary.key), min_weight=settings.min_weight,
                              seed=seed, direction=primary.direction)  # type: ignore[arg-type]


def period_aggregates(connection: Session | Connection, experiment: Experiment,
                      periods: Sequence[AllocationPeriod], specs: Sequence[MetricSpec], *,
                      hours: float, cuped: bool, rollup: bool = False,
                      sources: PipelineSources | None = None) -> BanditPeriods:
    """One grouped pipeline pass over ``sources`` (default: Parcours's own tables; a
    warehouse's, on its ``connection``, work the same), grouped by weight period: a unit's
    period is the last one started at or before its first exposure (:func:`period_of`
    over the start times, literals in the query: the periods stay in Parcours)."""
    base = sources or own_sources(experiment.id)
    grouped = base.grouped_by(period=period_of(base.exposures.c.exposed_at,
                                               [p.started_at for p in periods[1:]]))
    groups = aggregate_grouped(connection, experiment.id, specs, hours=hours, cuped=cuped,
                               journey=experiment.journey, rollup=rollup, sources=grouped)
    return BanditPeriods(experiment, list(periods),
                         {int(p): a for p, a in marginal(groups, 0).items()})


def primary_periods(connection: Session | Connection, experiment: Experiment,
                    periods: Sequence[AllocationPeriod],
                    sources: PipelineSources | None = None) -> BanditPeriods:
    """The primary metric alone, per period (what a reallocation needs), over Parcours's
    tables or a warehouse's ``sources`` on its ``connection``. Without the PostgreSQL
    rollup: it is kept for the report's full set of metrics."""
    metric = next(m for m in experiment.metrics if m.role == "primary")
    hours = AnalysisSettings.model_validate(experiment.analysis).conversion_window_hours
    return period_aggregates(connection, experiment, periods, [MetricSpec.of(metric)],
                             hours=hours, cuped=False, sources=sources)


# --- calculator and report ---------------------------------------------------------------------

def result_to_dict(result: BanditResult) -> dict[str, Any]:
    """``POST /api/v1/stats/bandit``'s answer."""
    return {"estimates": {arm: {"n": e.n, "mean": e.mean, "variance": e.variance}
                          for arm, e in result.estimates.items()},
            "p_best": result.p_best, "weights": result.weights,
            "expected_units": result.expected_units,
            "srm": {"p_value": result.srm.p_value, "detected": result.srm.detected},
            "seed": result.seed, "warnings": list(result.warnings)}


def calculate_bandit(periods: list[Mapping[str, Any]], *, min_weight: float, seed: int,
                     direction: str = "increase") -> dict[str, Any]:
    """The calculator: the same statistics the reallocation uses; bad input is a 422."""
    inputs = []
    for index, period in enumerate(periods):
        try:
            arms = {}
            for position, v in enumerate(period["variants"]):
                if v["key"] in arms:
                    raise StatsInputError(f"variants[{position}].key", "duplicate variant key")
                try:
                    arms[v["key"]] = MeanStats(v["n"], v["sum"], v["sum_squares"])
                except StatsInputError as error:
                    raise error.within(f"variants[{position}]") from None
            inputs.append(Period(dict(period["weights"]), arms))
        except StatsInputError as error:
            raise ValidationFailed.field(f"periods[{index}].{error.field}", error.message) from None
    try:
        return result_to_dict(analyze_bandit(inputs, min_weight=min_weight, seed=seed,
                                             direction=direction))  # type: ignore[arg-type]
    except StatsInputError as error:
        raise ValidationFailed.field(error.field, error.message) from None


def report_periods(session: Session, experiment: Experiment, specs: Sequence[MetricSpec],
                   settings: AnalysisSettings, *, rollup: bool,
                   sources: PipelineSources | None = None,
                   connection: Session | Connection | None = None) -> BanditPeriods | None:
    """The report's one aggregation round for a started bandit (None otherwise): every
    metric per weight period; :meth:`BanditPeriods.pooled` gives the report's totals. The
    periods are read from Parcours (``session``); the round runs on ``connection`` when
    the sources are a warehouse's."""
    if bandit_settings(experiment) is None:
        return None
    periods = periods_of(session, experiment.id)
    if not periods:
        return None
    return period_aggregates(connection or session, experiment, periods, specs,
                             hours=settings.conversion_window_hours, cuped=settings.cuped,
                             rollup=rollup, sources=sources)


def weigh_metric(data: BanditPeriods, settings: AnalysisSettings, metric: Metric,
                 variants: list[dict[str, Any]], comparisons: list[Comparison],
                 notes: list[str]) -> list[Comparison]:
    """Replace a metric's estimates (in ``variants``) and raw comparisons by period-weighted
    ones (SPEC §13's m and V, per unit); the report corrects them in their usual family.
    Kinds that are not a per-unit mean (ratio, NPS, time to convert) keep their pooled
    numbers, with a warning."""
    if metric.kind not in BANDIT_METRIC_KINDS:
        notes.append(f"{metric.key}: not period-weighted ({metric.kind} is not a per-unit "
                     "mean): pooled over periods with different weights, which can mislead")
        return comparisons
    estimates, weighted, warnings = weighted_comparisons(data, settings, metric)
    notes.extend(f"{metric.key}: {note}" for note in warnings)
    z = critical_value(settings.alpha)
    for entry in variants:
        estimate = estimates.get(entry["variant"])
        if estimate is None or estimate.mean is None or estimate.variance is None:
            continue
        half = z * estimate.variance ** 0.5
        entry.update(estimate=estimate.mean, ci=[estimate.mean - half, estimate.mean + half],
                     period_weighted=True)
    return weighted


def weighted_comparisons(data: BanditPeriods, settings: AnalysisSettings, metric: Metric, *,
                         days: DaySpan = EVERY_DAY
                         ) -> tuple[dict[str, ArmEstimate], list[Comparison], list[str]]:
    """A per-unit-mean metric's period-weighted arm estimates and raw comparisons over the
    units exposed on ``days`` (the report's; its timelines give a span per day), and the
    weighting's warnings."""
    estimates, warnings = period_weighted(data.inputs(metric.key, days=days))
    arms = {arm: ArmSummary(e.n, e.mean, None if e.variance is None else e.variance * e.n)
            for arm, e in estimates.items()}
    control = next(v.key for v in data.experiment.variants if v.is_control)
    method = "frequentist" if settings.method == "sequential" else settings.method
    comparisons = [compare(metric.kind, arms[control], arms[v.key],  # type: ignore[arg-type]
                           variant=v.key, method=method, alpha=settings.alpha,
                           direction=metric.direction, mde=settings.mde)  # type: ignore[arg-type]
                   for v in data.experiment.variants if not v.is_control]
    return estimates, comparisons, warnings


def apply_to_report(data: BanditPeriods, body: dict[str, Any]) -> None:
    """The bandit parts of a report whose metrics :func:`weigh_metric` weighted: the flag,
    ``p_best`` per arm (primary metric) and the SRM against the counts the period weights
    predict."""
    bandit = bandit_settings(data.experiment)
    assert bandit is not None, "only a bandit's report"
    result = data.result(seed=data.periods[-1].seed, settings=bandit)
    body["period_weighted"] = True
    body["p_best"] = result.p_best
    body["expected_units"] = result.expected_units
    body["srm"] = {"p_value": result.srm.p_value, "detected": result.srm.detected}
    # The fixed-weight SRM alert of the generic report no longer applies: redo it.
    body["alerts"] = [*(a for a in body.get("alerts", []) if a["kind"] != "srm"),
                      *alerts.srm_alerts(body)]
    kinds = {m.key: m.kind for m in data.experiment.metrics}
    for entry in body["metrics"]:
        entry["period_weighted"] = kinds[entry["key"]] in BANDIT_METRIC_KINDS
    primary = next(m for m in body["metrics"] if m["role"] == "primary")
    primary["warnings"] = [*primary.get("warnings", []),
                           "lifts between arms are biased under adaptive allocation: "
                           "read them as directions, not as clean effect sizes"]
