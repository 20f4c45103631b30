"""The Alembic migration creates exactly what the models declare, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from experiments.db import Base


def test_migrated_schema_matches_the_models(database_url):
    engine = create_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        tables = set(inspect(connection).get_table_names())
    engine.dispose()
    assert diff == []
    assert {"experiments", "exposures", "events", "webhook_deliveries"} <= tables


def test_exposures_and_events_have_the_indexes_analysis_needs(database_url):
    engine = create_engine(database_url)
    inspector = inspect(engine)
    exposure_uniques = {tuple(u["column_names"]) for u in
                        inspector.get_unique_constraints("exposures")}
    exposure_indexes = {tuple(i["column_names"]) for i in inspector.get_indexes("exposures")}
    event_indexes = {tuple(i["column_names"]) for i in inspector.get_indexes("events")}
    engine.dispose()
    assert ("experiment_id", "unit_id") in exposure_uniques | exposure_indexes
    assert ("unit_id", "occurred_at") in event_indexes
