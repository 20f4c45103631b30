"""Holdouts (SPEC §12): the resource, the groups a unit falls in, and the holdout report.

A holdout keeps ``percent`` of units (the ``holdout`` group) on every in-scope
experiment's control for months, and measures as many (the ``measure`` group) who
get everything shipped. Assignment reads the running holdouts from the configuration
cache (:class:`HoldoutConfig`); this module never imports the cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmh3 import hash as mmh3_hash
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from experiments import signals
from experiments.auth import Principal
from experiments.db import utcnow
from experiments.errors import Conflict, NotFound, ValidationFailed, validated
from experiments.models import Holdout, HoldoutExposure
from experiments.schemas.holdouts import ALL_EXPERIMENTS, HoldoutFields, HoldoutPatch
from experiments.services.audit import json_safe, record_audit
from experiments.services.pagination import paginate
from stats.srm import srm_test

# Seed of the holdout hash (SPEC §12; never change it): independent of the experiments'.
HOLDOUT_SEED = 4
HASH_SPACE = 2 ** 32
GROUPS = ("holdout", "measure")
# What the report endpoint says until the analysis pipeline computes holdout metrics.
NOT_COMPUTED = "report not computed yet"


def holdout_group(key: str, unit_id: str, percent: float) -> str:
    """``holdout`` (u < percent), ``measure`` (0.5 ≤ u < 0.5 + percent) or ``general``."""
    return HoldoutConfig.build(0, key, percent, {}).group(unit_id)


@dataclass(frozen=True, slots=True)
class HoldoutConfig:
    """A running holdout as assignment needs it: hash-space cuts and its scope."""

    id: int
    key: str
    holdout_cut: float
    measure_from: float
    measure_cut: float
    every_experiment: bool
    experiments: frozenset[str]
    layers: frozenset[str]

    @classmethod
    def build(cls, id: int, key: str, percent: float, scope: Mapping[str, Any]) -> HoldoutConfig:
        """Precompute the thresholds (``hash < percent × 2³²`` is ``u < percent``)."""
        experiments = frozenset(scope.get("experiments") or ())
        return cls(id=id, key=key, holdout_cut=percent * HASH_SPACE,
                   measure_from=0.5 * HASH_SPACE, measure_cut=(0.5 + percent) * HASH_SPACE,
                   every_experiment=ALL_EXPERIMENTS in experiments,
                   experiments=experiments - {ALL_EXPERIMENTS},
                   layers=frozenset(scope.get("layers") or ()))

    def covers(self, experiment_key: str, layer: str | None) -> bool:
        """Whether an experiment is in scope (``*`` covers those created later too)."""
        return (self.every_experiment or experiment_key in self.experiments
                or (layer is not None and layer in self.layers))

    def group(self, unit_id: str) -> str:
        """This unit's group: MurmurHash3_x86_32("holdout:{key}:{unit_id}", seed 4)."""
        point = mmh3_hash(f"holdout:{self.key}:{unit_id}", HOLDOUT_SEED, signed=False)
        if point < self.holdout_cut:
            return "holdout"
        if self.measure_from <= point < self.measure_cut:
            return "measure"
        return "general"


def load_running(session: Session) -> tuple[HoldoutConfig, ...]:
    """The running holdouts, for the configuration cache (one column query)."""
    rows = session.execute(
        select(Holdout.id, Holdout.key, Holdout.percent, Holdout.scope)
        .where(Holdout.status == "running").order_by(Holdout.id))
    return tuple(HoldoutConfig.build(row.id, row.key, float(row.percent), row.scope or {})
                 for row in rows)


# --- the resource -------------------------------------------------------------------------

def get_holdout(session: Session, key: str) -> Holdout:
    """The holdout with this key, or 404."""
    holdout = session.scalar(select(Holdout).where(Holdout.key == key))
    if holdout is None:
        raise NotFound(f"no holdout with key {key!r}")
    return holdout


def list_holdouts(session: Session, *, status: str | None, limit: int, cursor: str | None
                  ) -> tuple[list[Holdout], str | None]:
    """Holdouts in creation order, optionally by status."""
    query = select(Holdout)
    if status is not None:
        query = query.where(Holdout.status == status)
    rows, next_cursor = paginate(session, query, Holdout.id, limit=limit, cursor=cursor)
    return list(rows), next_cursor


def group_counts(session: Session, holdout_ids: list[int]) -> dict[int, dict[str, int]]:
    """Stored holdout exposures by holdout and group (one query for a whole page)."""
    counts: dict[int, dict[str, int]] = {id_: dict.fromkeys(GROUPS, 0) for id_ in holdout_ids}
    if holdout_ids:
        for holdout_id, group, units in session.execute(
            select(HoldoutExposure.holdout_id, HoldoutExposure.group, func.count())
            .where(HoldoutExposure.holdout_id.in_(holdout_ids))
            .group_by(HoldoutExposure.holdout_id, HoldoutExposure.group)
        ):
            counts[holdout_id][group] = units
    return counts


