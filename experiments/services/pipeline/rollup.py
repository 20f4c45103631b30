"""Per-unit rollups: the analysis pass's per-unit values, kept between analyses.

A full report reads every event of every exposed unit; on PostgreSQL the per-unit values
of that pass (packed flags, sums, first times, last answers — each with a merge rule:
OR, +, min, max) are stored in ``unit_rollups`` so the next analysis reads one row per
unit plus only what the rollup has not folded yet:

* the rollup covers events with ``id <= events_through`` of exposures with
  ``id <= exposures_through``;
* the live part is the other events of every unit, and the folded events of units exposed
  since; both are computed per unit and merged with the rollup rows.

An analysis folds the ids the previous one saw, once every transaction that was open
when they were seen has ended: any smaller id is then committed or rolled back, so nothing
is folded early and nothing is skipped (sequences hand out ids in time order; this needs
no clock agreement and no assumption on how long writes take). A change of the
experiment's metrics, journey, CUPED or window rebuilds the rollup (``plan_key``). The
state row is locked for the analysis, so two analyses of one experiment never fold the
same events twice. SQLite (the embedded development database, one writer at a time)
always computes the pass in full.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sqlalchemy import (
    Select,
    case,
    column,
    delete,
    func,
    literal,
    select,
    table,
    text,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateTableAs

from experiments.models import ROLLUP_SLOTS, Event, Exposure, RollupState, unit_rollups
from experiments.services.pipeline.dialects import bits_or, packed_flags

if TYPE_CHECKING:
    from experiments.services.pipeline.unit_values import UnitPass

ROLLUP_STATUSES = ("running", "paused")  # experiments whose per-unit values are worth keeping
Merge = Literal["or", "sum", "min", "max"]  # how two partial per-unit values combine
SLOT_PREFIX: dict[Merge, str] = {"or": "w", "sum": "v", "min": "t", "max": "a"}
KEYS = ("exposure_id", "variant_key", "exposed_at")

IdRange = tuple[int, int | None]
"""Rows whose id is greater than the first bound and at most the second (None: no bound)."""

UnitValuesQuery = Callable[[IdRange, IdRange | None], Select[Any]]
"""Builds the per-unit pass over some events (first range) and exposures (second)."""


class UnitStore(Protocol):
    """Keeps an experiment's per-unit values between analyses, wherever its data lives:
    Parcours's PostgreSQL (:class:`OwnRollup`) or a warehouse
    (:class:`experiments.services.warehouses.rollup.WarehouseRollup`)."""

    def __call__(self, connection: Session | Connection, plan_key: str,
                 unit_pass: UnitPass) -> Any | None:
        """Every unit's values as a subquery with ``exposure_id`` and the pass's value
        labels (and, when it has them, ``variant_key`` and ``exposed_at``), or None when
        the pass must be computed in full this time."""


@dataclass(frozen=True)
class OwnRollup:
    """The rollup of one experiment in Parcours's own database (PostgreSQL only)."""

    experiment_id: int

    def __call__(self, connection: Session | Connection, plan_key: str,
                 unit_pass: UnitPass) -> Any | None:
        if not isinstance(connection, Session):
            return None
        return rolled_up_units(connection, self.experiment_id, plan_key,
                               [(value.label, value.merge) for value in unit_pass.values],
                               unit_pass.query)


def slots_for(values: Sequence[tuple[str, Merge]]) -> dict[str, tuple[str, Merge]] | None:
    """``label -> (slot column, merge rule)``, or None when the plan needs more slots."""
    used: Counter[str] = Counter()
    slots = {}
    for label, merge in values:
        prefix = SLOT_PREFIX[merge]
        if used[prefix] == ROLLUP_SLOTS[prefix]:
            return None
        slots[label] = (f"{prefix}{used[prefix]}", merge)
        used[prefix] += 1
    return slots


def merged(earlier: Any, later: Any, merge: Merge) -> Any:
    """The per-unit value over both parts of a unit's events (either may be NULL), in any
    engine (ClickHouse's ``least``/``greatest`` are NULL when an argument is)."""
    if merge == "or":
        return bits_or(func.coalesce(earlier, 0), func.coalesce(later, 0))
    if merge == "sum":
        return func.coalesce(earlier, 0) + func.coalesce(later, 0)
    first = earlier < later if merge == "min" else earlier > later
    return case((earlier.is_(None), later), (later.is_(None), earlier), (first, earlier),
                else_=later)


