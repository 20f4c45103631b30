"""Which variant a unit sees (SPEC §4): a pure, deterministic decision plus sticky exposures.

The decision (:func:`decide`) reads only the cached configuration: forced overrides,
targeting, the unit's slice of its layer, traffic inclusion and the variant split,
each from MurmurHash3 of fixed strings so every host and Python version agrees.
:func:`assign` then applies history: a stored exposure always wins, and the first
exposure is inserted (``ON CONFLICT DO NOTHING``) and committed before returning
(how, in as few round trips as possible: :mod:`experiments.services.exposures`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from mmh3 import hash as mmh3_hash
from prometheus_client import Counter
from sqlalchemy.orm import Session

from experiments.db import utcnow
from experiments.errors import NotFound
from experiments.schemas.assignment import Reason
from experiments.services.clock import exposure_time
from experiments.services.config_cache import (
    HASH_SPACE,
    ConfigCache,
    ConfigSnapshot,
    Decision,
    ExperimentConfig,
    VariantConfig,
    cache_for,
)
from experiments.services.exposures import FirstExposure, UnitWrite, store_for
from experiments.services.holdouts import HoldoutConfig
from experiments.services.identity import cluster_exposures
from experiments.services.targeting import Condition, matches

REASONS: tuple[str, ...] = get_args(Reason)
# Seeds of the three independent hashes (docs/developers/assignment.md; never change them).
INCLUSION_SEED = 1
SPLIT_SEED = 2
LAYER_SEED = 3
# Statuses in which a holdout unit is answered ``holdout`` (control, even over a shipped winner).
_HELD_STATUSES = ("running", "concluded")

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
           now: datetime | None = None, occurred_at: datetime | None = None,
           sent_at: datetime | None = None, user_id: str | None = None) -> list[Assignment]:
    """Assign a unit to the named (default: every running) experiment; commits exposures.

    A first exposure is dated ``occurred_at`` (client clock) corrected by ``sent_at``
    and clamped (:func:`~experiments.services.clock.exposure_time`), else ``now``.
    With ``user_id`` (SPEC §14) the customer's cluster is the unit: a variant stored for
    any of its ids wins, and a new one is decided for and stored under the user id.
    """
    attrs = attributes or {}
    cache = cache_for(session)
    snapshot = cache.snapshot(session)
    targets = _targets(snapshot, experiment_keys)
    decided = unit_id if user_id is None else user_id
    decisions, groups = decide_all(snapshot, [config for _, config in targets if config],
                                   decided, attrs)
    request = _Request(unit_id, attrs, track, now, occurred_at, sent_at, user_id)
    live = [config for _, config in targets if config is not None and config.status == "running"]
    if groups:  # a round trip only for a measured unit's first time on this worker
        live = [config for config in live if decisions[config.id].reason != "holdout"]
        if track:
            _store_holdout_exposures(session, cache, groups, request)
    if live:
        _apply_history(session, cache, snapshot, live, decisions, request)
    results = [_result(key, config, decisions) for key, config in targets]
    for result in results:
        _COUNT_BY_REASON[result.reason].inc()
    return results


def record_exposure(session: Session, *, experiment_key: str, unit_id: str,
                    attributes: Mapping[str, Any] | None = None,
                    now: datetime | None = None, occurred_at: datetime | None = None,
                    sent_at: datetime | None = None, user_id: str | None = None) -> Assignment:
    """Record the exposure of a unit assigned earlier with ``track: false`` (404 if unknown)."""
    result = assign(session, unit_id=unit_id, attributes=attributes,
                    experiment_keys=[experiment_key], track=True, now=now,
                    occurred_at=occurred_at, sent_at=sent_at, user_id=user_id)[0]
    if result.reason == "not_found":
        raise NotFound(f"no experiment with key {experiment_key!r}")
    return result


@dataclass(frozen=True, slots=True)
class _Request:
    unit_id: str
    attributes: Mapping[str, Any]
    track: bool
    now: datetime | None
    occurred_at: datetime | None = None
    sent_at: datetime | None = None
    user_id: str | None = None  # SPEC §14: the cluster is the unit, stored as the user id


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
    PostgreSQL one statement that inserts the first exposures and returns the rows that
    already existed, shared with concurrent requests of this process (SQLite: the
    INSERT, then a SELECT only for conflicts); and one SELECT first when history could
    change the answer without a write (excluded units, ``track: false``, layer mates).

    With a user id, one indexed SELECT reads the whole cluster's exposures instead of the
    process cache (a link made on another host would not be in it). New exposures are
    stored under the user id, so concurrent devices of one customer race on the unique
    (experiment, unit) key and every one of them reads back the single winner.
    """
    wanted = _ids_to_check(snapshot, live, decisions)
    if request.user_id is None:
        history = cache.known_exposures(request.unit_id, wanted)
        unknown = wanted - history.keys()
    else:
        history = cluster_exposures(session, request.unit_id, request.user_id, wanted)
        unknown = set()  # read whole: only first exposures may remain to store
    writes = {config.id for config in live if request.track and decisions[config.id].in_experiment}
    if not unknown and request.user_id is None:
        _use_history(snapshot, live, decisions, history)
        return
    store = store_for(session)
    read: dict[int, str] = {}
    if unknown - writes:
        read = store.read(request.unit_id, unknown)
        history.update(read)
    _use_history(snapshot, live, decisions, history)
    pending = [config for config in live if config.id in writes and config.id not in history]
    inserted: dict[int, str] = {}
    if pending:
        inserted, existing = store.insert(_first_exposures(pending, decisions, request))
        _use_history(snapshot, live, decisions, existing)  # another request stored it first
        read.update(existing)
    store.commit()
    EXPOSURES_RECORDED.inc(len(inserted))
    read.update(inserted)
    if read and request.user_id is None:
        cache.remember(request.unit_id, read)