def holdout_to_dict(holdout: Holdout, units: Mapping[str, int]) -> dict[str, Any]:
    """The public JSON shape of a holdout, with its stored exposures per group."""
    return {"key": holdout.key, "name": holdout.name, "percent": holdout.percent,
            "scope": dict(holdout.scope), "metrics": list(holdout.metrics),
            "status": holdout.status, "units": dict(units),
            "created_at": holdout.created_at, "concluded_at": holdout.concluded_at}


def snapshot(session: Session, holdout: Holdout) -> dict[str, Any]:
    """A JSON-safe copy for audit entries and webhook payloads."""
    session.flush()
    return json_safe(holdout_to_dict(holdout, group_counts(session, [holdout.id])[holdout.id]))


def metric_problems(fields: HoldoutFields) -> list[dict[str, str]]:
    """Cross-field metric rules shared with experiments: unique keys, exactly one primary."""
    problems = []
    keys = [metric.key for metric in fields.metrics]
    for index, key in enumerate(keys):
        if key in keys[:index]:
            problems.append({"field": f"metrics[{index}].key",
                             "message": f"duplicate metric key {key!r}"})
    primaries = sum(metric.role == "primary" for metric in fields.metrics)
    if primaries != 1:
        problems.append({"field": "metrics", "message":
                         f"exactly one metric must have role=primary (found {primaries})"})
    return problems


def _apply(holdout: Holdout, fields: HoldoutFields) -> None:
    problems = metric_problems(fields)
    if problems:
        raise ValidationFailed(problems, "the holdout is invalid")
    holdout.name = fields.name
    holdout.percent = fields.percent
    holdout.scope = fields.scope.model_dump(mode="json", exclude_none=True)
    holdout.metrics = [metric.model_dump(mode="json") for metric in fields.metrics]


def create_holdout(session: Session, fields: HoldoutFields, principal: Principal) -> Holdout:
    """Create a running holdout (it applies from the next assignment); duplicate key → 409."""
    if session.scalar(select(Holdout.id).where(Holdout.key == fields.key)) is not None:
        raise Conflict(f"a holdout with key {fields.key!r} already exists")
    holdout = Holdout(key=fields.key, status="running")
    _apply(holdout, fields)
    session.add(holdout)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a holdout with key {fields.key!r} already exists") from None
    after = snapshot(session, holdout)
    record_audit(session, principal, "holdout.create", target_type="holdout",
                 target_id=holdout.key, after=after)
    signals.emit(signals.holdout_created, session, {"holdout": after})
    session.commit()
    return holdout


def update_holdout(session: Session, key: str, patch: HoldoutPatch,
                   principal: Principal) -> Holdout:
    """Change some fields; ``percent`` is frozen (409) once units are exposed, and a
    concluded holdout only takes a new name."""
    holdout = get_holdout(session, key)
    before = snapshot(session, holdout)
    changes = patch.model_dump(exclude_unset=True)
    if holdout.status == "concluded" and set(changes) - {"name"}:
        raise Conflict("a concluded holdout can only be renamed",
                       [{"field": name, "message": "frozen once concluded"}
                        for name in sorted(set(changes) - {"name"})])
    if ("percent" in changes and changes["percent"] != holdout.percent
            and sum(before["units"].values())):
        raise Conflict("percent is frozen once the holdout has exposures", [
            {"field": "percent", "message": "frozen: changing it would move exposed units "
                                            "between groups; create a new holdout instead"}])
    merged = {"key": holdout.key, "name": holdout.name, "percent": holdout.percent,
              "scope": holdout.scope, "metrics": holdout.metrics, **changes}
    _apply(holdout, validated(HoldoutFields, merged, "the holdout is invalid"))
    holdout.updated_at = utcnow()
    record_audit(session, principal, "holdout.update", target_type="holdout", target_id=key,
                 before=before, after=snapshot(session, holdout))
    session.commit()
    return holdout


def conclude_holdout(session: Session, key: str, principal: Principal) -> Holdout:
    """Release the held-out units: from now on they are assigned like everyone (409 twice)."""
    holdout = get_holdout(session, key)
    if holdout.status == "concluded":
        raise Conflict("the holdout is already concluded")
    before = snapshot(session, holdout)
    holdout.status = "concluded"
    holdout.concluded_at = holdout.updated_at = utcnow()
    after = snapshot(session, holdout)
    record_audit(session, principal, "holdout.conclude", target_type="holdout", target_id=key,
                 before=before, after=after)
    signals.emit(signals.holdout_concluded, session, {"holdout": after})
    session.commit()
    return holdout


# --- the report -----------------------------------------------------------------------------

def holdout_report(session: Session, key: str) -> dict[str, Any]:
    """The holdout report: the experiment report's shape, ``holdout`` as the control.

    Units per group and SRM (against 1:1) come from the stored holdout exposures;
    metrics, funnel and friction points need the analysis pipeline's per-unit stage
    over holdout exposures, and until it provides it they stay empty with ``error``.
    """
    holdout = get_holdout(session, key)
    units = group_counts(session, [holdout.id])[holdout.id]
    srm = srm_test([units[group] for group in GROUPS], [0.5, 0.5])
    return {"holdout": holdout.key, "computed_at": None, "units": units,
            "srm": {"p_value": srm.p_value, "detected": srm.detected},
            "metrics": [], "funnel": [], "friction_points": [], "error": NOT_COMPUTED}
