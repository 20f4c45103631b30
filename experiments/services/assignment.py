"""Which variant a unit sees (SPEC §4): a pure, deterministic decision plus sticky exposures.

The decision (:func:`decide`) reads only the cached configuration: forced overrides,
targeting, the unit's slice of its layer, traffic inclusion and the variant split,
each from MurmurHash3 of fixed strings so every host and Python version agrees.
:func:`assign` then applies history: a stored exposure always wins, and the first
exposure is inserted (``ON CONFLICT DO NOTHING``) and committed before returning.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mmh3 import hash as mmh3_hash
from prometheus_client import Counter
from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from experiments.db import utcnow
from experiments.errors import NotFound
from experiments.models import Exposure
from experiments.services.config_cache import (
    HASH_SPACE,
    ConfigCache,
    ConfigSnapshot,
    Decision,
    ExperimentConfig,
    VariantConfig,
    cache_for,
)
from experiments.services.targeting import Condition, matches

REASONS = ("assigned", "override", "traffic", "targeting", "layer", "not_running", "concluded",
           "not_found")
# Seeds of the three independent hashes (documented in the README; never change them).
INCLUSION_SEED = 1
SPLIT_SEED = 2
LAYER_SEED = 3
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


# --- the pure decision ----------------------------------------------------------------------

def unit_hash(text: str, seed: int) -> float:
    """MurmurHash3 (x86, 32-bit) of the UTF-8 text, mapped to [0, 1): the same everywhere."""
    return mmh3_hash(text, seed, signed=False) / HASH_SPACE


def decide(config: ExperimentConfig, unit_id: str,
           attributes: Mapping[str, Any]) -> Decision:
    """Status → override → targeting → layer → traffic → split, for a unit with no history.

    Thresholds are compared in hash space (``hash < traffic × 2³²``), which is exactly
    ``hash / 2³² < traffic``: the documented [0, 1) scheme without a division per call.
    """
    if config.status != "running":
        return config.fallback
    if config.overrides:
        forced = config.overrides.get(unit_id)
        if forced is not None:
            variant = config.variant(forced)
            if variant is not None:
                return Decision(variant, True, "override")
    if config.targeting and not matches(config.targeting, attributes):
        return config.excluded["targeting"]
    if config.layer_slot is not None and not in_layer_slot(config, unit_id):
        return config.excluded["layer"]
    hashed = config.salt + ":" + unit_id
    if mmh3_hash(hashed, INCLUSION_SEED, signed=False) >= config.traffic_cut:
        return config.excluded["traffic"]
    point = mmh3_hash(hashed, SPLIT_SEED, signed=False)
    # point < 2³² = bounds[-1], so the index always names a variant.
    return config.assigned[bisect_right(config.bounds, point)]


def in_layer_slot(config: ExperimentConfig, unit_id: str) -> bool:
    """Whether floor(layer hash / 2³² × count) is this experiment's slice index (exact ints)."""
    assert config.layer_slot is not None
    index, count = config.layer_slot
    point = mmh3_hash(f"{config.layer}:{unit_id}", LAYER_SEED, signed=False) * count
    return index * HASH_SPACE <= point < (index + 1) * HASH_SPACE


def condition_holds(condition: Condition, attributes: Mapping[str, Any]) -> bool:
    """One targeting rule against a unit's attributes (semantics in ``services.targeting``)."""
    return condition.test(attributes.get(condition.attribute))


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

    Round trips: none for units whose exposures this worker has already seen; on
    PostgreSQL one INSERT … ON CONFLICT DO NOTHING that also returns the rows that
    already existed (SQLite: the INSERT, then a SELECT only for conflicts); and one
    SELECT first when history could change the answer without a write (excluded
    units, ``track: false``, layer mates).
    """
    wanted = _ids_to_check(snapshot, live, decisions)
    history = cache.known_exposures(request.unit_id, wanted)
    unknown = wanted - history.keys()
    store = _ExposureStore(session)
    read: dict[int, str] = {}
    writes = {config.id for config in live if request.track and decisions[config.id].in_experiment}
    if unknown - writes:
        read = store.read(request.unit_id, unknown)
        history.update(read)
    _use_history(snapshot, live, decisions, history)
    pending = [config for config in live if request.track and decisions[config.id].in_experiment
               and config.id not in history]
    if pending:
        inserted, existing = store.insert(pending, decisions, request)
        _use_history(snapshot, live, decisions, existing)  # another request stored it first
        store.commit()
        EXPOSURES_RECORDED.inc(len(inserted))
        read.update(existing)
        read.update(inserted)
    elif store.used:
        store.commit()
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


_POSTGRES_INSERT = text("""
WITH inserted AS (
    INSERT INTO exposures (experiment_id, unit_id, variant_key, exposed_at, attributes,
                           is_override)
    SELECT t.experiment_id, :unit_id, t.variant_key, :exposed_at, CAST(:attributes AS JSONB),
           t.is_override
    FROM unnest(CAST(:experiment_ids AS INTEGER[]), CAST(:variant_keys AS VARCHAR[]),
                CAST(:is_overrides AS BOOLEAN[])) AS t(experiment_id, variant_key, is_override)
    ON CONFLICT (experiment_id, unit_id) DO NOTHING
    RETURNING experiment_id, variant_key)