def merge_aggregate(column: Any, merge: Merge) -> Any:
    """The aggregate merging any number of partial per-unit values (in any engine)."""
    if merge == "or":
        return packed_flags(column)
    return {"sum": func.sum, "min": func.min, "max": func.max}[merge](column)


def rolled_up_units(session: Session, experiment_id: int, plan_key: str,
                    values: Sequence[tuple[str, Merge]], build: UnitValuesQuery) -> Any | None:
    """Every unit's values (rollup ⊕ live part) as a subquery shaped like ``build``'s, or
    None where there is no rollup (SQLite, or a plan larger than the slots).

    Folds what the previous analysis saw if it has settled, then notes what this one sees;
    the state row stays locked until the caller's transaction ends, so the rollup and the
    live part read here do not overlap.
    """
    if session.get_bind().dialect.name != "postgresql":
        return None
    slots = slots_for(values)
    if slots is None:
        return None
    state = _locked_state(session, experiment_id, plan_key)
    if state.seen_at is not None and transactions_settled(session, state.seen_at):
        _fold(session, state, slots, build)
        state.seen_at = None
    if state.seen_at is None:
        _observe(session, state)
    session.flush()
    return _rollup_and_live(state, slots, build).subquery("u")


def drop_rollups(session: Session, *, keep: Sequence[int]) -> None:
    """Delete the rollups of every experiment not in ``keep`` (once concluded, an
    experiment is analysed only on demand, from its events)."""
    stale = list(session.scalars(select(RollupState.experiment_id)
                                 .where(RollupState.experiment_id.not_in(keep))
                                 .with_for_update(skip_locked=True)))
    if stale:
        session.execute(delete(unit_rollups).where(unit_rollups.c.experiment_id.in_(stale)))
        session.execute(delete(RollupState).where(RollupState.experiment_id.in_(stale)))


def forget_exposures(session: Session, exposure_ids: Sequence[int]) -> None:
    """Drop the folded values of these exposures (their units left the analysis)."""
    if exposure_ids:
        session.execute(delete(unit_rollups).where(unit_rollups.c.exposure_id.in_(exposure_ids)))


def _locked_state(session: Session, experiment_id: int, plan_key: str) -> RollupState:
    """The experiment's state row, locked; a new plan drops the rollup and starts over."""
    session.execute(insert(RollupState).values(
        experiment_id=experiment_id, plan_key=plan_key, events_through=0,
        exposures_through=0, events_seen=0, exposures_seen=0).on_conflict_do_nothing())
    state = session.scalars(select(RollupState).where(
        RollupState.experiment_id == experiment_id).with_for_update()
        .execution_options(populate_existing=True)).one()
    if state.plan_key != plan_key:
        session.execute(delete(unit_rollups).where(unit_rollups.c.experiment_id == experiment_id))
        state.plan_key, state.seen_at = plan_key, None
        state.events_through = state.exposures_through = 0
    return state


def _observe(session: Session, state: RollupState) -> None:
    """Remember the newest event and exposure ids, then the database clock: any id up to
    them was taken by a transaction that began before that time."""
    state.events_seen = session.scalar(select(func.coalesce(func.max(Event.id), 0)))
    state.exposures_seen = session.scalar(select(func.coalesce(func.max(Exposure.id), 0))
                                          .where(Exposure.experiment_id == state.experiment_id))
    state.seen_at = session.scalar(select(func.clock_timestamp()))


def transactions_settled(session: Session, seen_at: datetime) -> bool:
    """No other transaction of this database that began before ``seen_at`` is still open."""
    return not session.scalar(text(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
        "AND xact_start < :seen_at)"), {"seen_at": seen_at})


def _fold(session: Session, state: RollupState, slots: Mapping[str, tuple[str, Merge]],
          build: UnitValuesQuery) -> None:
    """Add the seen events of every seen unit, and the folded events of newly seen units."""
    if state.events_seen > state.events_through:
        _upsert(session, state.experiment_id, slots,
                build((state.events_through, state.events_seen), (0, state.exposures_seen)),
                empty=not state.events_through)
    if state.events_through and state.exposures_seen > state.exposures_through:
        _upsert(session, state.experiment_id, slots,
                build((0, state.events_through), (state.exposures_through, state.exposures_seen)))
    state.events_through, state.exposures_through = state.events_seen, state.exposures_seen


