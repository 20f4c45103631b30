"""Realistic journey traffic for demos and analysis tests (``flask simulate``).

Every simulated unit goes through the same services the API uses: it is assigned
(and exposed) by :func:`assignment.assign` at a time spread over the last ``days``
days, walks the experiment's journey with per-variant drop-off, hits friction at
steps, converts with revenue and sometimes answers NPS; its events go through
:func:`events.ingest_events` in chunks. Known true effects make the analysis
testable:

- conversion (reaching the last step, then the primary metric's event) happens with
  probability exactly ``base_conversion × (1 + effects[variant])``;
- ``friction[(variant, step, kind)]`` adds that absolute probability of a ``kind``
  friction event to every unit of ``variant`` that reaches ``step``;
- ``attribute_mix`` gives each visitor attributes (``{"device": {"mobile": 0.6, …}}``:
  each level's share), drawn from a hash of the unit id, so a unit keeps its levels in
  every run and no other draw moves; ``attributes`` adds fixed ones (and wins);
- ``segment_effects[(attribute, level)][variant]`` replaces ``effects[variant]`` for the
  visitors of that level (a treatment that helps only some customers, SPEC §11);
- ``split`` forces the traffic split (e.g. a sample-ratio mismatch) by choosing
  which units arrive, still assigned deterministically by ``assign``;
- ``skewed_share`` of the browsers have a clock off by seconds to hours and send
  ``occurred_at``/``sent_at`` like the SDK, so the server's clock-skew correction is
  exercised (their exposures and events are sent one unit at a time, at their time).

Exposures are spread over the last ``days`` days, but never before the experiment
started: a new experiment's lift chart starts on its first day.

Unit and event ids derive from the experiment key and the seed, so a rerun with the
same seed stores nothing new (exposures are sticky, events are deduplicated).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.orm import Session
from tqdm import tqdm

from experiments.db import utcnow
from experiments.schemas import FRICTION_KINDS
from experiments.services.assignment import assign, decide
from experiments.services.config_cache import ExperimentConfig, cache_for
from experiments.services.events import ingest_events
from experiments.services.lifecycle import get_experiment

CHUNK_UNITS = 500
# Baseline chance of each friction kind at any visited step (realistic, small).
BASE_FRICTION = {"error": 0.01, "form_error": 0.015, "rage_click": 0.01, "dead_click": 0.01,
                 "slow_step": 0.02, "back_navigation": 0.03, "retry": 0.01,
                 "support_contact": 0.005}
# Units who leave at a step report it as abandonment (or bounce on the first step) this often.
ABANDONMENT_REPORTED = 0.5
# Exposures end this long before the window's end so that every event stays inside it.
SESSION_MARGIN = timedelta(hours=1)
_CONVERSION_KINDS = ("conversion", "mean", "count", "time_to_convert")


def _valid_lift(lift: float) -> bool:
    return math.isfinite(lift) and lift >= -1


def _valid_shares(shares: Mapping[str, float]) -> bool:
    return bool(shares) and all(math.isfinite(share) and share >= 0
                                for share in shares.values()) and sum(shares.values()) > 0


@dataclass(frozen=True)
class SimulationPlan:
    """What to simulate; see the module docstring for how each knob acts."""

    units: int
    seed: int = 0
    days: int = 14
    effects: Mapping[str, float] = field(default_factory=dict)
    friction: Mapping[tuple[str, str, str], float] = field(default_factory=dict)
    split: Mapping[str, float] | None = None
    base_conversion: float = 0.10
    nps_rate: float = 0.2
    start: datetime | None = None  # the end of the window; default now
    skewed_share: float = 0.1  # browsers with a wrong clock, sending sent_at
    attributes: Mapping[str, Any] = field(default_factory=dict)  # sent with every assignment
    attribute_mix: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    segment_effects: Mapping[tuple[str, str], Mapping[str, float]] = field(default_factory=dict)

    def unit_attributes(self, unit_id: str) -> dict[str, Any]:
        """The attributes ``unit_id`` sends: its levels of ``attribute_mix``, then the fixed
        ``attributes``. A hash of the unit id picks the levels (the same in every run)."""
        drawn = {}
        for name, shares in self.attribute_mix.items():
            digest = hashlib.sha256(f"{self.seed}:{name}:{unit_id}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") / 2**64 * sum(shares.values())
            for level, share in shares.items():
                drawn[name] = level
                point -= share
                if point < 0:
                    break
        return {**drawn, **self.attributes}

    def conversion_rate(self, variant: str, attributes: Mapping[str, Any]) -> float:
        """The probability that a unit with ``attributes`` in ``variant`` converts: the base
        rate times the true effect, a segment's (``segment_effects``) when one of its levels
        has one."""
        lift = self.effects.get(variant, 0.0)
        for (name, level), lifts in self.segment_effects.items():
            if attributes.get(name) == level and variant in lifts:
                lift = lifts[variant]
                break
        return min(0.95, max(0.0, self.base_conversion * (1 + lift)))

    def __post_init__(self) -> None:
        if self.units < 0:
            raise ValueError("units must be ≥ 0")
        if self.days <= 0:
            raise ValueError("days must be > 0")
        if not 0 < self.base_conversion < 1:
            raise ValueError("base_conversion must be in (0, 1)")
        if not 0 <= self.nps_rate <= 1:
            raise ValueError("nps_rate must be in [0, 1]")
        if not 0 <= self.skewed_share <= 1:
            raise ValueError("skewed_share must be in [0, 1]")
        if self.split is not None and not _valid_shares(self.split):
            raise ValueError("split needs non-negative shares summing to more than 0")
        for variant, lift in self.effects.items():
            if not _valid_lift(lift):
                raise ValueError(f"effect of {variant!r} must be a finite lift ≥ -1")
        for name, shares in self.attribute_mix.items():
            if not _valid_shares(shares):
                raise ValueError(f"attribute_mix[{name!r}] needs non-negative shares summing"
                                 " to more than 0")
        for (name, level), lifts in self.segment_effects.items():
            if level not in self.attribute_mix.get(name, {}):
                raise ValueError(f"segment effect for {name}={level!r}: not in attribute_mix")
            for variant, lift in lifts.items():
                if not _valid_lift(lift):
                    raise ValueError(f"effect of {variant!r} at {name}={level!r} must be a"
                                     " finite lift ≥ -1")
        for key, extra in self.friction.items():
            if key[2] not in FRICTION_KINDS or not 0 <= extra <= 1:
                raise ValueError(f"friction {key!r}: unknown kind or probability outside [0, 1]")


def simulate_traffic(session: Session, experiment_key: str, plan: SimulationPlan, *,
                     progress: bool = False) -> dict[str, int]:
    """Send ``plan.units`` visitors through assignment and their journeys.

    Returns the units exposed per variant (visitors excluded by traffic, targeting or
    layer record nothing, as through the API).
    """
    experiment = get_experiment(session, experiment_key)
    if experiment.status != "running":
        raise ValueError(f"experiment {experiment_key!r} is {experiment.status}, not running")
    journey = _Journey.of(experiment, plan)
    end = plan.start or utcnow()
    last = end - SESSION_MARGIN
    first = max(last - timedelta(days=plan.days), experiment.started_at or last)
    last = max(last, first)  # started within the margin: every exposure at its start
    rng = random.Random(plan.seed)
    # A stream of its own, so that adding skewed clocks left every other draw unchanged.
    clocks = random.Random(f"{plan.seed}-clocks")
    counts: Counter[str] = Counter({variant.key: 0 for variant in experiment.variants})
    units = _arriving_units(session, experiment_key, plan)
    events: list[dict[str, Any]] = []
    with _relaxed_durability(session), tqdm(
            total=plan.units, disable=not progress, unit="unit",
            desc=f"simulating {experiment_key}") as bar:
        for done in range(plan.units):
            unit_id = next(units)
            exposed_at = last - (last - first) * rng.random()
            skew = _clock_skew(clocks, plan.skewed_share)
            attributes = plan.unit_attributes(unit_id)
            variant, counted = _expose(session, experiment_key, unit_id, attributes,
                                       exposed_at, skew)
            if variant is not None:  # excluded visitors (traffic, targeting…) send nothing
                counts[variant] += counted
                walked = journey.walk(rng, unit_id, variant, exposed_at,
                                      plan.conversion_rate(variant, attributes))
                if skew is None:
                    events.extend(walked)
                else:
                    _ingest_skewed(session, walked, skew)
            if (done + 1) % CHUNK_UNITS == 0:
                _ingest(session, events)
                events = []
            bar.update()
    _ingest(session, events)
    return dict(counts)


@contextmanager
def _relaxed_durability(session: Session) -> Iterator[None]:
    """On PostgreSQL, don't wait for the WAL flush of each simulated unit's commit.

    ``assign`` commits every first exposure; for synthetic traffic losing the last
    few commits in a server crash is harmless, waiting ~ms per unit is not.
    ``SET LOCAL`` ends with each transaction, so nothing leaks into pooled connections.
    """
    if session.get_bind().dialect.name != "postgresql":
        yield
        return

    def relax(_session: Session, _transaction: Any, connection: Connection) -> None:
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")

    event.listen(session, "after_begin", relax)
    try:
        yield
    finally:
        event.remove(session, "after_begin", relax)


def _clock_skew(rng: random.Random, share: float) -> timedelta | None:
    """A browser's clock error (None: a right clock): seconds to hours, behind or ahead,
    log-uniform like real clocks (most are off by a little, a few by hours)."""
    if rng.random() >= share:
        return None
    return timedelta(seconds=rng.choice((-1, 1)) * math.exp(rng.uniform(math.log(5),
                                                                       math.log(3 * 3600))))


def _expose(session: Session, experiment_key: str, unit_id: str, attributes: Mapping[str, Any],
            exposed_at: datetime, skew: timedelta | None) -> tuple[str | None, bool]:
    """Assign through the service (stores the exposure): the variant whose journey the unit
    walks (None when it is not in the experiment) and whether the experiment counts it.

    A held-out unit (SPEC §12) walks the control's journey, uncounted: the holdout
    report measures it.

    A skewed browser sends its own clock's time, as the SDK does, received at once.
    """
    client = {} if skew is None else {"occurred_at": exposed_at + skew,
                                      "sent_at": exposed_at + skew + _SEND_DELAY}
    [result] = assign(session, unit_id=unit_id, attributes=attributes,
                      experiment_keys=[experiment_key], track=True,
                      now=exposed_at + (_SEND_DELAY if skew is not None else timedelta()),
                      **client)
    if result.reason == "holdout":
        return result.variant, False
    return (result.variant, True) if result.in_experiment else (None, False)


# How long after its last event a skewed browser's batch is received (SDK flush + transit).
_SEND_DELAY = timedelta(milliseconds=50)
_FLUSH_DELAY = timedelta(seconds=2)


def _ingest_skewed(session: Session, events: list[dict[str, Any]], skew: timedelta) -> None:
    """One browser's events on its wrong clock, in one batch with ``sent_at``, received
    on the server's clock just after the last of them."""
    if not events:
        return
    times = [datetime.fromisoformat(item["occurred_at"]) for item in events]
    sent = max(times) + _FLUSH_DELAY
    shifted = [{**item, "occurred_at": (at + skew).isoformat()}
               for item, at in zip(events, times, strict=True)]
    _ingest(session, shifted, now=sent + _SEND_DELAY, sent_at=sent + skew)