SELECT experiment_id, variant_key, TRUE AS is_new FROM inserted
UNION ALL
SELECT experiment_id, variant_key, FALSE FROM exposures
WHERE unit_id = :unit_id AND experiment_id = ANY(CAST(:experiment_ids AS INTEGER[]))
""")


class _ExposureStore:
    """Reads and first-exposure writes for one assignment, in as few round trips as possible.

    On PostgreSQL, when the caller's session holds no transaction or pending changes, the
    statements run in autocommit: each is durable when it returns, and no BEGIN/COMMIT
    round trips are spent. Otherwise they join the caller's transaction, which is committed.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.postgres = session.get_bind().dialect.name == "postgresql"
        self.used = False
        self._connection: Connection | None = None

    def _conn(self) -> Connection | Session:
        self.used = True
        if not self.postgres:
            return self.session
        if self._connection is None:
            session = self.session
            idle = not session.in_transaction() and not (
                session.new or session.dirty or session.deleted)
            options = {"isolation_level": "AUTOCOMMIT"} if idle else {}
            self._connection = session.connection(execution_options=options)
        return self._connection

    def read(self, unit_id: str, experiment_ids: set[int]) -> dict[int, str]:
        """Committed exposures of this unit, by experiment id."""
        rows = self._conn().execute(
            select(_EXPOSURES.c.experiment_id, _EXPOSURES.c.variant_key).where(
                _EXPOSURES.c.unit_id == unit_id,
                _EXPOSURES.c.experiment_id.in_(sorted(experiment_ids)))
        )
        return {row.experiment_id: row.variant_key for row in rows}

    def insert(self, pending: list[ExperimentConfig], decisions: Mapping[int, Decision],
               request: _Request) -> tuple[dict[int, str], dict[int, str]]:
        """Insert first exposures: (variants this request stored, variants already stored)."""
        variants = [decisions[config.id].variant.key for config in pending]
        overrides = [decisions[config.id].reason == "override" for config in pending]
        ids = [config.id for config in pending]
        exposed_at = request.now or utcnow()
        if self.postgres:
            inserted, existing = self._insert_postgres(ids, variants, overrides, exposed_at,
                                                       request)
        else:
            inserted, existing = self._insert_sqlite(ids, variants, overrides, exposed_at,
                                                     request), {}
        lost = set(ids) - inserted.keys() - existing.keys()
        if lost:  # committed by a concurrent request after this statement began
            existing.update(self.read(request.unit_id, lost))
        return inserted, existing

    def _insert_postgres(self, ids: list[int], variants: list[str], overrides: list[bool],
                         exposed_at: datetime, request: _Request
                         ) -> tuple[dict[int, str], dict[int, str]]:
        inserted: dict[int, str] = {}
        existing: dict[int, str] = {}
        rows = self._conn().execute(_POSTGRES_INSERT, {
            "unit_id": request.unit_id, "exposed_at": exposed_at,
            "attributes": json.dumps(dict(request.attributes)), "experiment_ids": ids,
            "variant_keys": variants, "is_overrides": overrides})
        for experiment_id, variant_key, is_new in rows:
            (inserted if is_new else existing)[experiment_id] = variant_key
        return inserted, existing

    def _insert_sqlite(self, ids: list[int], variants: list[str], overrides: list[bool],
                       exposed_at: datetime, request: _Request) -> dict[int, str]:
        attributes = dict(request.attributes)
        rows = [{"experiment_id": experiment_id, "unit_id": request.unit_id,
                 "variant_key": variant, "exposed_at": exposed_at, "attributes": attributes,
                 "is_override": override}
                for experiment_id, variant, override in zip(ids, variants, overrides,
                                                            strict=True)]
        statement = (sqlite_insert(_EXPOSURES).values(rows)
                     .on_conflict_do_nothing(index_elements=["experiment_id", "unit_id"])
                     .returning(_EXPOSURES.c.experiment_id, _EXPOSURES.c.variant_key))
        return {row.experiment_id: row.variant_key for row in self._conn().execute(statement)}

    def commit(self) -> None:
        """Make the exposures durable (a no-op round trip-wise in autocommit)."""
        self.session.commit()
