"""Experiment configuration and lifecycle: create, edit, start, pause, conclude, iterate."""

from __future__ import annotations

import copy
import re
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session, selectinload
from sqlalchemy.orm.exc import StaleDataError

from experiments import signals
from experiments.auth import Principal
from experiments.db import utcnow
from experiments.errors import ApiError, Conflict, NotFound, ValidationFailed, validated
from experiments.models import Decision, Experiment, Metric, Report, Variant
from experiments.schemas import (
    ConcludeIn,
    ExperimentFields,
    ExperimentPatch,
    IterateIn,
    experiment_problems,
)
from experiments.services import alerts, bandits, exposures
from experiments.services.audit import json_safe, record_audit
from experiments.services.pagination import paginate
from experiments.services.pipeline import rollup
from experiments.services.warehouses.engines import configured_warehouses

# status -> {action: new status}
TRANSITIONS: dict[str, dict[str, str]] = {
    "draft": {"start": "running"},
    "running": {"pause": "paused", "conclude": "concluded"},
    "paused": {"resume": "running", "conclude": "concluded"},
    "concluded": {},
}
# Fields that may still change once units have been exposed to the experiment.
_EDITABLE_WHEN_CONCLUDED = {"name", "hypothesis", "owner", "learnings"}


def new_salt() -> str:
    """A random hash salt per experiment, so experiments split units independently."""
    return secrets.token_hex(8)


# What experiment_to_dict reads, loaded with the experiments (no query per row).
WITH_DEFINITION = (selectinload(Experiment.variants), selectinload(Experiment.metrics))


def experiment_id(session: Session, key: str) -> int:
    """The id of the experiment with this key, or 404 (without loading its definition)."""
    found = session.scalar(select(Experiment.id).where(Experiment.key == key))
    if found is None:
        raise NotFound(f"no experiment with key {key!r}")
    return found


def get_experiment(session: Session, key: str) -> Experiment:
    """The experiment with this key, or 404."""
    experiment = session.scalar(
        select(Experiment).where(Experiment.key == key).options(*WITH_DEFINITION))
    if experiment is None:
        raise NotFound(f"no experiment with key {key!r}")
    return experiment


def list_experiments(session: Session, *, status: str | None, limit: int,
                     cursor: str | None) -> tuple[list[Experiment], str | None]:
    """Experiments in creation order, optionally filtered by status."""
    query = select(Experiment).options(*WITH_DEFINITION, selectinload(Experiment.iteration_of))
    if status is not None:
        query = query.where(Experiment.status == status)
    rows, next_cursor = paginate(session, query, Experiment.id, limit=limit, cursor=cursor)
    return list(rows), next_cursor


def experiment_to_dict(experiment: Experiment) -> dict[str, Any]:
    """The public JSON shape of an experiment (SPEC §3)."""
    return {
        "key": experiment.key,
        "name": experiment.name,
        "hypothesis": experiment.hypothesis,
        "owner": experiment.owner,
        "journey": list(experiment.journey),
        "variants": [
            {"key": v.key, "name": v.name, "weight": v.weight, "is_control": v.is_control,
             "payload": v.payload} for v in experiment.variants
        ],
        "traffic": experiment.traffic,
        "targeting": list(experiment.targeting),
        "layer": experiment.layer,
        "overrides": dict(experiment.overrides),
        "metrics": [_metric_to_dict(m) for m in experiment.metrics],
        "analysis": dict(experiment.analysis),
        "allocation": dict(experiment.allocation or {"type": "fixed"}),
        "iteration_of": experiment.iteration_of.key if experiment.iteration_of else None,
        "status": experiment.status,
        "created_at": experiment.created_at,
        "started_at": experiment.started_at,
        "concluded_at": experiment.concluded_at,
        "decision": experiment.decision,
        "learnings": experiment.learnings,
        "version": experiment.version,
    }


def _metric_to_dict(metric: Metric) -> dict[str, Any]:
    return {"key": metric.key, "kind": metric.kind, "role": metric.role,
            "direction": metric.direction, "event": metric.event,
            "numerator": metric.numerator, "denominator": metric.denominator,
            "friction_kind": metric.friction_kind, "step": metric.step, "cap": metric.cap,
            "quantile": metric.quantile, "source": metric.source}


def _snapshot(experiment: Experiment) -> dict[str, Any]:
    """A JSON-safe copy for audit entries and webhook payloads."""
    return json_safe(experiment_to_dict(experiment))


