"""In-process cache of every experiment's assignment configuration (the hot path's only read).

Each worker keeps one immutable :class:`ConfigSnapshot` per database engine. It is
re-validated at most every ``CONFIG_REFRESH_S`` seconds with one cheap aggregate
query (count, sum of versions, latest ``updated_at``), so a change made on another
worker is seen within that interval; a commit that touched an experiment in *this*
process invalidates the snapshot at once (SQLAlchemy session events).

The cache also remembers exposures it has seen committed: an exposure is immutable
once stored, so a returning unit needs no database round trip at all.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session

from experiments.models import AllocationPeriod, Experiment, Holdout, Variant
from experiments.services.holdouts import HoldoutConfig, load_running
from experiments.services.targeting import Condition, compile_condition

DEFAULT_REFRESH_S = 2.0
KNOWN_EXPOSURES_MAX = 200_000
HASH_SPACE = 2 ** 32  # hashes are unsigned 32-bit; h / HASH_SPACE is the point in [0, 1)
# Statuses whose experiments hold a slice of their layer (a pause keeps the slice).
_LAYER_HOLDERS = ("running", "paused")


@dataclass(frozen=True, slots=True)
class VariantConfig:
    """One arm as assignment needs it."""

    key: str
    weight: float
    is_control: bool
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    """What a unit sees in one experiment, before history (stored exposures) is applied."""

    variant: VariantConfig
    in_experiment: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ExperimentConfig:
    """Everything the pure assignment decision reads about one experiment, precomputed."""

    id: int
    key: str
    status: str
    salt: str
    traffic: float
    targeting: tuple[Condition, ...]
    layer: str | None
    # (index, count) of this experiment's slice of its layer, None when it holds none.
    layer_slot: tuple[int, int] | None
    overrides: Mapping[str, str]
    variants: tuple[VariantConfig, ...]
    control: VariantConfig
    # The answer for everyone when not running: control, or the shipped winner once concluded.
    fallback: Decision
    # Hash-space thresholds: included iff hash < traffic_cut; variant i iff hash < bounds[i].
    traffic_cut: float
    bounds: tuple[float, ...]
    assigned: tuple[Decision, ...]
    excluded: Mapping[str, Decision]
    # No exposure is dated before this (clock-skew correction floors there).
    started_at: datetime | None = None

    def variant(self, key: str) -> VariantConfig | None:
        """The variant with this key (stored exposures name variants by key)."""
        return next((variant for variant in self.variants if variant.key == key), None)


@dataclass(frozen=True)
class ConfigSnapshot:
    """All experiments at one moment, indexed the ways assignment looks them up."""

    by_key: Mapping[str, ExperimentConfig] = field(default_factory=dict)
    running: tuple[ExperimentConfig, ...] = ()
    # layer -> ids of the experiments holding a slice of it (running or paused).
    layer_members: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # experiment id -> the running holdouts covering it (absent: none, the common case).
    holdouts_of: Mapping[int, tuple[HoldoutConfig, ...]] = field(default_factory=dict)


def load_snapshot(session: Session) -> ConfigSnapshot:
    """Read every experiment, variant and current bandit weight period (column queries only)."""
    variants: dict[int, list[VariantConfig]] = defaultdict(list)
    for row in session.execute(
        select(Variant.experiment_id, Variant.key, Variant.weight, Variant.is_control,
               Variant.payload).order_by(Variant.experiment_id, Variant.position)
    ):
        variants[row.experiment_id].append(
            VariantConfig(row.key, float(row.weight), bool(row.is_control), row.payload or {}))
    for experiment_id, weights in _bandit_weights(session).items():
        variants[experiment_id] = [replace(v, weight=float(weights.get(v.key, 0.0)))
                                   for v in variants[experiment_id]]
    rows = session.execute(
        select(Experiment.id, Experiment.key, Experiment.status, Experiment.salt,
               Experiment.traffic, Experiment.targeting, Experiment.layer, Experiment.overrides,
               Experiment.outcome, Experiment.winner, Experiment.started_at,
               Experiment.created_at).order_by(Experiment.id)
    ).all()
    slots = _layer_slots(rows)
    configs = [_experiment_config(row, variants[row.id], slots.get(row.id))
               for row in rows if variants[row.id]]
    members: dict[str, list[int]] = defaultdict(list)
    for config in configs:
        if config.layer_slot is not None and config.layer is not None:
            members[config.layer].append(config.id)
    holdouts = load_running(session)
    covering = {config.id: tuple(holdout for holdout in holdouts
                                 if holdout.covers(config.key, config.layer))
                for config in configs} if holdouts else {}
    return ConfigSnapshot(
        by_key={config.key: config for config in configs},
        running=tuple(config for config in configs if config.status == "running"),
        layer_members={layer: tuple(ids) for layer, ids in members.items()},
        holdouts_of={id_: found for id_, found in covering.items() if found},
    )


def _bandit_weights(session: Session) -> dict[int, dict[str, float]]:
    """The current weight period of every bandit (SPEC §13): new units follow these."""
    latest = (select(AllocationPeriod.experiment_id, func.max(AllocationPeriod.period).label("p"))
              .group_by(AllocationPeriod.experiment_id).subquery())
    rows = session.execute(select(AllocationPeriod.experiment_id, AllocationPeriod.weights)
                           .join(latest, (AllocationPeriod.experiment_id == latest.c.experiment_id)
                                 & (AllocationPeriod.period == latest.c.p)))
    return {row.experiment_id: row.weights for row in rows}


def _layer_slots(rows: Iterable[Any]) -> dict[int, tuple[int, int]]:
    """Equal slices of each layer, in start order, for the experiments holding one."""
    by_layer: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        if row.layer and row.status in _LAYER_HOLDERS:
            by_layer[row.layer].append(row)
    slots: dict[int, tuple[int, int]] = {}
    for members in by_layer.values():
        members.sort(key=lambda row: (row.started_at or row.created_at, row.id))
        for index, row in enumerate(members):
            slots[row.id] = (index, len(members))
    return slots


def _experiment_config(row: Any, variants: list[VariantConfig],
                       slot: tuple[int, int] | None) -> ExperimentConfig:
    return experiment_config(
        id=row.id, key=row.key, salt=row.salt, variants=variants, status=row.status,
        traffic=float(row.traffic), targeting=row.targeting or (), layer=row.layer,
        layer_slot=slot, overrides=row.overrides or {}, outcome=row.outcome, winner=row.winner,
        started_at=row.started_at)


def experiment_config(*, id: int, key: str, salt: str, variants: Sequence[VariantConfig],
                      status: str = "running", traffic: float = 1.0,
                      targeting: Iterable[Mapping[str, Any]] = (), layer: str | None = None,
                      layer_slot: tuple[int, int] | None = None,
                      overrides: Mapping[str, str] | None = None, outcome: str | None = None,
                      winner: str | None = None, started_at: datetime | None = None
                      ) -> ExperimentConfig:
    """Build the assignment view of an experiment (also used by tests and benchmarks)."""
    variants = tuple(variants)
    control = next((variant for variant in variants if variant.is_control), variants[0])
    shipped = next((variant for variant in variants if variant.key == winner), None)
    if status == "concluded":
        final = shipped if outcome == "ship" and shipped is not None else control
        fallback = Decision(final, False, "concluded")
    else:
        fallback = Decision(control, False, "not_running")
    return ExperimentConfig(
        id=id, key=key, status=status, salt=salt, traffic=traffic,
        targeting=tuple(compile_condition(rule) for rule in targeting),
        layer=layer, layer_slot=layer_slot if layer is not None else None,
        overrides=dict(overrides or {}), variants=variants, control=control,
        fallback=fallback, traffic_cut=traffic * HASH_SPACE,
        bounds=tuple(bound * HASH_SPACE for bound in _cumulative(variants)),
        assigned=tuple(Decision(variant, True, "assigned") for variant in variants),
        excluded={reason: Decision(control, False, reason)
                  for reason in ("targeting", "layer", "traffic")},
        started_at=started_at,
    )


def _cumulative(variants: Sequence[VariantConfig]) -> tuple[float, ...]:
    """Upper bounds of each variant's share of [0, 1), in declared order; the last is 1.0."""
    total = sum(max(variant.weight, 0.0) for variant in variants)
    if total <= 0:  # refused on write; everyone gets the first arm rather than an error
        return tuple(1.0 for _ in variants)
    bounds, running = [], 0.0
    for variant in variants:
        running += max(variant.weight, 0.0)
        bounds.append(running / total)
    bounds[-1] = 1.0  # no float rounding can leave a hash above every bound
    return tuple(bounds)


