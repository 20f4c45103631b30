"""Which variant a unit sees (SPEC §4): a pure, deterministic decision plus sticky exposures.

The decision (:func:`decide`) reads only the cached configuration: forced overrides,
targeting, the unit's slice of its layer, traffic inclusion and the variant split,
each from MurmurHash3 of fixed strings so every host and Python version agrees.
:func:`assign` then applies history: a stored exposure always wins, and the first
exposure is inserted (``ON CONFLICT DO NOTHING``) and committed before returning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import mmh3
from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from experiments.db import utcnow
from experiments.errors import NotFound
from experiments.models import Exposure
from experiments.services.config_cache import (
    Condition,
    ConfigCache,
    ConfigSnapshot,
    ExperimentConfig,
    VariantConfig,
    cache_for,
)

REASONS = ("assigned", "override", "traffic", "targeting", "layer", "not_running", "concluded",
           "not_found")
# Seeds of the three independent hashes (documented in the README; never change them).
INCLUSION_SEED = 1
SPLIT_SEED = 2
LAYER_SEED = 3
_HASH_SCALE = 2.0 ** 32
_EXPOSURES = Exposure.__table__

ASSIGNMENTS = Counter("parcours_assignments_total", "Assignments served, by reason", ["reason"])
EXPOSURES_RECORDED = Counter("parcours_exposures_recorded_total",
                             "First exposures stored (sticky variants)")
_COUNT_BY_REASON = {reason: ASSIGNMENTS.labels(reason) for reason in REASONS}


@dataclass(frozen=True)
class Assignment:
    """What a unit sees in one experiment, and why."""

    experiment: str
    variant: str | None
    payload: dict[str, Any]
    in_experiment: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The SPEC §4 JSON shape."""
        return {"experiment": self.experiment, "variant": self.variant, "payload": self.payload,
                "in_experiment": self.in_experiment, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Decision:
    """The pure outcome for one experiment, before history is applied."""

    variant: VariantConfig
    in_experiment: bool
    reason: str


# --- the pure decision ----------------------------------------------------------------------

def unit_hash(text: str, seed: int) -> float:
    """MurmurHash3 (x86, 32-bit) of the UTF-8 text, mapped to [0, 1): the same everywhere."""
    return mmh3.hash(text, seed, signed=False) / _HASH_SCALE


def decide(config: ExperimentConfig, unit_id: str,
           attributes: Mapping[str, Any]) -> Decision:
    """Status → override → targeting → layer → traffic → split, for a unit with no history."""
    if config.status != "running":
        if config.status == "concluded":
            return Decision(config.final, False, "concluded")
        return Decision(config.control, False, "not_running")
    forced = config.overrides.get(unit_id)
    if forced is not None:
        variant = config.variant(forced)
        if variant is not None:
            return Decision(variant, True, "override")
    if config.targeting and not targeting_matches(config.targeting, attributes):
        return Decision(config.control, False, "targeting")
    if config.layer_slot is not None and not in_layer_slot(config, unit_id):
        return Decision(config.control, False, "layer")
    hashed = f"{config.salt}:{unit_id}"
    if unit_hash(hashed, INCLUSION_SEED) >= config.traffic:
        return Decision(config.control, False, "traffic")
    return Decision(split_variant(config, unit_hash(hashed, SPLIT_SEED)), True, "assigned")


def split_variant(config: ExperimentConfig, point: float) -> VariantConfig:
    """The variant whose share of [0, 1) contains ``point`` (weights in declared order)."""
    for variant, bound in zip(config.variants, config.cumulative, strict=True):
        if point < bound:
            return variant
    return config.variants[-1]


def in_layer_slot(config: ExperimentConfig, unit_id: str) -> bool:
    """Whether the unit's layer hash falls in this experiment's equal slice of the layer."""
    assert config.layer_slot is not None
    index, count = config.layer_slot
    return int(unit_hash(f"{config.layer}:{unit_id}", LAYER_SEED) * count) == index


def targeting_matches(conditions: Sequence[Condition], attributes: Mapping[str, Any]) -> bool:
    """Every condition must hold (SPEC §3)."""
    return all(condition_holds(condition, attributes) for condition in conditions)


def _kind(value: Any) -> str:
    """Comparison family: bools are not numbers, and numbers never equal strings."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def _same(left: Any, right: Any) -> bool:
    return _kind(left) == _kind(right) and left == right


def _is_scalar(value: Any) -> bool:
    return _kind(value) != "other"


def condition_holds(condition: Condition, attributes: Mapping[str, Any]) -> bool:
    """One rule; a missing attribute or a type mismatch makes it false (except ``exists``)."""
    actual = attributes.get(condition.attribute)
    if condition.op == "exists":
        expected = True if condition.value is None else bool(condition.value)
        return (actual is not None) == expected
    if actual is None:
        return False
    check = _OPS.get(condition.op)
    return bool(check and check(actual, condition.value, condition.pattern))


def _in(actual: Any, expected: Any, _pattern: re.Pattern[str] | None) -> bool:
    return (_is_scalar(actual) and isinstance(expected, list)
            and any(_same(actual, item) for item in expected))


def _not_in(actual: Any, expected: Any, _pattern: re.Pattern[str] | None) -> bool:
    if not _is_scalar(actual) or not isinstance(expected, list):
        return False
    comparable = [item for item in expected if _kind(item) == _kind(actual)]
    if expected and not comparable:
        return False  # a list of another type: a mismatch, not a pass
    return actual not in comparable


def _ordered(compare: Any) -> Any:
    def check(actual: Any, expected: Any, _pattern: re.Pattern[str] | None) -> bool:
        kind = _kind(actual)
        return kind in ("number", "string") and kind == _kind(expected) and compare(
            actual, expected)
    return check


def _contains(actual: Any, expected: Any, _pattern: re.Pattern[str] | None) -> bool:
    if isinstance(actual, str):
        return isinstance(expected, str) and expected in actual
    if isinstance(actual, list):
        return any(_same(item, expected) for item in actual)
    return False


def _regex(actual: Any, _expected: Any, pattern: re.Pattern[str] | None) -> bool:
    return isinstance(actual, str) and pattern is not None and pattern.search(actual) is not None


_OPS = {
    "eq": lambda actual, expected, _p: _same(actual, expected),
    "neq": lambda actual, expected, _p: _kind(actual) == _kind(expected) and actual != expected,
    "in": _in,
    "not_in": _not_in,
    "gt": _ordered(lambda a, b: a > b),
    "gte": _ordered(lambda a, b: a >= b),
    "lt": _ordered(lambda a, b: a < b),
    "lte": _ordered(lambda a, b: a <= b),
    "contains": _contains,
    "regex": _regex,
}


# --- assignment with history (sticky, durable) ----------------------------------------------

def assign(session: Session, *, unit_id: str, attributes: Mapping[str, Any] | None = None,
           experiment_keys: Sequence[str] | None = None, track: bool = True,
           now: datetime | None = None) -> list[Assignment]:
    """Assign a unit to the named (default: every running) experiment; commits exposures."""
    attrs = attributes or {}
    cache = cache_for(session)
    snapshot = cache.snapshot(session)
    targets = _targets(snapshot, experiment_keys)
    decisions = {config.id: decide(config, unit_id, attrs) for _, config in targets if config}
    live = [config for _, config in targets if config is not None and config.status == "running"]
    if live:
        _apply_history(session, cache, snapshot, live, decisions,
                       _Request(unit_id, attrs, track, now))
    results = [_result(key, config, decisions) for key, config in targets]
    for result in results:
        _COUNT_BY_REASON[result.reason].inc()
    return results


def record_exposure(session: Session, *, experiment_key: str, unit_id: str,
                    attributes: Mapping[str, Any] | None = None,
                    now: datetime | None = None) -> Assignment:
    """Record the exposure of a unit assigned earlier with ``track: false`` (404 if unknown)."""
    result = assign(session, unit_id=unit_id, attributes=attributes,
                    experiment_keys=[experiment_key], track=True, now=now)[0]
    if result.reason == "not_found":
        raise NotFound(f"no experiment with key {experiment_key!r}")
    return result


@dataclass(frozen=True, slots=True)
class _Request:
    unit_id: str
    attributes: Mapping[str, Any]
    track: bool
    now: datetime | None


def _targets(snapshot: ConfigSnapshot, keys: Sequence[str] | None
             ) -> list[tuple[str, ExperimentConfig | None]]:
    if keys is None:
        return [(config.key, config) for config in snapshot.running]
    return [(key, snapshot.by_key.get(key)) for key in dict.fromkeys(keys)]


def _result(key: str, config: ExperimentConfig | None,
            decisions: Mapping[int, Decision]) -> Assignment:
    if config is None:
        return Assignment(key, None, {}, False, "not_found")
    decision = decisions[config.id]
    return Assignment(config.key, decision.variant.key, dict(decision.variant.payload),
                      decision.in_experiment, decision.reason)


def _apply_history(session: Session, cache: ConfigCache, snapshot: ConfigSnapshot,
                   live: list[ExperimentConfig], decisions: dict[int, Decision],
                   request: _Request) -> None:
    """Stored exposures win; new first exposures are stored before the caller answers.

    Round trips: none for units whose exposures this worker has already seen; one
    INSERT … ON CONFLICT DO NOTHING RETURNING for a new unit; one SELECT first when
    history could change the answer without a write (excluded units, ``track: false``,
    layer mates), and one SELECT after the INSERT for rows another worker won.
    """
    wanted = _ids_to_check(snapshot, live, decisions)
    history = cache.known_exposures(request.unit_id, wanted)
    writes = {config.id for config in live if request.track and decisions[config.id].in_experiment}
    unknown = wanted - history.keys()
    read: dict[int, str] = {}
    if unknown - writes:
        read = _stored(session, request.unit_id, unknown)
        history.update(read)
    _use_history(snapshot, live, decisions, history)
    pending = [config for config in live if request.track and decisions[config.id].in_experiment
               and config.id not in history]
    if pending:
        inserted = _insert(session, pending, decisions, request)
        lost = {config.id for config in pending} - inserted.keys()
        if lost:  # another request stored this unit first: its variant wins
            won = _stored(session, request.unit_id, lost)
            read.update(won)
            _use_history(snapshot, live, decisions, won)
        session.commit()
        EXPOSURES_RECORDED.inc(len(inserted))
        read.update(inserted)
    if read:
        cache.remember(request.unit_id, read)


def _ids_to_check(snapshot: ConfigSnapshot, live: list[ExperimentConfig],
                  decisions: Mapping[int, Decision]) -> set[int]:
    """This request's running experiments plus the layer mates that could exclude the unit."""
    wanted = {config.id for config in live}
    for config in live:
        if config.layer is not None and decisions[config.id].in_experiment:
            wanted.update(snapshot.layer_members.get(config.layer, ()))
    return wanted


def _use_history(snapshot: ConfigSnapshot, live: list[ExperimentConfig],
                 decisions: dict[int, Decision], history: Mapping[int, str]) -> None:
    for config in live:
        decision = decisions[config.id]
        if decision.reason == "override":
            continue
        stored = history.get(config.id)
        if stored is not None:
            variant = config.variant(stored) or VariantConfig(stored, 0.0, False, {})
            decisions[config.id] = Decision(variant, True, "assigned")
        elif decision.in_experiment and config.layer is not None and any(
            mate in history for mate in snapshot.layer_members.get(config.layer, ())
            if mate != config.id
        ):
            decisions[config.id] = Decision(config.control, False, "layer")


def _stored(session: Session, unit_id: str, experiment_ids: set[int]) -> dict[int, str]:
    """Committed exposures of this unit, by experiment id."""
    rows = session.execute(
        select(_EXPOSURES.c.experiment_id, _EXPOSURES.c.variant_key).where(
            _EXPOSURES.c.unit_id == unit_id,
            _EXPOSURES.c.experiment_id.in_(sorted(experiment_ids)))
    )
    return {row.experiment_id: row.variant_key for row in rows}


def _insert(session: Session, pending: list[ExperimentConfig], decisions: Mapping[int, Decision],
            request: _Request) -> dict[int, str]:
    """Insert first exposures; returns those this request stored (the others already existed)."""
    exposed_at = request.now or utcnow()
    snapshot = dict(request.attributes)
    rows = [{"experiment_id": config.id, "unit_id": request.unit_id,
             "variant_key": decisions[config.id].variant.key, "exposed_at": exposed_at,
             "attributes": snapshot, "is_override": decisions[config.id].reason == "override"}
            for config in pending]
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = (insert(_EXPOSURES).values(rows)
                 .on_conflict_do_nothing(index_elements=["experiment_id", "unit_id"])
                 .returning(_EXPOSURES.c.experiment_id, _EXPOSURES.c.variant_key))
    return {row.experiment_id: row.variant_key for row in session.execute(statement)}