def _ingest(session: Session, events: list[dict[str, Any]], *, now: datetime | None = None,
            sent_at: datetime | None = None) -> None:
    if not events:
        return
    result = ingest_events(session, events, now=now, sent_at=sent_at)
    if result.rejected:  # the simulator only builds valid events: a rejection is a bug
        raise RuntimeError(f"simulated events rejected: {result.rejected[:3]}")


def _arriving_units(session: Session, experiment_key: str, plan: SimulationPlan
                    ) -> Iterator[str]:
    """Unit ids in arrival order; with ``split``, picked so that variants arrive in that split."""
    prefix = f"sim-{experiment_key}-{plan.seed}-"
    if plan.split is None:
        index = 0
        while True:
            yield f"{prefix}{index}"
            index += 1
    config = _config(session, experiment_key)
    yield from _split_units(config, prefix, plan)


def _split_units(config: ExperimentConfig, prefix: str, plan: SimulationPlan) -> Iterator[str]:
    """Rejection sampling on ids so that arrivals follow ``split`` exactly (quota order)."""
    assert plan.split is not None
    total = sum(plan.split.values())
    shares = {key: share / total for key, share in plan.split.items() if share > 0}
    unknown = set(shares) - {variant.key for variant in config.variants}
    if unknown:
        raise ValueError(f"split names unknown variants: {sorted(unknown)}")
    spare: dict[str, deque[str]] = {key: deque() for key in shares}
    arrived = dict.fromkeys(shares, 0)
    index = 0
    for count in itertools.count(1):
        # The variant furthest behind its quota arrives next: the split is exact, not noisy.
        wanted = max(shares, key=lambda key: shares[key] * count - arrived[key])
        while not spare[wanted]:
            unit_id = f"{prefix}{index}"
            index += 1
            decision = decide(config, unit_id, plan.unit_attributes(unit_id))
            if decision.in_experiment and decision.variant.key in spare:
                spare[decision.variant.key].append(unit_id)
            if index > 1000 * (count + 100):
                raise ValueError(f"no unit is assigned to {wanted!r}: check weights/targeting")
        arrived[wanted] += 1
        yield spare[wanted].popleft()


