"""The tables Parcours keeps in a warehouse: ``parcours_exposures`` and ``parcours_events``."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    MetaData,
    String,
    Table,
)

metadata = MetaData()
exposures = Table(
    "parcours_exposures", metadata,
    Column("id", BigInteger, nullable=False), Column("experiment_id", BigInteger, nullable=False),
    Column("experiment_key", String, nullable=False), Column("unit_id", String, nullable=False),
    Column("variant_key", String, nullable=False),
    Column("exposed_at", DateTime(timezone=True), nullable=False),
    Column("is_override", Boolean, nullable=False))
events = Table(
    "parcours_events", metadata,
    Column("id", BigInteger, nullable=False), Column("unit_id", String, nullable=False),
    Column("type", String, nullable=False), Column("name", String, nullable=False),
    Column("step", String), Column("friction_kind", String), Column("value", Float),
    Column("occurred_at", DateTime(timezone=True), nullable=False))

# ClickHouse needs an engine clause; ORDER BY id keeps max(id), the sync's mark, cheap.
_CLICKHOUSE_DDL = (
    "CREATE TABLE IF NOT EXISTS parcours_exposures (id Int64, experiment_id Int64, "
    "experiment_key String, unit_id String, variant_key String, "
    "exposed_at DateTime64(6, 'UTC'), is_override Bool) ENGINE = MergeTree ORDER BY id",
    "CREATE TABLE IF NOT EXISTS parcours_events (id Int64, unit_id String, type String, "
    "name String, step Nullable(String), friction_kind Nullable(String), "
    "value Nullable(Float64), occurred_at DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY id",
)
CLICKHOUSE_DIALECTS = ("chdb", "clickhousedb", "clickhouse")


def is_clickhouse(connection: Connection) -> bool:
    """True for ClickHouse, in-process (chDB) or a server."""
    return connection.dialect.name in CLICKHOUSE_DIALECTS


def create_tables(connection: Connection) -> None:
    """Create both tables when missing, in the warehouse's own dialect."""
    if is_clickhouse(connection):
        for statement in _CLICKHOUSE_DDL:
            connection.exec_driver_sql(statement)
    else:
        metadata.create_all(connection, checkfirst=True)