def _upsert(session: Session, experiment_id: int, slots: Mapping[str, tuple[str, Merge]],
            query: Select[Any], *, empty: bool = False) -> None:
    """Merge per-unit values into the rollup (each unit appears once in ``query``); into an
    ``empty`` rollup (a first fold) a plain insert, several times faster than an upsert."""
    part = query.subquery("part")
    columns = [*KEYS, "experiment_id", *(slot for slot, _ in slots.values())]
    rows = select(*(part.c[key] for key in KEYS), literal(experiment_id).label("experiment_id"),
                  *(part.c[label].label(slot) for label, (slot, _) in slots.items()))
    if empty:
        # INSERT … SELECT never runs in parallel on PostgreSQL 15, CREATE TABLE AS does:
        # the first fold (every event) stages its rows in a temporary table.
        session.execute(CreateTableAs(rows, "rollup_fold", temporary=True))
        staged = table("rollup_fold", *(column(name) for name in columns))
        session.execute(insert(unit_rollups).from_select(columns, select(staged)))
        session.execute(text("DROP TABLE rollup_fold"))
        # A whole experiment's units at once: let the planner know now (autovacuum may be
        # off or late), or it plans the next reports for a near-empty table (nested loops).
        session.execute(text("ANALYZE unit_rollups"))
        return
    statement = insert(unit_rollups).from_select(columns, rows)
    session.execute(statement.on_conflict_do_update(
        index_elements=[unit_rollups.c.exposure_id],
        set_={slot: merged(unit_rollups.c[slot], statement.excluded[slot], merge)
              for slot, merge in slots.values()}))


def _rollup_and_live(state: RollupState, slots: Mapping[str, tuple[str, Merge]],
                     build: UnitValuesQuery) -> Select[Any]:
    """Rollup rows FULL JOIN the live per-unit values — what the rollup lacks: newer events,
    and units exposed since — merged column by column (the whole pass while nothing is
    folded)."""
    if not state.events_through:
        return build((0, None), None)
    rolled = (select(unit_rollups).where(unit_rollups.c.experiment_id == state.experiment_id)
              .subquery("r"))
    live = [build((state.events_through, None), None),
            build((0, state.events_through), (state.exposures_through, None))]
    # OFFSET 0 keeps PostgreSQL from inlining the merge expressions into every aggregate
    # of the outer query (it would compute each merged word once per flag).
    return with_live(rolled, {label: (rolled.c[slot], merge)
                              for label, (slot, merge) in slots.items()},
                     live, keys=KEYS).offset(0)


def with_live(kept: Any, values: Mapping[str, tuple[Any, Merge]], live: Sequence[Select[Any]],
              *, keys: Sequence[str] = ("exposure_id",)) -> Select[Any]:
    """Kept per-unit values FULL JOIN the ``live`` passes (each one row per unit, labelled
    as ``values``) merged per unit: one row per unit, each value (``label -> (its column
    in kept, merge rule)``) merged by its rule. The units with live values are few: the
    kept rows are read once, as they are."""
    both = (live[0] if len(live) == 1 else union_all(*live)).subquery("parts")
    grouped = (select(*(both.c[key] for key in keys),
                      *(merge_aggregate(both.c[label], merge).label(label)
                        for label, (_, merge) in values.items()))
               .group_by(*(both.c[key] for key in keys)).subquery("live"))
    return (select(*(func.coalesce(kept.c[key], grouped.c[key]).label(key) for key in keys),
                   *(merged(column, grouped.c[label], merge).label(label)
                     for label, (column, merge) in values.items()))
            .select_from(kept.join(grouped, kept.c.exposure_id == grouped.c.exposure_id,
                                   full=True)))


__all__ = ["ROLLUP_STATUSES", "IdRange", "Merge", "OwnRollup", "UnitStore", "UnitValuesQuery",
           "drop_rollups", "merge_aggregate", "rolled_up_units", "slots_for", "with_live"]
