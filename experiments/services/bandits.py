"""Bandit allocation (SPEC §13): weight periods, reallocation and the bandit report section.

A bandit experiment keeps versioned weight periods (:class:`AllocationPeriod`): period 0
holds the configured weights from the start; each reallocation opens the next one. New
units are split by the current period's weights (read from the in-memory configuration
cache, like every other assignment input); stored exposures keep their variant. The
statistics are in :mod:`stats.bandit`; this module reads the per-period per-arm sums of
the primary metric (:func:`period_sums`), applies the burn-in, cadence and
``min_units_per_arm`` rules, and records and announces each new period.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Float, case, false, func, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from experiments import signals
from experiments.auth import Principal
from experiments.db import utcnow
from experiments.errors import Conflict, ValidationFailed
from experiments.models import AllocationPeriod, Event, Experiment, Exposure, Metric
from experiments.schemas import AnalysisSettings, BanditAllocation, ExperimentFields
from experiments.services import alerts, lifecycle
from experiments.services.audit import record_audit
from experiments.services.pipeline import MetricSpec, match_condition
from experiments.services.pipeline.dialects import before_hours_after
from experiments.services.pipeline.unit_values import bounded_value
from stats import ArmSummary, MeanStats, StatsInputError, apply_correction, compare
from stats.bandit import BanditResult, Period, analyze_bandit
from stats.frequentist import critical_value

logger = logging.getLogger(__name__)
PeriodSums = dict[int, dict[str, MeanStats]]
EMPTY = MeanStats(0, 0.0, 0.0)


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


# --- per-period sums ---------------------------------------------------------------------------

def period_sums(session: Session, experiment: Experiment) -> PeriodSums:
    """Per period and arm, the primary metric's (n, sum, sum of squares) over the units first
    exposed in that period (a unit's period: the last one started at or before its exposure).

    PHASE 1: a plain query over exposures ⋈ events, to be replaced by the analysis
    pipeline's period grouping in phase 2 (same signature, same result). No caps, no CUPED.
    """
    metric = next(m for m in experiment.metrics if m.role == "primary")
    hours = AnalysisSettings.model_validate(experiment.analysis).conversion_window_hours
    period = (select(func.max(AllocationPeriod.period))
              .where(AllocationPeriod.experiment_id == experiment.id,
                     AllocationPeriod.started_at <= Exposure.exposed_at)
              .correlate(Exposure).scalar_subquery())
    in_window = (Event.unit_id == Exposure.unit_id) & (Event.occurred_at >= Exposure.exposed_at) \
        & before_hours_after(Exposure.exposed_at, Event.occurred_at, literal(hours, Float())) \
        & match_condition(MetricSpec.of(metric), Event.__table__)
    per_unit = (select(func.coalesce(period, 0).label("period"),
                       Exposure.variant_key.label("variant"), _unit_value(metric).label("y"))
                .select_from(Exposure).outerjoin(Event, in_window)
                .where(Exposure.experiment_id == experiment.id, Exposure.is_override == false())
                .group_by(Exposure.id, Exposure.variant_key, Exposure.exposed_at)
                .subquery("u"))
    rows = session.execute(select(per_unit.c.period, per_unit.c.variant, func.count(),
                                  func.sum(per_unit.c.y), func.sum(per_unit.c.y * per_unit.c.y))
                           .group_by(per_unit.c.period, per_unit.c.variant))
    sums: PeriodSums = {}
    for p, variant, n, total, squares in rows:
        sums.setdefault(int(p), {})[variant] = MeanStats(int(n), float(total or 0.0),
                                                         float(squares or 0.0))
    return sums


def _unit_value(metric: Metric) -> Any:
    """A unit's value: 0/1 for conversion and friction, the sum of values, or the count."""
    if metric.kind in ("conversion", "friction"):
        return func.max(case((Event.id.is_not(None), 1.0), else_=0.0))
    if metric.kind == "mean":
        return func.coalesce(func.sum(bounded_value(Event.__table__)), 0.0)
    return func.count(Event.id)


def bandit_result(session: Session, experiment: Experiment, *, seed: int,
                  settings: BanditAllocation) -> BanditResult:
    """The stats of every period so far (per-arm sums from :func:`period_sums`)."""
    periods = periods_of(session, experiment.id)
    sums = period_sums(session, experiment)
    arms = [v.key for v in experiment.variants]
    inputs = [Period({k: float(p.weights.get(k, 0.0)) for k in arms},
                     {k: sums.get(p.period, {}).get(k, EMPTY) for k in arms}) for p in periods]
    direction = next(m.direction for m in experiment.metrics if m.role == "primary")
    return analyze_bandit(inputs, min_weight=settings.min_weight, seed=seed,
                          direction=direction)  # type: ignore[arg-type]


# --- reallocation ------------------------------------------------------------------------------

def due(settings: BanditAllocation, started_at: datetime, current: AllocationPeriod,
        now: datetime) -> str | None:
    """Why no update is due yet (burn-in or cadence), None when it is."""
    if now < started_at + timedelta(hours=settings.burn_in_hours):
        return f"burn-in: {settings.burn_in_hours:g} h from the start"
    if current.period > 0 and now < current.started_at + timedelta(
            hours=settings.update_every_hours):
        return f"cadence: every {settings.update_every_hours:g} h"
    return None


def reallocate(session: Session, key: str, now: datetime | None = None, force: bool = False,
               principal: Principal | None = None) -> AllocationPeriod | None:
    """Open a new weight period when due (``force`` ignores burn-in and cadence, never
    ``min_units_per_arm``); returns it, or None when not due. 409 for a forced update
    that the data does not allow, or for an experiment that is not a running bandit."""
    now = now or utcnow()
    experiment = lifecycle.get_experiment(session, key)
    settings = bandit_settings(experiment)
    if settings is None:
        raise Conflict(f"experiment {key!r} has a fixed allocation, not a bandit")
    if experiment.status != "running":
        raise Conflict(f"only a running bandit is reallocated (this one is {experiment.status})")
    periods = periods_of(session, experiment.id)
    assert experiment.started_at is not None and periods, "a started bandit has period 0"
    waiting = None if force else due(settings, experiment.started_at, periods[-1], now)
    if waiting is not None:
        logger.info("bandit %s: no update yet (%s)", key, waiting)
        return None
    seed = secrets.randbits(32)
    result = bandit_result(session, experiment, seed=seed, settings=settings)
    short = {arm: e.n for arm, e in result.estimates.items() if e.n < settings.min_units_per_arm}
    if short or result.weights is None:
        message = (f"every arm needs {settings.min_units_per_arm} units before an update ("
                   + ", ".join(f"{arm} has {n}" for arm, n in short.items()) + ")")
        if force:
            raise Conflict(message)
        logger.info("bandit %s: no update yet (%s)", key, message)
        return None
    period = AllocationPeriod(experiment_id=experiment.id, period=periods[-1].period + 1,
                              started_at=now, weights=result.weights, p_best=result.p_best,
                              seed=seed)
    session.add(period)
    experiment.updated_at = now  # a new version: every worker's configuration cache reloads
    try:
        session.flush()
    except (IntegrityError, StaleDataError):
        session.rollback()
        raise Conflict("the bandit was reallocated concurrently; retry") from None
    announced = _json_period(period)
    if principal is not None:
        record_audit(session, principal, "experiment.reallocate", target_type="experiment",
                     target_id=key, experiment_key=key, after=announced)
    signals.emit(signals.experiment_reallocated, session,
                 {"experiment": key, "period": announced})
    session.commit()
    return period


def _json_period(period: AllocationPeriod) -> dict[str, Any]:
    return {**period_to_dict(period), "started_at": period.started_at.isoformat()}


def reallocate_due(session: Session, now: datetime | None = None) -> dict[str, str]:
    """The scheduler's pass: every running bandit that is due gets its update."""
    keys = session.scalars(select(Experiment.key).where(Experiment.status == "running")
                           .order_by(Experiment.key)).all()
    outcome: dict[str, str] = {}
    for key in keys:
        try:
            experiment = session.scalar(select(Experiment).where(Experiment.key == key))
            if experiment is None or bandit_settings(experiment) is None:
                continue
            period = reallocate(session, key, now)
            outcome[key] = "waiting" if period is None else f"period {period.period}"
        except Exception as exc:  # one bandit's failure never stops the others
            session.rollback()
            logger.exception("reallocation of %s failed", key)
            outcome[key] = f"error: {type(exc).__name__}: {exc}"
    return outcome


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


def apply_to_report(session: Session, experiment: Experiment, settings: AnalysisSettings,
                    body: dict[str, Any]) -> None:
    """Make a bandit's report period-weighted: the primary metric's estimates and comparisons,
    ``p_best`` per arm and the SRM against the counts the period weights predict."""
    bandit = bandit_settings(experiment)
    periods = periods_of(session, experiment.id)
    if bandit is None or not periods:
        return
    result = bandit_result(session, experiment, seed=periods[-1].seed, settings=bandit)
    body["period_weighted"] = True
    body["p_best"] = result.p_best
    body["expected_units"] = result.expected_units
    body["srm"] = {"p_value": result.srm.p_value, "detected": result.srm.detected}
    # The fixed-weight SRM alert of the generic report no longer applies: redo it.
    body["alerts"] = [*(a for a in body.get("alerts", []) if a["kind"] != "srm"),
                      *alerts.srm_alerts(body)]
    primary = next(m for m in body["metrics"] if m["role"] == "primary")
    metric = next(m for m in experiment.metrics if m.role == "primary")
    z = critical_value(settings.alpha)
    arms = {arm: ArmSummary(e.n, e.mean, None if e.variance is None else e.variance * e.n)
            for arm, e in result.estimates.items()}
    for entry in primary["variants"]:
        estimate = result.estimates.get(entry["variant"])
        if estimate is None or estimate.mean is None or estimate.variance is None:
            continue
        half = z * estimate.variance ** 0.5
        entry.update(estimate=estimate.mean, ci=[estimate.mean - half, estimate.mean + half],
                     period_weighted=True)
    control = next(v.key for v in experiment.variants if v.is_control)
    method = "frequentist" if settings.method == "sequential" else settings.method
    comparisons = [compare(metric.kind, arms[control], arms[v.key],  # type: ignore[arg-type]
                           variant=v.key, method=method, alpha=settings.alpha,
                           direction=metric.direction, mde=settings.mde)  # type: ignore[arg-type]
                   for v in experiment.variants if not v.is_control]
    from experiments.services.analysis import comparison_to_dict  # analysis imports us

    primary["comparisons"] = [comparison_to_dict(c) for c in
                              apply_correction(comparisons, settings.correction)]
    primary["period_weighted"] = True
    primary["warnings"] = [*primary.get("warnings", []), *result.warnings,
                           "lifts between arms are biased under adaptive allocation: "
                           "read them as directions, not as clean effect sizes"]
