"""Per-unit values kept in a warehouse between analyses (SPEC §9, §15).

The first report of an experiment reads every event of every exposed unit. As on
Parcours's PostgreSQL (:mod:`experiments.services.pipeline.rollup`), the per-unit values of that
pass (packed flags, sums, first times, last answers, each with a merge rule) can be kept,
so that later reports read one row per unit plus only what arrived since. In a warehouse
they are kept in a table of their own, made by one ``CREATE TABLE … AS SELECT`` (a *fold*)
and named by the latest row of ``parcours_rollups`` for the experiment, with the ids it
covers: every ``parcours_events`` row with ``id <= events_through`` of every exposure with
``id <= exposures_through``. A report reads that table merged per unit (OR, +, min, max)
with the pass over the events after ``events_through`` and over the folded events of the
units exposed since (``pipeline.rollup.with_live``, as on PostgreSQL).

Why this is exact:

* the sync copies both tables as a prefix of Parcours's ids (``warehouses.sync``): once a
  fold saw ``max(id)``, every smaller id is there, and each later row is read live;
* the fold and its record are two statements, the record last: a crash in between leaves
  an unnamed table (dropped with the experiment's others once it no longer runs, by the
  sync job), never a record of rows that are not there; each fold writes a new table, so
  a report reading the previous one is never cut short;
* each row carries its unit's exposure columns (:data:`CARRIED`), so a report groups the
  rows by variant, day, segment level or weight period without joining them back to the
  exposures — while the experiment's exposure rows up to the fold's ids are as many as
  when it was made (counted before it). Fewer means units left the analysis since (an
  erasure): the rows are then joined to the current exposures, which leave them out, and
  the next fold drops them. The override units are part of the plan's key (the exposures
  leave them out): a new override is a new plan, folded anew.

Only ``parcours_events`` have ids: with ``events_sql`` sources, or when identity clusters
are the analysis unit (SPEC §14), the pass is computed in full (see ``routing``). The first
analysis of a plan (metrics, journey, window, CUPED: ``plan_key``) only records it; the
next one folds everything there is, and later ones fold again once the events not folded
exceed :data:`REFOLD_SHARE` of those folded (the live part then stays a small share of the
work), so the first report costs no more than before and a fold is rare.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, column, func, insert, select, table
from sqlalchemy.orm import Session

from experiments.services.pipeline.dialects import refresh_statistics, table_from_select
from experiments.services.pipeline.rollup import IdRange, with_live
from experiments.services.pipeline.unit_values import unit_buckets
from experiments.services.warehouses import tables

if TYPE_CHECKING:
    from experiments.services.pipeline.unit_values import Narrowed, UnitPass

REFOLD_SHARE = 0.1
# Each unit's exposure columns kept beside its values (those the exposures have): a
# report groups the kept rows by variant, day, segment level or weight period without
# joining them back to the exposures.
CARRIED = ("variant_key", "exposed_at", "attributes")
TABLE_PREFIX = "parcours_rollup_"
TABLE_NAME = re.compile(rf"{TABLE_PREFIX}(\d+)_[0-9a-f]+")  # experiment id, random part


@dataclass(frozen=True)
class Fold:
    """One ``parcours_rollups`` row: a fold of an experiment (or only its plan, seen)."""

    version: int
    plan_key: str
    base_table: str | None
    events_through: int
    exposures_through: int
    exposure_rows: int  # the experiment's exposure rows with ids up to exposures_through


@dataclass(frozen=True)
class WarehouseRollup:
    """The :class:`~experiments.services.pipeline.rollup.UnitStore` of one experiment in a warehouse
    whose events are ``parcours_events`` (ids in Parcours's order). ``overrides``: the
    experiment's override units now, left out of its exposures (see ``routing``)."""

    experiment_id: int
    overrides: tuple[str, ...] = ()
    # (id, rows): the experiment's exposure rows up to that id, counted when the analysis
    # opened the warehouse (:func:`unique_through`), so not again for the same fold; an
    # erasure in between is seen by the next analysis, as one during the statement is.
    counted: tuple[int, int] | None = None

    def __call__(self, connection: Session | Connection, plan_key: str,
                 unit_pass: UnitPass) -> Any | None:
        assert isinstance(connection, Connection), "a warehouse is read on a connection"
        plan_key = self.key(plan_key)
        unit_pass = _carrying(unit_pass)
        fold = latest_fold(connection, self.experiment_id)
        events_now, exposures_now = _newest_ids(connection)
        if fold is None or fold.plan_key != plan_key:
            _record(connection, self.experiment_id, Fold(
                0 if fold is None else fold.version + 1, plan_key, None, events_now,
                exposures_now, exposure_rows(connection, unit_pass.x, exposures_now)))
            return None
        present = kept_tables(connection, self.experiment_id)
        if fold.base_table not in present:  # not folded yet, or its table is gone
            fold = self._fold(connection, replace(fold, base_table=None), unit_pass,
                              (events_now, exposures_now), present)
        elif events_now - fold.events_through > REFOLD_SHARE * fold.events_through:
            fold = self._fold(connection, fold, unit_pass, (events_now, exposures_now), present)
        merged = _merged(connection, fold, unit_pass, (events_now, exposures_now)).subquery("u")
        if self._rows(connection, unit_pass.x, fold.exposures_through) == fold.exposure_rows:
            return merged  # the folded units are the units now: no join back to exposures
        return select(merged.c.exposure_id,
                      *(merged.c[value.label] for value in unit_pass.values)).subquery("u")

    def _fold(self, connection: Connection, fold: Fold, unit_pass: UnitPass,
              newest: tuple[int, int], present: set[str]) -> Fold:
        """A new table with every unit's values up to the ``newest`` event and exposure
        ids (from the fold's table, or without one from every event, a bucket of units at
        a time: the pass's ``units_per_pass``), then its record; then the experiment's tables
        that older records name are dropped (:func:`superseded`). A table no record names
        is left alone: it may be a concurrent fold's, not yet recorded."""
        events_now, exposures_now = newest
        # Counted before the fold reads them: a unit erased meanwhile lowers the count
        # later, never the other way round (an equal count means the same units).
        rows = exposure_rows(connection, unit_pass.x, exposures_now)
        if fold.base_table is None:
            queries = [_projected(unit_pass, (0, events_now), (0, exposures_now), bucket=bucket)
                       for bucket in unit_buckets(rows, unit_pass.units_per_pass)]
        else:  # the units erased since the last fold are left out (overrides: a new plan)
            merged = _merged(connection, fold, unit_pass, newest, bounded=True).subquery()
            queries = [select(*merged.c).where(
                merged.c.exposure_id.in_(select(unit_pass.x.c.exposure_id)))]
        name = f"{TABLE_PREFIX}{self.experiment_id}_{secrets.token_hex(6)}"
        connection.execute(table_from_select(name, queries[0]))
        for query in queries[1:]:
            columns = [column(selected.key) for selected in query.selected_columns]
            connection.execute(insert(table(name, *columns)).from_select(columns, query))
        connection.commit()
        refresh_statistics(connection, [name])  # PostgreSQL: a new table has none
        folded = Fold(fold.version + 1, fold.plan_key, name, events_now, exposures_now, rows)
        _record(connection, self.experiment_id, folded)
        _drop(connection, superseded(connection, self.experiment_id, fold) & present)
        return folded

    def _rows(self, connection: Connection, exposures: Any, through: int) -> int:
        """:func:`exposure_rows` up to ``through``, unless :attr:`counted` has them."""
        if self.counted is not None and self.counted[0] == through:
            return self.counted[1]
        return exposure_rows(connection, exposures, through)

    def key(self, plan_key: str) -> str:
        """The plan's key for this store: the override units and the carried exposure
        columns are part of what its tables hold."""
        described = repr((plan_key, self.overrides, CARRIED))
        return hashlib.sha256(described.encode()).hexdigest()


def latest_fold(connection: Connection, experiment_id: int) -> Fold | None:
    """The experiment's latest fold record (None: never analysed with a rollup);
    ``parcours_rollups`` must exist (:func:`tables.create_rollups`)."""
    r = tables.rollups.c
    row = connection.execute(select(r.version, r.plan_key, r.base_table, r.events_through,
                                    r.exposures_through, r.exposure_rows)
                             .where(r.experiment_id == experiment_id)
                             .order_by(r.version.desc()).limit(1)).first()
    return None if row is None else Fold(*row)


def exposure_rows(connection: Connection, exposures: Any, through: int) -> int:
    """How many rows of the experiment's exposures have ids up to ``through``."""
    return int(connection.scalar(select(func.count())
                                 .where(exposures.c.exposure_id <= through)))


def unique_through(fold: Fold | None, rows: int) -> int:
    """Up to which exposure id the rows are known unique per unit, given the experiment's
    exposure ``rows`` now up to the fold's ids: a fold (or its first record) is only made
    over unique exposures, and rows are appended by the sync with Parcours's ids, unique
    per experiment and unit — unless rows were copied again (no more rows up to that id
    than then; an erasure only removes some). 0: unknown."""
    if fold is None or rows > fold.exposure_rows:
        return 0
    return fold.exposures_through


def _newest_ids(connection: Connection) -> tuple[int, int]:
    """The largest event and exposure ids in the warehouse: every smaller one is there."""
    return (int(connection.scalar(select(func.coalesce(func.max(tables.events.c.id), 0)))),
            int(connection.scalar(select(func.coalesce(func.max(tables.exposures.c.id), 0)))))


def _record(connection: Connection, experiment_id: int, fold: Fold) -> None:
    """Append the fold's record (one row: atomic in every engine) and commit."""
    connection.execute(tables.rollups.insert().values(
        experiment_id=experiment_id, version=fold.version, plan_key=fold.plan_key,
        base_table=fold.base_table, events_through=fold.events_through,
        exposures_through=fold.exposures_through, exposure_rows=fold.exposure_rows))
    connection.commit()


def superseded(connection: Connection, experiment_id: int, fold: Fold) -> set[str]:
    """The tables a fold from ``fold`` leaves behind: those of the experiment's records up
    to ``fold``'s version, but the one folded from (a report may be reading it now). A
    concurrent fold from the same version records the same version as this one: its
    table stays until a later fold drops it."""
    r = tables.rollups.c
    named = set(connection.execute(select(r.base_table).where(
        r.experiment_id == experiment_id, r.base_table.is_not(None),
        r.version <= fold.version)).scalars())
    return named - {fold.base_table}


def _projected(unit_pass: UnitPass, event_ids: IdRange, exposure_ids: IdRange | None, *,
               narrowed: Narrowed | None = None, bucket: tuple[int, int] | None = None) -> Any:
    """The pass over those id ranges (and that bucket of units) reduced to ``exposure_id``,
    the carried exposure columns and the values (what a fold keeps)."""
    rows = unit_pass.query(event_ids, exposure_ids, narrowed=narrowed, bucket=bucket).subquery()
    return select(*(rows.c[key] for key in unit_pass.keys),
                  *(rows.c[value.label] for value in unit_pass.values))


def _carrying(unit_pass: UnitPass) -> UnitPass:
    """The ungrouped pass carrying each unit's :data:`CARRIED` exposure columns."""
    extra = tuple(name for name in CARRIED
                  if name in unit_pass.x.c and name not in unit_pass.keys)
    return replace(unit_pass, keys=(*unit_pass.keys, *extra))


def _first_exposed(connection: Connection, exposures: Any, fold: Fold,
                   exposures_now: int) -> datetime | None:
    """The earliest exposure time of the experiment's units exposed since the fold, up to
    the newest exposure id (None: none, e.g. all of them overrides)."""
    return connection.scalar(select(func.min(exposures.c.exposed_at)).where(
        exposures.c.exposure_id > fold.exposures_through,
        exposures.c.exposure_id <= exposures_now))


def _merged(connection: Connection, fold: Fold, unit_pass: UnitPass,
            newest: tuple[int, int], *, bounded: bool = False) -> Any:
    """The fold's table ⊕ the pass over what it lacks — the events after its ids and the
    earlier events of units exposed since (``newest``: the newest event and exposure ids;
    ``bounded``: up to them, for the next fold, else whatever is there when it runs): one
    row per unit, each value merged by its rule (:func:`with_live`). A part with nothing to
    read is left out (ClickHouse would still read every event of the other side).
    The units exposed since the fold (up to the newest exposure id, which then bounds
    their part) have their earlier events looked for from their first exposure's windows
    on (:meth:`UnitPass.exposed_from`), not among every event — in production new units
    are recent, while every event's unit id is 0.9 s of chDB's 3.4 s scheduled report at
    10 M units."""
    labels = [value.label for value in unit_pass.values]
    base = table(fold.base_table, *(column(key) for key in unit_pass.keys),
                 *(column(label) for label in labels))
    events, exposures = newest
    live = []
    if events > fold.events_through:
        live.append(_projected(unit_pass, (fold.events_through, events if bounded else None),
                               (0, exposures if bounded else None), narrowed="exposures"))
    if exposures > fold.exposures_through:
        newly_exposed = _first_exposed(connection, unit_pass.x, fold, exposures)
        recent = unit_pass if newly_exposed is None else unit_pass.exposed_from(newly_exposed)
        live.append(_projected(recent, (0, fold.events_through),
                               (fold.exposures_through,
                                exposures if bounded or newly_exposed is not None else None),
                               narrowed="events"))
    if not live:
        return select(*(base.c[name] for name in (*unit_pass.keys, *labels)))
    return with_live(base, {value.label: (base.c[value.label], value.merge)
                            for value in unit_pass.values}, live, keys=unit_pass.keys)


def _rollup_tables(connection: Connection) -> dict[str, int]:
    """Every per-unit table in the warehouse, with its experiment id (``_`` is a LIKE
    wildcard, so the names are matched here: ``parcours_rollups`` is not one)."""
    names = connection.execute(
        select(column("table_name")).select_from(table("tables", schema="information_schema"))
        .where(column("table_name").like(f"{TABLE_PREFIX}%"))).scalars()
    return {name: int(match[1]) for name in names
            if (match := TABLE_NAME.fullmatch(name)) is not None}


def kept_tables(connection: Connection, experiment_id: int) -> set[str]:
    """The experiment's per-unit tables."""
    return {name for name, owner in _rollup_tables(connection).items()
            if owner == experiment_id}


def drop_unkept(connection: Connection, keep: Collection[int]) -> list[str]:
    """Drop the per-unit tables of every experiment not in ``keep`` (concluded ones are
    analysed on demand, from their events); their records stay, naming a table that is
    gone, so an experiment that runs again folds anew. The tables dropped, by name."""
    dropped = sorted(name for name, owner in _rollup_tables(connection).items()
                     if owner not in keep)
    _drop(connection, dropped)
    return dropped


def forget_rollups(connection: Connection) -> None:
    """Drop every experiment's per-unit tables and records (a warehouse reset; the bench's
    first reports)."""
    _drop(connection, [*drop_unkept(connection, keep=()), tables.rollups.name])


def _drop(connection: Connection, names: Collection[str]) -> None:
    """Drop these tables (if they still exist) and commit."""
    for name in names:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
    connection.commit()


__all__ = ["REFOLD_SHARE", "Fold", "WarehouseRollup", "drop_unkept", "exposure_rows",
           "forget_rollups", "kept_tables", "latest_fold", "superseded", "unique_through"]
