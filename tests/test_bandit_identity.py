"""A bandit whose units are linked across devices (SPEC §13, §14): its reallocation reads
the per-period sums of the identity clusters its report analyses, in Parcours (SQLite and
PostgreSQL) and in a warehouse (DuckDB), never the raw device ids."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from experiments.db import get_db
from experiments.models import AllocationPeriod, Event, Experiment, Exposure, IdentityLink
from experiments.schemas import AnalysisSettings
from experiments.services import bandits
from experiments.services.analysis import analyze_experiment
from experiments.services.pipeline import sum_specs
from experiments.services.warehouses import routing
from experiments.services.warehouses.engines import get_warehouses
from stats import MeanStats
from tests.conftest import make_test_app
from tests.test_bandit_periods import METRICS, VARIANTS
from tests.test_bandits import start_bandit

# Exposures: (unit, arm, hours after the start); period 1 starts at 24 h.
EXPOSURES = [("a-phone", "control", 1), ("a-laptop", "control", 30),  # customer a
             ("b-phone", "b", 2), ("b-tablet", "b", 3),               # customer b
             ("c-phone", "control", 4), ("c-laptop", "b", 5),         # c: two arms
             ("u1", "control", 6), ("u2", "b", 7), ("u3", "b", 26), ("u4", "control", 27)]
LINKS = [("a-phone", "customer-a"), ("a-laptop", "customer-a"), ("b-phone", "customer-b"),
         ("b-tablet", "customer-b"), ("c-phone", "customer-c"), ("c-laptop", "customer-c")]
# Clicks: (unit, hours after the start). customer-b's is a back-office one, under the
# customer id: it exists for clusters only.
CLICKS = [("a-phone", 2), ("a-laptop", 31), ("customer-b", 5), ("c-phone", 5), ("u1", 7),
          ("u3", 27)]
# Clusters: a (period 0, control, clicked twice: one unit, one conversion), b (period 0,
# b, its back-office click), c left out (two arms), and the four unlinked units.
CLUSTERED = {0: {"control": MeanStats(2, 2.0, 2.0), "b": MeanStats(2, 1.0, 1.0)},
             1: {"control": MeanStats(1, 0.0, 0.0), "b": MeanStats(1, 1.0, 1.0)}}
# Raw device ids: a's laptop in period 1, c's two devices counted, b's click lost.
PLAIN = {0: {"control": MeanStats(3, 3.0, 3.0), "b": MeanStats(4, 0.0, 0.0)},
         1: {"control": MeanStats(2, 1.0, 1.0), "b": MeanStats(1, 1.0, 1.0)}}


def linked_bandit(db: Any, started: datetime) -> Experiment:
    experiment = db.scalar(select(Experiment).where(Experiment.key == "banner"))
    db.add(AllocationPeriod(experiment_id=experiment.id, period=1,
                            started_at=started + timedelta(hours=24),
                            weights={"control": 0.2, "b": 0.8},
                            p_best={"control": 0.2, "b": 0.8}, seed=3))
    db.execute(insert(Exposure), [
        {"experiment_id": experiment.id, "unit_id": unit, "variant_key": arm,
         "exposed_at": started + timedelta(hours=hours)} for unit, arm, hours in EXPOSURES])
    db.execute(insert(IdentityLink), [
        {"anonymous_id": device, "user_id": customer, "occurred_at": started}
        for device, customer in LINKS])
    db.execute(insert(Event), [
        {"event_id": f"click-{unit}", "unit_id": unit, "type": "conversion", "name": "click",
         "occurred_at": started + timedelta(hours=hours)} for unit, hours in CLICKS])
    db.commit()
    return experiment


@pytest.mark.parametrize("where", ["parcours", "warehouse"])
def test_a_reallocation_reads_the_clusters_the_report_reads(
        database_url: str, tmp_path: Path, where: str) -> None:
    app = make_test_app(database_url, tmp_path,
                        WAREHOUSE_W_URL=f"duckdb:///{tmp_path / 'w.duckdb'}",
                        WAREHOUSE_W_SYNC_EVENTS="1")
    analysis = {"min_units_per_variant": 1, "min_days": 0, "conversion_window_hours": 72,
                **({"warehouse": "w"} if where == "warehouse" else {})}
    with app.app_context():
        started = start_bandit(app, metrics=METRICS[:1], variants=VARIANTS,
                               analysis=analysis)
    with app.app_context(), get_db(app).sessionmaker() as db:
        experiment = linked_bandit(db, started)
        periods = bandits.periods_of(db, experiment.id)
        read = routing.reallocation_periods(db, experiment, periods).sums("click")
        reported = routing.aggregates_for(
            db, experiment, AnalysisSettings.model_validate(experiment.analysis),
            sum_specs(experiment.metrics), rollup=False)
        body = analyze_experiment(db, "banner", now=started + timedelta(days=2)).body
        # What the reallocation read before: every device id a unit of its own.
        plain = bandits.primary_periods(db, experiment, periods).sums("click")
    assert reported.bandit is not None and reported.bandit.sums("click") == CLUSTERED
    assert read == CLUSTERED and plain == PLAIN
    assert "error" not in body, body.get("error")
    assert body["identity"] == {"clusters": 7, "linked_units": 6, "conflicts": 1}
    assert body["units"] == {"control": 3, "b": 3}  # the clusters the weights now follow
    get_warehouses(app).dispose()
    get_db(app).engine.dispose()
