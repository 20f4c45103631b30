"""A pass split into buckets of units (``PipelineSources.units_per_pass``) is exact when the
events' unit id is another text type than the exposures' (an ``events_sql`` over a UUID
column, joined to Parcours's text ids by a cast): the bucket is tested on the exposures."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import CompileError

from experiments.db import UtcDateTime
from experiments.services.pipeline import MetricSpec, aggregate_experiment, table_sources
from experiments.services.pipeline.dialects import const, unit_bucket
from experiments.services.pipeline.unit_values import unit_buckets

T0 = datetime(2026, 3, 1, tzinfo=UTC)
METRICS = [MetricSpec("conv", "conversion", event="purchase"),
           MetricSpec("rev", "mean", event="purchase")]


def test_buckets_of_uuid_events_joined_to_text_exposures_add_up() -> None:
    engine = sa.create_engine("duckdb:///:memory:")
    units = [uuid.UUID(int=number * 7919 + 1) for number in range(40)]
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE exposures (exposure_id BIGINT, experiment_id BIGINT, unit_id VARCHAR,"
            " variant_key VARCHAR, exposed_at TIMESTAMPTZ)")
        connection.exec_driver_sql(
            "CREATE TABLE events (id BIGINT, unit_id UUID, type VARCHAR, name VARCHAR, "
            "step VARCHAR, friction_kind VARCHAR, value DOUBLE, occurred_at TIMESTAMPTZ)")
        for number, unit in enumerate(units):
            exposed = T0 + timedelta(minutes=number)
            connection.exec_driver_sql(
                "INSERT INTO exposures VALUES (?, 1, ?, ?, ?)",
                (number + 1, str(unit), ("a", "b")[number % 2], exposed))
            if number % 3:  # two units in three buy, once or twice
                for times in range(1 + number % 2):
                    connection.exec_driver_sql(
                        "INSERT INTO events VALUES (?, ?, 'conversion', 'purchase', NULL, NULL,"
                        " ?, ?)", (number * 10 + times, unit, 10.0 + number,
                                   exposed + timedelta(hours=1 + times)))
        exposures = sa.table("exposures", *(sa.column(name, type_) for name, type_ in (
            ("exposure_id", sa.BigInteger()), ("experiment_id", sa.BigInteger()),
            ("unit_id", sa.String()), ("variant_key", sa.String()),
            ("exposed_at", UtcDateTime()))))
        events = sa.table("events", *(sa.column(name, type_) for name, type_ in (
            ("id", sa.BigInteger()), ("unit_id", sa.Uuid()), ("type", sa.String()),
            ("name", sa.String()), ("step", sa.String()), ("friction_kind", sa.String()),
            ("value", sa.Float()), ("occurred_at", UtcDateTime()))))
        sources = table_sources(exposures, events, experiment=1)

        def analysed(per_pass: int | None) -> dict[str, dict[tuple[str, str], dict]]:
            result = aggregate_experiment(
                connection, None, METRICS, hours=24.0, cuped=False, journey=[],
                sources=replace(sources, units_per_pass=per_pass))
            return {key: {cell: dict(sums) for cell, sums in daily.rows.items()}
                    for key, daily in result.metrics.items()}

        whole, split = analysed(None), analysed(7)
    assert sum(sums["sum"] for sums in whole["conv"].values()) == 26  # units 1, 2, 4, 5…
    assert split == whole


def test_unit_buckets_are_an_in_process_engines_construct() -> None:
    """DuckDB and ClickHouse hash the unit id; any other dialect refuses (its memory is not
    Parcours's: one statement), rather than split by a hash it does not have."""
    bucket = sa.select(unit_bucket(sa.column("unit_id"), const(4)))
    compiled = {name: str(bucket.compile(dialect=sa.create_engine(url).dialect))
                for name, url in (("duckdb", "duckdb:///:memory:"), ("chdb", "chdb:///:memory:"))}
    assert "(hash(unit_id) % 4)" in compiled["duckdb"]
    assert "(cityHash64(unit_id) % 4)" in compiled["chdb"]
    with pytest.raises(CompileError, match="not on sqlite"):
        str(bucket.compile(dialect=sqlite.dialect()))
    assert unit_buckets(2_500_000, 2_500_000) == [None]
    assert unit_buckets(5_000_001, 2_500_000) == [(0, 3), (1, 3), (2, 3)]
    assert unit_buckets(10**8, 2_500_000) == [(number, 4) for number in range(4)]  # the most
    assert unit_buckets(10**9, None) == [None]
