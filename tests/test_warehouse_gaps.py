"""A bandit and an experiment with identity links, analysed in a warehouse (SPEC §13, §14,
§15): the same report as in Parcours's own database — period-weighted estimates and the
SRM against the period weights for the bandit, customers linked across devices analysed
as one unit — on SQLite and PostgreSQL against DuckDB and chDB.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, delete, insert, select

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import AllocationPeriod, Event, Experiment, Exposure, IdentityLink, Report
from experiments.services import bandits
from experiments.services.analysis import analyze_experiment
from experiments.services.erasure import erase_unit
from experiments.services.warehouses import routing, tables
from experiments.services.warehouses.engines import get_warehouses
from experiments.services.warehouses.rollup import Fold, superseded
from stats import MeanStats
from tests import test_warehouse_reports
from tests.conftest import auth_headers, make_test_app
from tests.test_admin_support import cheap_argon2  # noqa: F401  (autouse fixture)
from tests.test_bandit_periods import METRICS as BANDIT_METRICS
from tests.test_bandit_periods import VARIANTS as BANDIT_VARIANTS
from tests.test_bandits import start_bandit
from tests.test_warehouse_reports import (
    METRICS,
    T0,
    add_journey_traffic,
    differences,
    start,
    without_times,
)
from tests.test_warehouse_sync import run_child

warehouse_url = test_warehouse_reports.warehouse_url  # the same fixture: DuckDB, then chDB


def both_ways(app: Flask, key: str, now: Any, warehouse_url: str) -> tuple[dict, dict, int]:
    """The report analysed in Parcours, then (analysis.warehouse ``w``) in the warehouse,
    a pass over every unit split into buckets of at most 64 units (``units_per_pass``, as
    at millions on an in-process engine); and how many statements read a bucket."""
    with get_db(app).sessionmaker() as db:
        in_parcours = analyze_experiment(db, key, now=now).body
        db.execute(delete(Report))  # no previous report on either side
        stored = db.scalar(select(Experiment).where(Experiment.key == key))
        stored.analysis = {**stored.analysis, "warehouse": "w"}
        db.commit()
    analysed = run_child(app, warehouse_url, "analyze", key, now.isoformat(), "64")
    assert analysed.returncode == 0, analysed.stderr
    in_warehouse = json.loads(analysed.stdout.splitlines()[-1])
    bucketed = json.loads(analysed.stdout.splitlines()[-2])["bucketed"]
    assert "error" not in in_warehouse, in_warehouse["error"]
    diffs = differences(without_times(in_warehouse), without_times(in_parcours))
    assert not diffs, "\n".join(diffs)
    return in_parcours, in_warehouse, bucketed


def test_a_bandit_analysed_in_a_warehouse_is_period_weighted_as_in_parcours(
        database_url: str, tmp_path: Path, warehouse_url: str) -> None:
    app = make_test_app(database_url, tmp_path)
    started = start_bandit(app, metrics=BANDIT_METRICS, variants=BANDIT_VARIANTS)
    # Period starts to the microsecond, with a unit exposed 1 µs before each and one exactly
    # at it: the warehouse must put them in the same periods as Parcours.
    starts = [started, started + timedelta(hours=24, microseconds=123457),
              started + timedelta(hours=48, microseconds=654321)]
    weights = [{"control": 0.5, "b": 0.5}, {"control": 0.2, "b": 0.8},
               {"control": 0.1, "b": 0.9}]
    rates = [{"control": 0.10, "b": 0.12}, {"control": 0.05, "b": 0.06},
             {"control": 0.20, "b": 0.25}]
    rng = random.Random(13)
    with get_db(app).sessionmaker() as db:
        experiment = db.scalar(select(Experiment).where(Experiment.key == "banner"))
        for number in (1, 2):
            db.add(AllocationPeriod(experiment_id=experiment.id, period=number,
                                    started_at=starts[number], weights=weights[number],
                                    p_best={"control": 0.3, "b": 0.7}, seed=40 + number))
        exposures: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for index in range(1500):
            period = index % 3
            at = starts[period] + timedelta(hours=rng.uniform(0, 23.9))
            if index < 4:  # the boundary units
                at = starts[1 + index // 2] - timedelta(microseconds=1 - index % 2)
                period = 1 + index // 2 - (1 - index % 2)
            arm = "b" if rng.random() < weights[period]["b"] else "control"
            unit = f"v{index:04d}"
            exposures.append({"experiment_id": experiment.id, "unit_id": unit,
                              "variant_key": arm, "exposed_at": at})
            if index < 4 or rng.random() < rates[period][arm]:
                for name, value in (("click", None), ("purchase", rng.uniform(5, 50))):
                    events.append({"event_id": f"{name}-{unit}", "unit_id": unit,
                                   "type": "conversion", "name": name, "value": value,
                                   "occurred_at": at + timedelta(minutes=rng.uniform(1, 600))})
        db.execute(insert(Exposure), exposures)
        db.execute(insert(Event), events)
        db.commit()
        own = bandits.primary_periods(db, experiment, bandits.periods_of(db, experiment.id))
        own_sums = {str(number): {arm: [s.n, s.sum, s.sum_squares] for arm, s in arms.items()}
                    for number, arms in own.sums("click").items()}
    now = starts[2] + timedelta(days=2)
    in_parcours, _, bucketed = both_ways(app, "banner", now, warehouse_url)
    assert bucketed == 4  # 1,500 units: the most buckets, per weight period in each
    # Kept between analyses (the plan was recorded above; every event folded, then read
    # with each unit's weight period computed from the exposure time the table carries).
    kept = run_child(app, warehouse_url, "kept", "banner", now.isoformat(), "2")
    assert kept.returncode == 0, kept.stderr
    kept_run = json.loads(kept.stdout.splitlines()[-1])
    assert [base is not None for _, base, _, _ in kept_run["folds"]] == [False, True]
    diffs = differences(without_times(kept_run["report"]), without_times(in_parcours))
    assert not diffs, "\n".join(diffs)
    # A reallocation of the warehouse bandit reads its sums there too: the same ones.
    read = run_child(app, warehouse_url, "periods", "banner")
    assert read.returncode == 0, read.stderr
    assert not differences(json.loads(read.stdout.splitlines()[-1]), own_sums)
    assert own_sums["1"]["b"][0] > 0 and set(own_sums) == {"0", "1", "2"}

    assert in_parcours["period_weighted"] is True
    assert sum(in_parcours["units"].values()) == 1500
    # The SRM is tested against the units the period weights predict, not 50/50.
    expected = in_parcours["expected_units"]
    assert expected["b"] > 1.5 * expected["control"]
    click = next(m for m in in_parcours["metrics"] if m["key"] == "click")
    assert click["period_weighted"] is True
    assert all(v.get("period_weighted") for v in click["variants"])
    get_db(app).engine.dispose()


def test_linked_units_analysed_in_a_warehouse_are_one_unit_as_in_parcours(
        database_url: str, tmp_path: Path, warehouse_url: str) -> None:
    app = make_test_app(database_url, tmp_path)
    experiment = start(app, "wh-identity", metrics=METRICS, overrides={"u0000": "one-page"},
                       analysis={"dimensions": ["country"]})
    with get_db(app).sessionmaker() as db:
        experiment = db.get(Experiment, experiment.id)
        experiment.started_at = T0
        add_journey_traffic(db, experiment, 300)
        variants = dict(db.execute(select(Exposure.unit_id, Exposure.variant_key)
                                   .where(Exposure.experiment_id == experiment.id)).all())
        links: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for index in range(1, 300, 6):  # two devices per customer; some in two variants
            customer = f"customer-{index}"
            for offset in (0, 1):
                links.append({"anonymous_id": f"u{index + offset:04d}", "user_id": customer,
                              "occurred_at": T0 + timedelta(hours=index + offset)})
            # A back-office purchase under the customer id, inside the window.
            events.append({"event_id": f"bo-{index}", "unit_id": customer,
                           "type": "conversion", "name": "purchase", "value": 99.5,
                           "occurred_at": T0 + timedelta(hours=100)})
        # A shared computer: linked to two customers, the earliest link wins.
        links.append({"anonymous_id": "u0002", "user_id": "customer-shared",
                      "occurred_at": T0 - timedelta(hours=1)})
        db.execute(insert(IdentityLink), links)
        db.execute(insert(Event), events)
        db.commit()
        conflicting = sum(variants[f"u{i:04d}"] != variants[f"u{i + 1:04d}"]
                          for i in range(7, 300, 6))
    now = T0 + timedelta(days=6)
    in_parcours, _, bucketed = both_ways(app, "wh-identity", now, warehouse_url)
    assert bucketed == 0  # the percentile cap on revenue ranks every cluster at once
    with get_db(app).sessionmaker() as db:  # capped at an absolute value: in buckets
        stored = db.get(Experiment, experiment.id)
        for metric in stored.metrics:
            if metric.cap:
                metric.cap = {"type": "absolute", "value": 60.0}
        stored.analysis = {**stored.analysis, "warehouse": None}
        db.commit()
    _, _, bucketed = both_ways(app, "wh-identity", now, warehouse_url)
    assert bucketed == 4  # 250 clusters, buckets of their ids

    identity = in_parcours["identity"]
    # 299 exposed units (u0000 is an override); 49 customers on two devices; u0001 and u0002
    # apart (u0002 is the shared computer's, linked first to another customer).
    assert identity == {"clusters": 299 - 49, "linked_units": 100, "conflicts": conflicting}
    assert conflicting > 0
    assert in_parcours["segments"]  # clusters segmented by their first exposure, both ways

    # Erasing a linked unit erases its links in the warehouse too (either side).
    with get_db(app).sessionmaker() as db:
        erase_unit(db, "u0001", SYSTEM)
        erase_unit(db, "customer-7", SYSTEM)
        db.commit()
        kept = sorted(db.scalars(select(IdentityLink.id)))
    synced = run_child(app, warehouse_url, "sync")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout.splitlines()[-1])["parcours_identity_links"] == kept
    assert len(kept) == len(links) - 3  # u0001's link, customer-7's two
    get_db(app).engine.dispose()


def test_reallocating_a_bandit_whose_warehouse_is_down_is_a_503_naming_it(
        database_url: str, tmp_path: Path) -> None:
    app = make_test_app(database_url, tmp_path,
                        WAREHOUSE_DOWN_URL=f"duckdb:///{tmp_path / 'missing-dir' / 'dw.duckdb'}")
    with app.app_context():  # where the configured warehouses are known
        start_bandit(app, metrics=BANDIT_METRICS, variants=BANDIT_VARIANTS,
                     analysis={"warehouse": "down", "min_units_per_variant": 10,
                               "min_days": 0})
    response = app.test_client().post("/api/v1/experiments/banner/reallocate",
                                      headers=auth_headers(app))
    assert response.status_code == 503
    assert "warehouse 'down'" in response.get_json()["error"]["message"]
    get_db(app).engine.dispose()


def test_a_warehouse_reallocation_reads_the_relations_the_report_reads(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One helper opens the warehouse for both (synced, override units left out): the
    # reallocation's per-period sums are the report's units, the override units gone.
    app = make_test_app(database_url, tmp_path,
                        WAREHOUSE_W_URL=f"duckdb:///{tmp_path / 'w.duckdb'}",
                        WAREHOUSE_W_SYNC_EVENTS="1")
    with app.app_context():
        started = start_bandit(app, metrics=BANDIT_METRICS, variants=BANDIT_VARIANTS,
                               overrides={"listed": "b"},
                               analysis={"warehouse": "w", "min_units_per_variant": 10,
                                         "min_days": 0})
    opened: list[str] = []
    real = routing._opened

    def spy(engine: Any, exposures: Any, events: Any, experiment: Experiment,
            session: Any, **options: Any) -> Any:
        opened.append(experiment.key)
        return real(engine, exposures, events, experiment, session, **options)

    monkeypatch.setattr(routing, "_opened", spy)
    at = started + timedelta(minutes=1)
    with app.app_context(), get_db(app).sessionmaker() as db:
        experiment = db.scalar(select(Experiment).where(Experiment.key == "banner"))
        rows = [("c0", "control", False, True), ("c1", "control", False, False),
                ("c2", "control", False, False), ("b0", "b", False, True),
                ("b1", "b", False, True), ("b2", "b", False, False),
                ("flagged", "b", True, True), ("listed", "b", False, True)]
        db.execute(insert(Exposure), [{"experiment_id": experiment.id, "unit_id": unit,
                                       "variant_key": arm, "exposed_at": at,
                                       "is_override": flagged}
                                      for unit, arm, flagged, _ in rows])
        db.execute(insert(Event), [{"event_id": f"click-{unit}", "unit_id": unit,
                                    "type": "conversion", "name": "click",
                                    "occurred_at": at + timedelta(minutes=5)}
                                   for unit, _, _, clicked in rows if clicked])
        db.commit()
        read = routing.reallocation_periods(db, experiment,
                                            bandits.periods_of(db, experiment.id))
        body = analyze_experiment(db, "banner", now=started + timedelta(days=1)).body
    assert opened == ["banner", "banner"]
    assert read.sums("click") == {0: {"control": MeanStats(3, 1.0, 1.0),
                                      "b": MeanStats(3, 2.0, 2.0)}}
    assert "error" not in body and body["units"] == {"control": 3, "b": 3}
    get_warehouses(app).dispose()
    get_db(app).engine.dispose()


@pytest.mark.parametrize("url", ["duckdb:///:memory:", "chdb:///:memory:"])
def test_a_fold_leaves_a_concurrent_folds_table_to_the_next_one(url: str) -> None:
    """Two folds from the same version record the same next version: the one that drops
    last keeps the other's table (a report may read it by its record); the next fold,
    from a later version, drops both older ones, and never another experiment's."""
    engine = create_engine(url)
    records = [(1, 0, "parcours_rollup_1_0a"), (1, 1, "parcours_rollup_1_1a"),
               (1, 2, "parcours_rollup_1_2a"), (1, 2, "parcours_rollup_1_2b"),
               (2, 0, "parcours_rollup_2_0a"), (1, 0, None)]
    with engine.connect() as connection:
        tables.create_rollups(connection)
        connection.execute(insert(tables.rollups), [
            {"experiment_id": experiment, "version": version, "plan_key": "plan",
             "base_table": table, "events_through": 0, "exposures_through": 0,
             "exposure_rows": 0} for experiment, version, table in records])
        from_first = Fold(1, "plan", "parcours_rollup_1_1a", 0, 0, 0)
        assert superseded(connection, 1, from_first) == {"parcours_rollup_1_0a"}
        from_second = Fold(2, "plan", "parcours_rollup_1_2b", 0, 0, 0)
        assert superseded(connection, 1, from_second) == {
            "parcours_rollup_1_0a", "parcours_rollup_1_1a", "parcours_rollup_1_2a"}
    engine.dispose()
