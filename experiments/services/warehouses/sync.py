"""Copy Parcours's exposures, identity links (and, if asked, its events) into a warehouse
(SPEC §15): the links let the warehouse resolve identity clusters (SPEC §14) as Parcours does.

Incremental by id and idempotent, without any state outside the warehouse that could
disagree with it: the mark is ``max(id)`` of the warehouse table itself. Rows are copied
in id order, in batches, each batch one INSERT in its own warehouse transaction (DuckDB)
or one atomic MergeTree insert (ClickHouse), so whatever a crash leaves behind is a
prefix of the ids; the next run resumes after that prefix: no duplicate, no gap.

Only *settled* ids are copied. On PostgreSQL ids are taken when a transaction inserts but
become visible when it commits, possibly out of order; the sync copies up to the largest
id it saw once every transaction that began before it looked has ended (the rollup's
rule), so a late commit with a smaller id is never skipped. SQLite commits one writer at
a time, in id order.

Erasures (``DELETE /api/v1/units/{id}``) reach the copies too: each sync deletes, in the
warehouse, the rows of every unit erased since the last one (and the links naming it on
either side), matched by the SHA-256 digest the audit entry keeps (the id itself is gone),
and only then advances its mark.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select, text
from sqlalchemy.orm import Session

from experiments.db import Database, utcnow
from experiments.models import (
    AuditEntry,
    Event,
    Experiment,
    Exposure,
    IdentityLink,
    WarehouseSync,
)
from experiments.services.pipeline.dialects import refresh_statistics
from experiments.services.pipeline.rollup import ROLLUP_STATUSES, transactions_settled
from experiments.services.warehouses import rollup, tables
from experiments.services.warehouses.engines import WarehouseError, get_warehouses

logger = logging.getLogger(__name__)
BATCH_ROWS = 5_000
SETTLE_WAIT_S = 5.0
Progress = Callable[[str, int], None]  # (table, rows copied so far) after each batch
# The tables a sync writes: on a PostgreSQL warehouse their planner statistics are
# refreshed after each sync (``refresh_statistics``: autovacuum may be off or not round
# yet). Without them the planner took the demo's 6,000 exposures for a few rows and joined
# them by nested loops: 8-11 s per analysis instead of 0.6-1.1 s.
SYNCED_TABLES = (tables.exposures.name, tables.events.name, tables.identity_links.name)


@dataclass(frozen=True)
class SyncResult:
    """What one sync copied into one warehouse."""

    warehouse: str
    exposures: int
    events: int
    exposures_through: int
    events_through: int
    links: int = 0


def _exposure_rows() -> Select[Any]:
    return (select(Exposure.id, Exposure.experiment_id, Experiment.key.label("experiment_key"),
                   Exposure.unit_id, Exposure.variant_key, Exposure.exposed_at,
                   Exposure.is_override, Exposure.attributes)
            .join(Experiment, Experiment.id == Exposure.experiment_id))


def _event_rows() -> Select[Any]:
    return select(Event.id, Event.unit_id, Event.type, Event.name, Event.step,
                  Event.friction_kind, Event.value, Event.occurred_at)


def _link_rows() -> Select[Any]:
    return select(IdentityLink.id, IdentityLink.anonymous_id, IdentityLink.user_id,
                  IdentityLink.occurred_at)


def settled_bounds(session: Session, name: str) -> tuple[int, int, int]:
    """The largest exposure, event and identity link ids that no open transaction can
    still precede (while a long transaction stays open: what the last sync reached, and
    no new link)."""
    exposures, events, links = (int(session.scalar(select(func.coalesce(func.max(column), 0)))
                                    or 0) for column in (Exposure.id, Event.id, IdentityLink.id))
    bounds = (exposures, events, links)
    if session.get_bind().dialect.name != "postgresql":
        return bounds
    seen_at = session.scalar(select(func.clock_timestamp()))
    deadline = time.monotonic() + SETTLE_WAIT_S
    while not transactions_settled(session, seen_at):
        if time.monotonic() > deadline:
            logger.warning("warehouse sync of %s copies nothing new: a transaction older "
                           "than %.0f s is still open in Parcours's database", name,
                           SETTLE_WAIT_S)
            return _marks(session.get(WarehouseSync, name))
        time.sleep(0.05)
    return bounds


def sync_warehouse(session: Session, name: str, *, progress: Progress | None = None
                   ) -> SyncResult:
    """Copy every settled exposure and identity link (and event, with ``…_SYNC_EVENTS=1``)
    not yet in ``name``."""
    warehouses = get_warehouses()
    config = warehouses.config(name)
    engine = warehouses.engine(name)
    try:
        with engine.begin() as connection:
            tables.create_tables(connection)
        exposures_upper, events_upper, links_upper = settled_bounds(session, name)
        session.rollback()  # end the read transaction: nothing below needs its snapshot
        copied_exposures, exposures_through = _copy(
            session, engine.connect, _exposure_rows(), Exposure.id, tables.exposures,
            exposures_upper, progress)
        copied_links, links_through = _copy(session, engine.connect, _link_rows(),
                                            IdentityLink.id, tables.identity_links,
                                            links_upper, progress)
        copied_events, events_through = (0, 0)
        if config.sync_events:
            copied_events, events_through = _copy(
                session, engine.connect, _event_rows(), Event.id, tables.events,
                events_upper, progress)
        erasures_through = _apply_erasures(session, engine.connect, name)
        refresh_statistics(engine, SYNCED_TABLES)
    except WarehouseError as exc:
        _record(session, name, error=str(exc))
        raise
    _record(session, name, exposures_through=exposures_through, events_through=events_through,
            identity_links_through=links_through, erasures_through=erasures_through)
    return SyncResult(name, copied_exposures, copied_events, exposures_through, events_through,
                      copied_links)


def _copy(session: Session, connect: Callable[[], Connection], rows: Select[Any], id_column: Any,
          target: Any, upper: int, progress: Progress | None) -> tuple[int, int]:
    """Append the rows with ``mark < id <= upper`` in id order; (rows copied, new mark)."""
    with connect() as connection:
        with connection.begin():
            mark = int(connection.scalar(select(func.coalesce(func.max(target.c.id), 0))) or 0)
        clickhouse = tables.is_clickhouse(connection)
        insert = tables.text_times_insert(target) if clickhouse else target.insert()
        copied = 0
        while mark < upper:
            batch = [dict(row) for row in session.execute(
                rows.where(id_column > mark, id_column <= upper).order_by(id_column)
                .limit(BATCH_ROWS)).mappings()]
            session.rollback()
            if not batch:
                break
            if "attributes" in batch[0]:  # the snapshot travels as JSON text
                batch = [{**row, "attributes": json.dumps(row["attributes"])} for row in batch]
            if clickhouse:  # DateTime64(6) columns parse UTC text to the microsecond
                batch = [_utc_text(row) for row in batch]
            with connection.begin():
                connection.execute(insert, batch)
            mark = int(batch[-1]["id"])
            copied += len(batch)
            if progress is not None:
                progress(target.name, len(batch))
    return copied, mark


# The hex SHA-256 of a unit id, as ``erasure.unit_digest`` computes it, in each dialect.
_DIGEST_SQL = {"duckdb": "sha256({id})", "postgresql":
               "encode(sha256(convert_to({id}, 'UTF8')), 'hex')",
               "snowflake": "sha2({id}, 256)", "bigquery": "to_hex(sha256({id}))"}
_CLICKHOUSE_DIGEST = "lower(hex(SHA256({id})))"
# The columns naming a unit in each table: a link goes with either of its ids.
_ERASED_COLUMNS = ((tables.exposures, ("unit_id",)), (tables.events, ("unit_id",)),
                   (tables.identity_links, ("anonymous_id", "user_id")))


def _apply_erasures(session: Session, connect: Callable[[], Connection], name: str) -> int:
    """Delete the copies of every unit erased since the last sync; the new erasure mark."""
    state = session.get(WarehouseSync, name)
    through = state.erasures_through if state else 0
    erased = session.execute(select(AuditEntry.id, AuditEntry.target_id).where(
        AuditEntry.action == "unit.erased", AuditEntry.id > through)
        .order_by(AuditEntry.id)).all()
    session.rollback()
    if not erased:
        return through
    digests = sorted({digest for _, digest in erased})
    with connect() as connection, connection.begin():
        dialect = connection.dialect.name
        digest = (_CLICKHOUSE_DIGEST if tables.is_clickhouse(connection)
                  else _DIGEST_SQL.get(dialect, "sha256({id})"))
        for table, columns in _ERASED_COLUMNS:
            named = " OR ".join(f"{digest.format(id=column)} IN :digests" for column in columns)
            connection.execute(table.delete().where(text(named).bindparams(
                bindparam("digests", expanding=True))), {"digests": digests})
    return int(erased[-1][0])


def _utc_text(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            if isinstance(value, datetime) else value for key, value in row.items()}


def _record(session: Session, name: str, *, exposures_through: int | None = None,
            events_through: int | None = None, identity_links_through: int | None = None,
            erasures_through: int | None = None, error: str | None = None) -> None:
    """Keep the outcome for ``GET /api/v1/warehouses`` and the admin page."""
    session.rollback()
    state = session.get(WarehouseSync, name) or WarehouseSync(
        warehouse=name, exposures_through=0, events_through=0, identity_links_through=0,
        erasures_through=0)
    session.add(state)
    state.last_error = error
    if error is None:
        state.last_sync_at = utcnow()
        state.exposures_through = exposures_through or 0
        state.events_through = events_through or 0
        state.identity_links_through = identity_links_through or 0
        state.erasures_through = erasures_through or 0
    session.commit()


def _marks(state: WarehouseSync | None) -> tuple[int, int, int]:
    """The last exposure, event and identity link ids a sync copied (0 before any)."""
    if state is None:
        return 0, 0, 0
    return state.exposures_through, state.events_through, state.identity_links_through


def pending_rows(session: Session, name: str) -> dict[str, int]:
    """How many exposures, identity links (and events) Parcours holds beyond the last
    sync: the lag."""
    state = session.get(WarehouseSync, name)
    through = _marks(state)
    lag = {"exposures": session.scalar(select(func.count()).where(Exposure.id > through[0])),
           "identity_links": session.scalar(select(func.count()).where(
               IdentityLink.id > through[2]))}
    if get_warehouses().config(name).sync_events:
        lag["events"] = session.scalar(select(func.count()).where(Event.id > through[1]))
    return {key: int(value or 0) for key, value in lag.items()}


def sync_before_analysis(session: Session, name: str) -> SyncResult:
    """Bring ``name`` up to date right before an experiment is analysed in it."""
    return sync_warehouse(session, name)


def sync_all(database: Database, names: list[str] | None = None, *,
             progress: Progress | None = None) -> dict[str, SyncResult | str]:
    """Sync the given (default: every configured) warehouse, then drop there the per-unit
    tables of experiments that no longer run (``warehouses.rollup``); one failure never
    stops the rest."""
    results: dict[str, SyncResult | str] = {}
    for name in names or get_warehouses().names():
        try:
            with database.sessionmaker() as session:
                results[name] = sync_warehouse(session, name, progress=progress)
                keep = list(session.scalars(select(Experiment.id).where(
                    Experiment.status.in_(ROLLUP_STATUSES))))
            with get_warehouses().engine(name).connect() as connection:
                for table in rollup.drop_unkept(connection, keep):
                    logger.info("dropped %s in warehouse %s: its experiment no longer runs",
                                table, name)
        except WarehouseError as exc:
            logger.error("warehouse sync of %s failed: %s", name, exc)
            results[name] = f"error: {exc}"
    return results

