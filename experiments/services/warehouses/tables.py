"""The tables Parcours keeps in a warehouse: ``parcours_exposures``, ``parcours_events`` and
``parcours_identity_links`` (the identity clusters of SPEC §14 are resolved there too), and
``parcours_rollups`` with the per-unit tables it names (``warehouses.rollup``)."""

from __future__ import annotations

import logging

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Double,
    MetaData,
    String,
    Table,
    column,
    text,
)
from sqlalchemy import table as sql_table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql import Insert

logger = logging.getLogger(__name__)

metadata = MetaData()
exposures = Table(
    "parcours_exposures", metadata,
    Column("id", BigInteger, nullable=False), Column("experiment_id", BigInteger, nullable=False),
    Column("experiment_key", String, nullable=False), Column("unit_id", String, nullable=False),
    Column("variant_key", String, nullable=False),
    Column("exposed_at", DateTime(timezone=True), nullable=False),
    Column("is_override", Boolean, nullable=False),
    Column("attributes", String))  # the exposure's attribute snapshot, as JSON text (segments)
# value: DOUBLE (DuckDB's FLOAT is 32-bit: amounts would lose cents against Parcours's own).
events = Table(
    "parcours_events", metadata,
    Column("id", BigInteger, nullable=False), Column("unit_id", String, nullable=False),
    Column("type", String, nullable=False), Column("name", String, nullable=False),
    Column("step", String), Column("friction_kind", String), Column("value", Double),
    Column("occurred_at", DateTime(timezone=True), nullable=False))
identity_links = Table(
    "parcours_identity_links", metadata,
    Column("id", BigInteger, nullable=False), Column("anonymous_id", String, nullable=False),
    Column("user_id", String, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False))
# The per-unit values kept between analyses (``warehouses.rollup``): one row per fold, the
# latest ``version`` of an experiment naming its table (None: seen, nothing folded yet), and
# how many of its exposure rows had ids up to ``exposures_through`` (found unique per unit).
rollups = Table(
    "parcours_rollups", metadata,
    Column("experiment_id", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False), Column("plan_key", String, nullable=False),
    Column("base_table", String), Column("events_through", BigInteger, nullable=False),
    Column("exposures_through", BigInteger, nullable=False),
    Column("exposure_rows", BigInteger, nullable=False))

# ClickHouse needs an engine clause; ORDER BY id keeps max(id), the sync's mark, cheap.
# The columns with few distinct values (event types, names, steps, friction kinds,
# experiment and variant keys) are LowCardinality: stored and compared as dictionary
# indices, and carried through the per-unit pass's join as such, not as copied strings
# (1 M units / 10 M events: a first report's main statement 2.6 s -> 1.6 s).
LOW_CARDINALITY = {
    "parcours_exposures": {"experiment_key": "LowCardinality(String)",
                           "variant_key": "LowCardinality(String)"},
    "parcours_events": {"type": "LowCardinality(String)", "name": "LowCardinality(String)",
                        "step": "LowCardinality(Nullable(String))",
                        "friction_kind": "LowCardinality(Nullable(String))"},
}
_CLICKHOUSE_DDL = (
    "CREATE TABLE IF NOT EXISTS parcours_exposures (id Int64, experiment_id Int64, "
    "experiment_key LowCardinality(String), unit_id String, variant_key LowCardinality(String), "
    "exposed_at DateTime64(6, 'UTC'), is_override Bool, attributes Nullable(String)) "
    "ENGINE = MergeTree ORDER BY id",
    "CREATE TABLE IF NOT EXISTS parcours_events (id Int64, unit_id String, "
    "type LowCardinality(String), name LowCardinality(String), "
    "step LowCardinality(Nullable(String)), friction_kind LowCardinality(Nullable(String)), "
    "value Nullable(Float64), occurred_at DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY id",
    "CREATE TABLE IF NOT EXISTS parcours_identity_links (id Int64, anonymous_id String, "
    "user_id String, occurred_at DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY id",
    "CREATE TABLE IF NOT EXISTS parcours_rollups (experiment_id Int64, version Int64, "
    "plan_key String, base_table Nullable(String), events_through Int64, "
    "exposures_through Int64, exposure_rows Int64) "
    "ENGINE = MergeTree ORDER BY (experiment_id, version)",
)
CLICKHOUSE_DIALECTS = ("chdb", "clickhousedb", "clickhouse")
# Tables created before segments were computed in warehouses lack this column: add it (the
# rows already copied keep NULL, so their units fall in the ``__null__`` level).
_ADD_ATTRIBUTES = ("ALTER TABLE parcours_exposures ADD COLUMN IF NOT EXISTS attributes {type}")


def is_clickhouse(connection: Connection) -> bool:
    """True for ClickHouse, in-process (chDB) or a server."""
    return connection.dialect.name in CLICKHOUSE_DIALECTS


def text_times_insert(table: Table) -> Insert:
    """An INSERT into ``table`` binding its times as text: ClickHouse dialects wrap a
    DateTime bind in ``toDateTime(?)``, which drops the microseconds of a DateTime64(6)."""
    return sql_table(table.name, *[column(c.name, String() if isinstance(c.type, DateTime)
                                          else c.type) for c in table.c]).insert()


def create_tables(connection: Connection) -> None:
    """Create the tables when missing, in the warehouse's own dialect."""
    if is_clickhouse(connection):
        for statement in _CLICKHOUSE_DDL:
            connection.exec_driver_sql(statement)
        _to_low_cardinality(connection)
    else:
        metadata.create_all(connection, checkfirst=True)
    connection.exec_driver_sql(_ADD_ATTRIBUTES.format(
        type="Nullable(String)" if is_clickhouse(connection)
        else connection.dialect.type_compiler_instance.process(String())))


def _to_low_cardinality(connection: Connection) -> None:
    """Tables created before :data:`LOW_CARDINALITY` hold those columns as plain strings:
    each is converted once (``MODIFY COLUMN``, ClickHouse rewrites the column's parts in the
    background; the rows stay readable meanwhile). A conversion the server refuses (a user
    without ``ALTER`` rights) is logged and the sync goes on: it only costs speed."""
    current = connection.execute(text(
        "SELECT table, name, type FROM system.columns WHERE database = currentDatabase() "
        "AND table IN ('parcours_exposures', 'parcours_events')")).all()
    for table_name, name, type_ in current:
        wanted = LOW_CARDINALITY[table_name].get(name)
        if wanted is None or type_ == wanted:
            continue
        try:
            connection.exec_driver_sql(f"ALTER TABLE {table_name} MODIFY COLUMN {name} {wanted}")
        except DBAPIError as exc:
            logger.warning("%s.%s stays %s (reports read it slower than as %s): %s",
                           table_name, name, type_, wanted, str(exc.orig)[:300])


def create_rollups(connection: Connection) -> None:
    """Create ``parcours_rollups`` when missing (a warehouse filled before it existed, or by
    other means than the sync: the bench)."""
    connection.execute(text(_CLICKHOUSE_DDL[-1]) if is_clickhouse(connection)
                       else CreateTable(rollups, if_not_exists=True))
