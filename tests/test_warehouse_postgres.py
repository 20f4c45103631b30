"""A PostgreSQL warehouse (SPEC §15): the same report as Parcours's, planned over fresh
statistics.

The sync fills ``parcours_*`` tables and a fold creates a kept per-unit table; until
something ANALYZEs them (autovacuum may be off, or not round yet) the planner takes them for
a few rows and joins them by nested loops: the seeded demo's 6,000 units took 8-11 s per
analysis in a PostgreSQL warehouse, 0.6-1.1 s once analysed. Each sync and each fold
refreshes their statistics (``dialects.refresh_statistics``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, text

from bench.support import scratch_postgres_database
from experiments.db import get_db
from experiments.models import Experiment, Report
from experiments.services.analysis import analyze_experiment
from experiments.services.warehouses.engines import get_warehouses
from tests import test_warehouse_reports as reports
from tests.conftest import POSTGRES_URL, make_test_app, requires_postgres

pytestmark = requires_postgres


@pytest.fixture
def postgres_warehouse() -> Iterator[str]:
    """An empty PostgreSQL database for the warehouse ``w``."""
    assert POSTGRES_URL
    with scratch_postgres_database(POSTGRES_URL, "parcours_warehouse") as url:
        yield url


def analysed_tables(url: str) -> dict[str, bool]:
    """Each table of the warehouse: whether it has planner statistics (an ANALYZE ran)."""
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT relname, coalesce(last_analyze, last_autoanalyze) IS NOT NULL "
            "FROM pg_stat_user_tables")).all()
    engine.dispose()
    return {name if not name.startswith("parcours_rollup_") else "kept values": analysed
            for name, analysed in rows if name != "parcours_rollups"}


def test_a_postgresql_warehouse_report_equals_the_parcours_report_over_fresh_statistics(
        database_url: str, tmp_path: Path, postgres_warehouse: str) -> None:
    app = make_test_app(database_url, tmp_path, WAREHOUSE_W_URL=postgres_warehouse,
                        WAREHOUSE_W_SYNC_EVENTS="1")
    experiment = reports.start(app, "pg-wh", metrics=reports.METRICS, overrides={},
                               analysis={"dimensions": ["country"]})
    now = reports.T0 + timedelta(days=6)
    with app.app_context(), get_db(app).sessionmaker() as db:
        experiment = db.get(Experiment, experiment.id)
        experiment.started_at = reports.T0
        reports.add_journey_traffic(db, experiment, 400)
        in_parcours = analyze_experiment(db, "pg-wh", now=now).body
        db.execute(delete(Report))
        experiment.analysis = {**experiment.analysis, "warehouse": "w"}
        db.commit()
        # The first analysis records the plan, the second folds every event into a kept
        # table, the third reads it: each equals Parcours's report.
        in_warehouse = [analyze_experiment(db, "pg-wh", now=now).body for _ in range(3)]
    get_warehouses(app).dispose()
    get_db(app).engine.dispose()

    assert sum(in_parcours["units"].values()) == 399 and in_parcours["segments"]
    for report in in_warehouse:
        assert "error" not in report
        diffs = reports.differences(reports.without_times(report),
                                    reports.without_times(in_parcours))
        assert not diffs, "\n".join(diffs)
    assert analysed_tables(postgres_warehouse) == {
        "parcours_exposures": True, "parcours_events": True, "parcours_identity_links": True,
        "kept values": True}