def validate_fields(data: ExperimentFields | dict[str, Any]) -> ExperimentFields:
    """Validate a full configuration, field rules (unless already parsed, as by the API)
    then cross-field rules (422)."""
    fields = (data if isinstance(data, ExperimentFields)
              else validated(ExperimentFields, data, "the experiment is invalid"))
    problems = experiment_problems(fields)
    warehouse = fields.analysis.warehouse
    if warehouse is not None and warehouse not in configured_warehouses():
        problems.append({"field": "analysis.warehouse", "message": (
            f"no warehouse named {warehouse!r} is configured "
            f"(set PARCOURS_WAREHOUSE_{warehouse.upper()}_URL)")})
    if problems:
        raise ValidationFailed(problems, "the experiment is invalid")
    return fields


def create_experiment(session: Session, data: ExperimentFields | dict[str, Any],
                      principal: Principal) -> Experiment:
    """Create a draft; a duplicate key is a 409."""
    fields = validate_fields(data)
    if session.scalar(select(Experiment.id).where(Experiment.key == fields.key)) is not None:
        raise Conflict(f"an experiment with key {fields.key!r} already exists")
    experiment = Experiment(key=fields.key, salt=new_salt(), status="draft")
    if fields.iteration_of is not None:
        parent = session.scalar(select(Experiment).where(Experiment.key == fields.iteration_of))
        if parent is None:
            raise ValidationFailed.field("iteration_of",
                                         f"unknown experiment {fields.iteration_of!r}")
        experiment.iteration_of = parent
    _apply_fields(experiment, fields)
    session.add(experiment)
    _flush(session, f"an experiment with key {fields.key!r} already exists")
    after = _snapshot(experiment)
    record_audit(session, principal, "experiment.create", target_type="experiment",
                 target_id=experiment.key, experiment_key=experiment.key, after=after)
    signals.emit(signals.experiment_created, session, {"experiment": after})
    session.commit()
    return experiment


def _apply_fields(experiment: Experiment, fields: ExperimentFields) -> None:
    experiment.name = fields.name
    experiment.hypothesis = fields.hypothesis
    experiment.owner = fields.owner
    experiment.journey = list(fields.journey)
    experiment.traffic = fields.traffic
    experiment.targeting = [rule.model_dump(mode="json") for rule in fields.targeting]
    experiment.layer = fields.layer
    experiment.overrides = dict(fields.overrides)
    experiment.analysis = fields.analysis.model_dump(mode="json")
    experiment.allocation = fields.allocation.model_dump(mode="json")
    experiment.learnings = fields.learnings
    experiment.variants = _synced(experiment.variants, Variant,
                                  [v.model_dump() for v in fields.variants])
    experiment.metrics = _synced(experiment.metrics, Metric,
                                 [m.model_dump() for m in fields.metrics])


def _synced(current: list[Any], model: type[Any], specs: list[dict[str, Any]]) -> list[Any]:
    """Update child rows in place by key: unique (experiment, key) rows are never re-inserted."""
    existing = {row.key: row for row in current}
    rows = []
    for position, spec in enumerate(specs):
        row = existing.get(spec["key"]) or model(key=spec["key"])
        for name, value in spec.items():
            setattr(row, name, value)
        row.position = position
        rows.append(row)
    return rows


def update_experiment(session: Session, key: str, patch: ExperimentPatch,
                      principal: Principal) -> Experiment:
    """Apply a partial update, enforcing what may change in each status (409)."""
    experiment = get_experiment(session, key)
    before = _snapshot(experiment)
    changes = patch.model_dump(exclude_unset=True)
    _check_patch_allowed(experiment, changes)
    merged = {**_writable(before), **changes}
    fields = validate_fields(merged)
    bandits.check_allocation_kept(experiment, fields)
    _apply_fields(experiment, fields)
    experiment.updated_at = utcnow()
    _flush(session, "the experiment changed concurrently; reload and retry")
    _exclude_new_override_units(session, experiment, set(fields.overrides) - set(
        before["overrides"]))
    record_audit(session, principal, "experiment.update", target_type="experiment",
                 target_id=key, experiment_key=key, before=before, after=_snapshot(experiment))
    session.commit()
    return experiment


def _exclude_new_override_units(session: Session, experiment: Experiment,
                                units: set[str]) -> None:
    """Units forced after their first exposure leave the analysis, as override units do."""
    if units and experiment.status != "draft":
        rollup.forget_exposures(session, exposures.flag_as_overrides(
            session, experiment.id, units))


