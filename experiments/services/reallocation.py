"""Bandit reallocation (SPEC §13): open a bandit's next weight period when it is due.

After ``burn_in_hours`` and then every ``update_every_hours`` (any time when forced), the
primary metric's per-period sums are read where the bandit's data lives (Parcours's
tables, or its warehouse, synced first: :func:`routing.reallocation_periods`); when every
arm has ``min_units_per_arm`` units, the next weights are drawn (:mod:`stats.bandit`), the
period is stored, audited and announced (``experiment.reallocated``). This sits above both
the bandit statistics (:mod:`experiments.services.bandits`) and the routing, which itself
uses them for a warehouse's report: the imports point one way.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from experiments import signals
from experiments.auth import Principal
from experiments.db import utcnow
from experiments.errors import Conflict
from experiments.models import AllocationPeriod, Experiment
from experiments.schemas import BanditAllocation
from experiments.services import bandits, lifecycle
from experiments.services.audit import record_audit
from experiments.services.warehouses.routing import reallocation_periods

logger = logging.getLogger(__name__)


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
    settings = bandits.bandit_settings(experiment)
    if settings is None:
        raise Conflict(f"experiment {key!r} has a fixed allocation, not a bandit")
    if experiment.status != "running":
        raise Conflict(f"only a running bandit is reallocated (this one is {experiment.status})")
    periods = bandits.periods_of(session, experiment.id)
    assert experiment.started_at is not None and periods, "a started bandit has period 0"
    waiting = None if force else due(settings, experiment.started_at, periods[-1], now)
    if waiting is not None:
        logger.info("bandit %s: no update yet (%s)", key, waiting)
        return None
    seed = secrets.randbits(32)
    result = reallocation_periods(session, experiment, periods).result(seed=seed,
                                                                       settings=settings)
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
    return {**bandits.period_to_dict(period), "started_at": period.started_at.isoformat()}


def reallocate_due(session: Session, now: datetime | None = None) -> dict[str, str]:
    """The scheduler's pass: every running bandit that is due gets its update."""
    keys = session.scalars(select(Experiment.key).where(Experiment.status == "running")
                           .order_by(Experiment.key)).all()
    outcome: dict[str, str] = {}
    for key in keys:
        try:
            experiment = session.scalar(select(Experiment).where(Experiment.key == key))
            if experiment is None or bandits.bandit_settings(experiment) is None:
                continue
            period = reallocate(session, key, now)
            outcome[key] = "waiting" if period is None else f"period {period.period}"
        except Exception as exc:  # one bandit's failure never stops the others
            session.rollback()
            logger.exception("reallocation of %s failed", key)
            outcome[key] = f"error: {type(exc).__name__}: {exc}"
    return outcome