def _fingerprint(session: Session) -> tuple[Any, ...]:
    """Changes whenever an experiment or a holdout is created, deleted or updated."""
    row = session.execute(
        select(func.count(Experiment.id), func.coalesce(func.sum(Experiment.version), 0),
               func.max(Experiment.id), func.max(Experiment.updated_at),
               select(func.count(Holdout.id)).scalar_subquery(),
               select(func.max(Holdout.updated_at)).scalar_subquery())
    ).one()
    return tuple(row)


# --- invalidation on the worker that made the change --------------------------------------

_generation = 0
_DIRTY_FLAG = "parcours.experiments_changed"


@event.listens_for(Session, "after_flush")
def _note_experiment_changes(session: Session, _context: Any) -> None:
    for instance in (*session.new, *session.dirty, *session.deleted):
        if isinstance(instance, Experiment | Variant | Holdout):
            session.info[_DIRTY_FLAG] = True
            return


@event.listens_for(Session, "after_commit")
def _invalidate_after_commit(session: Session) -> None:
    global _generation
    if session.info.pop(_DIRTY_FLAG, False):
        _generation += 1


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_DIRTY_FLAG, None)


class ConfigCache:
    """The snapshot of one database plus the exposures known to be committed in it."""

    def __init__(self, refresh_s: float = DEFAULT_REFRESH_S) -> None:
        self.refresh_s = refresh_s
        self._snapshot: ConfigSnapshot | None = None
        self._fingerprint: tuple[Any, ...] | None = None
        self._checked_at = float("-inf")
        self._generation = -1
        self._lock = threading.Lock()
        self._known: dict[tuple[int, str], str] = {}

    def snapshot(self, session: Session) -> ConfigSnapshot:
        """The current configuration, re-validated when due or invalidated."""
        snapshot = self._fresh()
        if snapshot is not None:
            return snapshot
        with self._lock:  # one thread re-validates; those queued behind it use its result
            snapshot = self._fresh()
            if snapshot is not None:
                return snapshot
            generation = _generation
            fingerprint = _fingerprint(session)
            if self._snapshot is None or fingerprint != self._fingerprint:
                self._snapshot = load_snapshot(session)
                self._fingerprint = fingerprint
            self._checked_at = time.monotonic()
            self._generation = generation
            return self._snapshot

    def _fresh(self) -> ConfigSnapshot | None:
        """The snapshot while no re-validation is due, else None."""
        snapshot = self._snapshot
        if (snapshot is not None and self._generation == _generation
                and time.monotonic() - self._checked_at < self.refresh_s):
            return snapshot
        return None

    def known_exposures(self, unit_id: str, experiment_ids: Iterable[int]) -> dict[int, str]:
        """Variants of this unit already known to be stored, by experiment id."""
        known = self._known
        found = {}
        for experiment_id in experiment_ids:
            variant = known.get((experiment_id, unit_id))
            if variant is not None:
                found[experiment_id] = variant
        return found

    def remember(self, unit_id: str, exposures: Mapping[int, str]) -> None:
        """Record committed exposures; bounded memory by starting over when full."""
        if len(self._known) + len(exposures) > KNOWN_EXPOSURES_MAX:
            self._known = {}
        for experiment_id, variant in exposures.items():
            self._known[(experiment_id, unit_id)] = variant


_caches: weakref.WeakKeyDictionary[Engine, ConfigCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def cache_for(session: Session) -> ConfigCache:
    """The cache of the database this session talks to (one per engine, so per app)."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    cache = _caches.get(engine)
    if cache is None:
        cache = configure_cache(engine, DEFAULT_REFRESH_S)
    return cache


def configure_cache(engine: Engine, refresh_s: float) -> ConfigCache:
    """Create the cache of ``engine`` with its refresh interval (the app does at start-up;
    other engines get the default on first use)."""
    with _caches_lock:
        cache = _caches.get(engine)
        if cache is None:
            cache = _caches[engine] = ConfigCache(refresh_s)
        return cache