def _writable(snapshot: dict[str, Any]) -> dict[str, Any]:
    names = set(ExperimentFields.model_fields)
    return {name: value for name, value in snapshot.items() if name in names}


def _check_patch_allowed(experiment: Experiment, changes: dict[str, Any]) -> None:
    if "key" in changes and changes["key"] != experiment.key:
        raise Conflict("an experiment's key is immutable")
    if experiment.status == "concluded":
        frozen = sorted(set(changes) - _EDITABLE_WHEN_CONCLUDED - {"key"})
        if frozen:
            raise Conflict(f"a concluded experiment cannot change {', '.join(frozen)}")
    if experiment.status != "draft":
        _check_structure_kept(experiment, changes)


def _check_structure_kept(experiment: Experiment, changes: dict[str, Any]) -> None:
    """Once units are exposed, the arms and the layer must stay as they are."""
    if "variants" in changes:
        old = {(v.key, v.is_control) for v in experiment.variants}
        new = {(v["key"], v.get("is_control", False)) for v in changes["variants"]}
        if old != new:
            raise Conflict(f"variants cannot be added, removed or re-controlled while "
                           f"{experiment.status}")
    if "layer" in changes and changes["layer"] != experiment.layer:
        raise Conflict(f"the layer cannot change while {experiment.status}")


def delete_experiment(session: Session, key: str, principal: Principal) -> None:
    """Only drafts can be deleted: anything else holds evidence."""
    experiment = get_experiment(session, key)
    if experiment.status != "draft":
        raise Conflict(f"only draft experiments can be deleted (this one is {experiment.status})")
    before = _snapshot(experiment)
    session.delete(experiment)
    record_audit(session, principal, "experiment.delete", target_type="experiment",
                 target_id=key, experiment_key=key, before=before)
    _flush(session, "the experiment changed concurrently; reload and retry")
    session.commit()


def transition(session: Session, key: str, action: str, principal: Principal,
               conclusion: ConcludeIn | None = None) -> Experiment:
    """Move an experiment along its lifecycle; an illegal move is a 409."""
    experiment = get_experiment(session, key)
    target = TRANSITIONS[experiment.status].get(action)
    if target is None:
        raise Conflict(f"cannot {action} an experiment that is {experiment.status}")
    before = _snapshot(experiment)
    risks: list[str] = []
    if action == "conclude":  # checked before anything changes: a refusal leaves no trace
        assert conclusion is not None
        risks = _check_conclusion(session, experiment, conclusion)
    now = utcnow()
    experiment.status = target
    experiment.updated_at = now
    if action == "start":
        experiment.started_at = now
        bandits.open_first_period(session, experiment, now)
    if action == "conclude":
        assert conclusion is not None
        _conclude(session, experiment, conclusion, principal, risks)
    _flush(session, "the experiment changed concurrently; reload and retry")
    after = _snapshot(experiment)
    record_audit(session, principal, f"experiment.{action}", target_type="experiment",
                 target_id=key, experiment_key=key, before=before, after=after)
    signals.emit(_LIFECYCLE_SIGNALS[action], session, {"experiment": after, "action": action})
    session.commit()
    return experiment


def _check_conclusion(session: Session, experiment: Experiment,
                      conclusion: ConcludeIn) -> list[str]:
    """Validate the outcome and winner (422) and the risks of shipping it (409 unless
    acknowledged); returns the reasons recording acknowledged risks."""
    variant_keys = [v.key for v in experiment.variants]
    if conclusion.outcome == "ship" and conclusion.winner is None:
        raise ValidationFailed.field("winner", "a 'ship' outcome needs the winning variant")
    if conclusion.winner is not None and conclusion.winner not in variant_keys:
        raise ValidationFailed.field("winner", f"unknown variant {conclusion.winner!r}")
    if conclusion.outcome != "ship" and conclusion.winner is not None:
        raise ValidationFailed.field("winner", f"an {conclusion.outcome!r} outcome has no winner")
    if conclusion.outcome != "ship" or conclusion.winner is None:
        return []
    return _acknowledged(ship_risks(experiment, conclusion.winner, session=session), conclusion)


