"""Where a warehouse's events come from (SPEC §15): ``events_sql`` sources, probed and stored.

A source is a ``SELECT`` over the customer's own tables that yields the columns of a
Parcours event. It is validated by running it wrapped in ``LIMIT 0`` in that warehouse:
the engine binds it (so a typo is refused with the engine's own message) and reports the
type of every column without reading any data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Engine,
    Select,
    column,
    delete,
    null,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import FromClause

from experiments.auth import Principal
from experiments.db import utcnow
from experiments.errors import ValidationFailed
from experiments.models import WarehouseSource
from experiments.services.audit import record_audit
from experiments.services.warehouses import tables
from experiments.services.warehouses.engines import WarehouseError, get_warehouses

# The columns a source must yield, with the kinds of engine type each accepts: a unit id
# is text (it is joined to Parcours's exposures), a time is a timestamp, a value a number;
# ``null`` is a bare NULL literal (a source without steps says ``NULL AS step``).
EVENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "unit_id": ("text",), "occurred_at": ("time",), "type": ("text",), "name": ("text",),
    "step": ("text", "null"), "value": ("number", "null"), "friction_kind": ("text", "null"),
}
KIND_WORDS = {"text": "text (e.g. CAST(x AS VARCHAR))", "time": "a timestamp",
              "number": "a number", "null": "NULL"}
_TYPE_KINDS = (  # engine type names, DuckDB and ClickHouse spellings included
    ("null", re.compile(r'^(nullable\()?("?null"?|nothing)\)?$', re.I)),
    ("time", re.compile(r"timestamp|datetime|^date", re.I)),
    ("number", re.compile(r"int|float|double|decimal|numeric|real|number", re.I)),
    ("text", re.compile(r"char|text|string|uuid|enum", re.I)),
)


def type_kind(type_name: str) -> str | None:
    """``text``, ``time``, ``number`` or ``null`` for an engine's type name (None: unknown)."""
    for kind, pattern in _TYPE_KINDS:
        if pattern.search(type_name):
            return kind
    return None


def probe(engine: Engine, events_sql: str, field: str) -> dict[str, str]:
    """Run ``events_sql`` with ``LIMIT 0``: its columns and their engine types, or a 422
    naming ``field`` with the engine's message or the missing and mistyped columns."""
    statement = text(f"SELECT * FROM ({events_sql.strip().rstrip(';')}) AS source LIMIT 0")
    try:
        with engine.connect() as connection:
            description = connection.execute(statement).cursor.description or []
    except WarehouseError as exc:
        raise ValidationFailed.field(field, str(exc)) from None
    columns = {str(item[0]).lower(): str(item[1]) for item in description}
    problems = [{"field": field, "message": f"column {name!r} is missing"}
                for name in EVENT_COLUMNS if name not in columns]
    for name, kinds in EVENT_COLUMNS.items():
        kind = type_kind(columns.get(name, ""))
        if name in columns and kind is not None and kind not in kinds:
            problems.append({"field": field, "message": (
                f"column {name!r} is {columns[name]}, expected "
                + " or ".join(KIND_WORDS[k] for k in kinds))})
    if problems:
        raise ValidationFailed(problems, "the events source does not yield Parcours events")
    return {name: columns[name] for name in EVENT_COLUMNS}


def replace_sources(session: Session, name: str, events_sql: Sequence[str],
                    principal: Principal) -> list[WarehouseSource]:
    """Probe every source in the warehouse, then store them in place of the previous ones."""
    warehouses = get_warehouses()
    engine = warehouses.engine(name)
    probed = [probe(engine, sql, f"events_sql[{index}]" if len(events_sql) > 1 else "events_sql")
              for index, sql in enumerate(events_sql)]
    before = [source_to_dict(row) for row in list_sources(session, name)]
    session.execute(delete(WarehouseSource).where(WarehouseSource.warehouse == name))
    now = utcnow()
    rows = [WarehouseSource(warehouse=name, position=position, events_sql=sql, columns=columns,
                            validated_at=now)
            for position, (sql, columns) in enumerate(zip(events_sql, probed, strict=True))]
    session.add_all(rows)
    session.flush()
    record_audit(session, principal, "warehouse.sources", target_type="warehouse",
                 target_id=name, before={"sources": before},
                 after={"sources": [source_to_dict(row) for row in rows]})
    session.commit()
    return rows


def list_sources(session: Session, name: str) -> list[WarehouseSource]:
    """The stored sources of a warehouse, in their given order."""
    return list(session.scalars(select(WarehouseSource).where(WarehouseSource.warehouse == name)
                                .order_by(WarehouseSource.position)))


def source_to_dict(source: WarehouseSource) -> dict[str, Any]:
    """The public shape of a source with its validation result."""
    return {"events_sql": source.events_sql,
            "validation": {"ok": True, "checked_at": source.validated_at.isoformat(),
                           "columns": dict(source.columns)}}


def warehouse_sources(session: Session, name: str) -> tuple[Engine, FromClause, FromClause]:
    """The seam the analysis pipeline consumes: the warehouse's engine, its exposures
    (``exposure_id, experiment_id, experiment_key, unit_id, variant_key, exposed_at,
    is_override``) and its events (``id, unit_id, type, name, step, friction_kind, value,
    occurred_at``): every stored source combined with UNION ALL, plus the events Parcours
    synced itself when the warehouse is configured to (``…_SYNC_EVENTS=1``)."""
    warehouses = get_warehouses()
    config = warehouses.config(name)
    exposures = select(tables.exposures.c.id.label("exposure_id"),
                       *[c for c in tables.exposures.c if c.name != "id"]).subquery("exposures")
    parts: list[Select[Any]] = [_source_select(row.events_sql)
                                for row in list_sources(session, name)]
    if config.sync_events:
        parts.append(select(*tables.events.c))
    if not parts:
        raise WarehouseError(f"warehouse {name!r} has no events: PUT "
                             f"/api/v1/warehouses/{name}/sources or set "
                             f"PARCOURS_WAREHOUSE_{name.upper()}_SYNC_EVENTS=1")
    events = (parts[0] if len(parts) == 1 else union_all(*parts)).subquery("events")
    return warehouses.engine(name), exposures, events


def _source_select(events_sql: str) -> Select[Any]:
    """One source as a selectable with the event columns in the pipeline's order (its rows
    have no Parcours id: ``id`` is NULL)."""
    source = text(events_sql.strip().rstrip(";")).columns(
        *[column(name) for name in EVENT_COLUMNS]).subquery()
    return select(null().cast(BigInteger()).label("id"),
                  *[source.c[c.name] for c in tables.events.c if c.name != "id"])