def _config(session: Session, experiment_key: str) -> ExperimentConfig:
    config = cache_for(session).snapshot(session).by_key.get(experiment_key)
    if config is None:
        raise ValueError(f"experiment {experiment_key!r} is not in the assignment configuration")
    return config


@dataclass(frozen=True)
class _Journey:
    """How units of each variant move through the steps and what they send."""

    steps: tuple[str, ...]
    conversion_event: str
    friction: Mapping[tuple[str, str, str], float]
    nps_rate: float

    @classmethod
    def of(cls, experiment: Any, plan: SimulationPlan) -> _Journey:
        """The experiment's journey, after checking that the plan names its variants."""
        variants = {variant.key for variant in experiment.variants}
        named = {*plan.effects, *(key[0] for key in plan.friction),
                 *(variant for lifts in plan.segment_effects.values() for variant in lifts)}
        if named - variants:
            raise ValueError(f"unknown variants in effects/friction: {sorted(named - variants)}")
        return cls(tuple(experiment.journey), _conversion_event(experiment),
                   dict(plan.friction), plan.nps_rate)

    def walk(self, rng: random.Random, unit_id: str, variant: str, start: datetime,
             conversion: float) -> list[dict[str, Any]]:
        """One unit's events: steps until it leaves (or converts with probability
        ``conversion``), friction, NPS."""
        converts = rng.random() < conversion
        reached = len(self.steps) if converts else self._steps_reached(rng)
        events: list[dict[str, Any]] = []
        at = start
        for position, step in enumerate(self.steps[:reached]):
            at += timedelta(seconds=rng.uniform(5, 180))
            events.append(_event(unit_id, at, type="step", name=step, step=step))
            for kind in self._frictions(rng, variant, step):
                events.append(_event(unit_id, at + timedelta(seconds=rng.uniform(1, 30)),
                                     type="friction", name=kind, friction_kind=kind, step=step))
            if position == reached - 1 and not converts and rng.random() < ABANDONMENT_REPORTED:
                kind = "bounce" if position == 0 else "abandonment"
                events.append(_event(unit_id, at + timedelta(seconds=30), type="friction",
                                     name=kind, friction_kind=kind, step=step))
        if converts:
            at += timedelta(seconds=rng.uniform(5, 60))
            events.append(_event(unit_id, at, type="conversion", name=self.conversion_event,
                                 step=self.steps[-1] if self.steps else None,
                                 value=round(rng.lognormvariate(4.0, 0.5), 2)))
        if rng.random() < self.nps_rate:
            events.append(_event(unit_id, at + timedelta(minutes=5), type="nps", name="nps",
                                 value=_nps_score(rng, converts)))
        for index, item in enumerate(events):
            item["event_id"] = f"{unit_id}-{index}"
        return events

    def _steps_reached(self, rng: random.Random) -> int:
        """How far a non-converting unit gets: uniformly 1..all-but-the-last steps."""
        if len(self.steps) <= 1:
            return len(self.steps)
        return rng.randint(1, len(self.steps) - 1)

    def _frictions(self, rng: random.Random, variant: str, step: str) -> list[str]:
        kinds = [kind for kind, rate in BASE_FRICTION.items() if rng.random() < rate]
        for (for_variant, at_step, kind), extra in self.friction.items():
            if for_variant == variant and at_step == step and kind not in kinds and (
                    rng.random() < extra):
                kinds.append(kind)
        return kinds


def _conversion_event(experiment: Any) -> str:
    """The event the primary metric counts (else any conversion-like metric's, else purchase)."""
    metrics = sorted(experiment.metrics, key=lambda metric: metric.role != "primary")
    for metric in metrics:
        if metric.kind in _CONVERSION_KINDS and metric.event:
            return str(metric.event)
    return "purchase"


def _event(unit_id: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {"unit_id": unit_id, "occurred_at": at.isoformat(), **fields}


def _nps_score(rng: random.Random, converted: bool) -> int:
    """Converters lean to promoters, the others to passives and detractors."""
    weights = ([1, 1, 1, 1, 2, 3, 5, 10, 20, 25, 31] if converted
               else [3, 2, 3, 4, 6, 10, 12, 16, 18, 14, 12])
    return rng.choices(range(11), weights)[0]