def _conclude(session: Session, experiment: Experiment, conclusion: ConcludeIn,
              principal: Principal, risks: list[str]) -> None:
    now = utcnow()
    reasons = [f"concluded by {principal.actor}", *risks]
    experiment.concluded_at = now
    experiment.outcome = conclusion.outcome
    experiment.winner = conclusion.winner
    if conclusion.learnings:
        experiment.learnings = conclusion.learnings
    experiment.decision = {"outcome": conclusion.outcome, "winner": conclusion.winner,
                           "reasons": reasons, "decided_at": now.isoformat()}
    session.add(Decision(experiment_id=experiment.id, outcome=conclusion.outcome,
                         winner=conclusion.winner, reasons=reasons, automatic=False,
                         decided_at=now))


def ship_risks(experiment: Experiment, winner: str, *,
               session: Session | None = None) -> list[dict[str, Any]]:
    """The alerts of the latest report that speak against shipping ``winner``: its guardrail
    breaches and a sample ratio mismatch (what the admin UI's confirmation lists)."""
    return alerts.risks_of_shipping(_latest_results(experiment, session), winner)


def ship_risks_by_variant(experiment: Experiment) -> dict[str, list[dict[str, Any]]]:
    """:func:`ship_risks` of every variant, from one read of the latest report."""
    body = _latest_results(experiment, None)
    return {v.key: alerts.risks_of_shipping(body, v.key) for v in experiment.variants}


def _latest_results(experiment: Experiment, session: Session | None) -> dict[str, Any] | None:
    """The body of the latest report with results (failed analyses show none), if any."""
    session = session or object_session(experiment)
    assert session is not None, "the experiment must belong to a session"
    recent = session.scalars(select(Report).where(Report.experiment_id == experiment.id)
                             .order_by(Report.id.desc()).limit(20))
    return next((report.body for report in recent if not report.body.get("error")), None)


def _acknowledged(risks: list[dict[str, Any]], conclusion: ConcludeIn) -> list[str]:
    """The reasons recording acknowledged risks; unacknowledged risks are a 409."""
    if not risks:
        return []
    if not conclusion.acknowledge_risks:
        listed = "; ".join(risk["message"] for risk in risks)
        raise ApiError(409, f"shipping {conclusion.winner} is risky: {listed}. Send "
                       '"acknowledge_risks": true to ship anyway', code="risky_ship",
                       details=risks)
    return [f"risk acknowledged: {risk['message']}" for risk in risks]


_LIFECYCLE_SIGNALS = {
    "start": signals.experiment_started, "resume": signals.experiment_started,
    "pause": signals.experiment_paused, "conclude": signals.experiment_concluded,
}


_ITERATION_SUFFIX = re.compile(r"\s*\(iteration \d+\)$")


def iterate_experiment(session: Session, key: str, body: IterateIn,
                       principal: Principal) -> Experiment:
    """Start the next experiment of a chain: a draft copying this configuration."""
    parent = get_experiment(session, key)
    data = _writable(_snapshot(parent))
    data.update(key=body.key, iteration_of=parent.key, learnings="",
                name=body.name or iteration_name(parent),
                hypothesis=parent.hypothesis if body.hypothesis is None else body.hypothesis)
    if body.from_winner:
        data["variants"] = _control_gets_winner(parent, data["variants"])
    return create_experiment(session, data, principal)


def iteration_name(parent: Experiment) -> str:
    """A default name that tells the iteration from its parent ("Checkout (iteration 2)")."""
    depth, ancestor = 2, parent.iteration_of
    while ancestor is not None and depth < 1000:
        depth, ancestor = depth + 1, ancestor.iteration_of
    base = _ITERATION_SUFFIX.sub("", parent.name) or parent.name
    return f"{base} (iteration {depth})"[:200]


def _control_gets_winner(parent: Experiment,
                         variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shipped winner is what customers now see, so the next control starts from it."""
    if parent.outcome != "ship" or not parent.winner:
        raise Conflict(f"experiment {parent.key!r} has no shipped winner to start from")
    winner = next((v for v in parent.variants if v.key == parent.winner), None)
    if winner is None:
        raise Conflict(f"the shipped winner {parent.winner!r} is no longer a variant")
    return [{**v, "payload": copy.deepcopy(winner.payload)} if v["is_control"] else v
            for v in variants]


def _flush(session: Session, conflict_message: str) -> None:
    """Flush, turning unique-key and optimistic-lock failures into 409."""
    try:
        session.flush()
    except (IntegrityError, StaleDataError):
        session.rollback()
        raise Conflict(conflict_message) from None