def decide_all(snapshot: ConfigSnapshot, configs: Sequence[ExperimentConfig], unit_id: str,
               attributes: Mapping[str, Any]
               ) -> tuple[dict[int, Decision], dict[HoldoutConfig, str]]:
    """Every experiment's decision for a unit with no history, holdouts applied, and the
    unit's group in each covering holdout: all in memory, from the cached configuration."""
    decisions = {config.id: decide(config, unit_id, attributes) for config in configs}
    if not snapshot.holdouts_of:  # no running holdout: nothing more to pay
        return decisions, {}
    groups = _holdout_groups(snapshot, configs, unit_id)
    if groups:
        _hold_out(snapshot, configs, decisions, groups)
    return decisions, groups


def _holdout_groups(snapshot: ConfigSnapshot, configs: Sequence[ExperimentConfig],
                    unit_id: str) -> dict[HoldoutConfig, str]:
    """This unit's group in each running holdout covering one of the experiments."""
    groups: dict[HoldoutConfig, str] = {}
    for config in configs:
        if config.status in _HELD_STATUSES:
            for holdout in snapshot.holdouts_of.get(config.id, ()):
                if holdout not in groups:
                    groups[holdout] = holdout.group(unit_id)
    return groups


def _hold_out(snapshot: ConfigSnapshot, configs: Sequence[ExperimentConfig],
              decisions: dict[int, Decision], groups: Mapping[HoldoutConfig, str]) -> None:
    """A covering holdout's ``holdout`` units see control and are recorded nowhere: before
    every check but overrides, stored exposures and shipped winners included (SPEC §12)."""
    for config in configs:
        if (config.status in _HELD_STATUSES
                and decisions[config.id].reason != "override"
                and any(groups[holdout] == "holdout"
                        for holdout in snapshot.holdouts_of.get(config.id, ()))):
            decisions[config.id] = Decision(config.control, False, "holdout")


def _store_holdout_exposures(session: Session, cache: ConfigCache,
                             groups: Mapping[HoldoutConfig, str], request: _Request) -> None:
    """Store the first holdout exposure of a ``holdout``/``measure`` unit, durably, once.

    The cache of known exposures remembers them under the holdout's negated id
    (experiment ids are positive), so a returning unit costs no round trip.
    """
    unit = request.user_id or request.unit_id  # hashed and stored as the decision was
    measured = {-holdout.id: group for holdout, group in groups.items() if group != "general"}
    if not measured:
        return
    known = cache.known_exposures(unit, measured)
    new = {key: group for key, group in measured.items() if key not in known}
    if not new:
        return
    received = request.now or utcnow()
    store = store_for(session)
    store.insert_holdout_exposures(
        unit, {-key: group for key, group in new.items()},
        exposure_time(request.occurred_at, request.sent_at, received, None))
    store.commit()
    cache.remember(unit, new)


def _first_exposures(pending: list[ExperimentConfig], decisions: Mapping[int, Decision],
                     request: _Request) -> UnitWrite:
    received = request.now or utcnow()
    exposures = tuple(FirstExposure(config.id, decisions[config.id].variant.key,
                                    decisions[config.id].reason == "override",
                                    _exposed_at(request, received, config.started_at))
                      for config in pending)
    return UnitWrite(request.unit_id if request.user_id is None else request.user_id, exposures,
                     received, request.attributes, request.occurred_at)


def _exposed_at(request: _Request, received: datetime, started_at: datetime | None
                ) -> datetime | None:
    """This experiment's exposure time, or None when it is simply the received time."""
    when = exposure_time(request.occurred_at, request.sent_at, received, started_at)
    return None if when == received else when


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
    if not history:  # nothing stored: the decisions stand
        return
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
