"""The per-unit rollup gives exactly the full pass's numbers while data keeps arriving."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import Experiment, Exposure, RollupState, unit_rollups
from experiments.schemas import ConcludeIn, ExperimentPatch
from experiments.services.analysis import analyze_experiment, analyze_running
from experiments.services.lifecycle import transition, update_experiment
from experiments.services.pipeline import MetricSpec, aggregate_experiment
from experiments.services.pipeline.rollup import slots_for
from tests.test_aggregation import event, expose, hours, make_experiment, seed_dataset


def aggregated(db: Session, experiment: Experiment, *, rollup: bool, cuped: bool = True,
               journey: list[str] | None = None) -> dict[str, Any]:
    """Every number the report is built from, as plain dicts."""
    result = aggregate_experiment(db, experiment.id,
                                  [MetricSpec.of(m) for m in experiment.metrics], hours=72,
                                  cuped=cuped, journey=journey, rollup=rollup)
    db.commit()
    return {"units": {key: dict(sums) for key, sums in result.units.rows.items()},
            "metrics": {name: {key: dict(sums) for key, sums in daily.rows.items()}
                        for name, daily in result.metrics.items()},
            "reached": result.journey.reached, "friction": result.journey.friction}


def assert_same_numbers(db: Session, experiment: Experiment, **options: Any) -> None:
    """The rollup path (run first: it may fold) equals a full pass over the events."""
    rolled = aggregated(db, experiment, rollup=True, **options)
    full = aggregated(db, experiment, rollup=False, **options)
    _close(rolled, full)


def _close(rolled: Any, full: Any) -> bool:
    """Equal structures; floats equal to 1e-9 relative (sums may add in another order)."""
    if isinstance(full, dict):
        assert rolled.keys() == full.keys()
        return all(_close(rolled[key], full[key]) for key in full)
    assert rolled == pytest.approx(full, rel=1e-9, abs=1e-12)
    return True


def rollup_rows(db: Session, experiment: Experiment) -> int:
    return db.scalar(select(func.count()).select_from(unit_rollups)
                     .where(unit_rollups.c.experiment_id == experiment.id))


def more_traffic(db: Session, experiment: Experiment, round_: int) -> None:
    """Events of known units (earlier purchases, later answers, pre-period activity), and
    of a new unit exposed two rounds later (after its events were folded)."""
    at = hours(round_)
    event(db, "c1", "purchase", hours(0.5), value=3 * round_)   # an earlier first purchase
    event(db, "c1", "nps", at + (at - hours(0)), type="nps", value=10)  # a later answer
    event(db, "c2", "purchase", hours(-2 - round_), value=1)    # pre-exposure (CUPED)
    event(db, "c3", "page_view", at, type="step", step="payment")
    event(db, "t2", "error", at, type="friction", step="checkout", friction_kind="retry")
    event(db, "t2", "session", at, type="custom")
    event(db, f"n{round_}", "purchase", hours(round_ + 0.5), value=11)
    event(db, f"n{round_}", "purchase", hours(round_ - 1), value=4)  # pre-exposure
    event(db, f"n{round_}", "nps", hours(round_ + 1), type="nps", value=2)
    if round_ > 2:
        expose(db, experiment, f"n{round_ - 2}", "one-page" if round_ % 2 else "control",
               at=hours(round_ - 2))
    db.commit()


def test_the_rollup_equals_the_full_pass_as_events_and_units_arrive(db):
    experiment = make_experiment(db)
    seed_dataset(db, experiment)
    for round_ in range(1, 7):
        assert_same_numbers(db, experiment)
        more_traffic(db, experiment, round_)
    assert_same_numbers(db, experiment)
    if db.get_bind().dialect.name == "postgresql":
        state = db.get(RollupState, experiment.id)
        assert state.events_through > 0 and state.exposures_through > 0
        assert rollup_rows(db, experiment) >= 5   # units with events, folded
    else:
        assert rollup_rows(db, experiment) == 0   # SQLite always computes the full pass


def test_a_new_plan_rebuilds_the_rollup(db):
    experiment = make_experiment(db)
    seed_dataset(db, experiment)
    for _ in range(2):
        aggregated(db, experiment, rollup=True)
    more_traffic(db, experiment, 1)
    assert_same_numbers(db, experiment, cuped=False)
    assert_same_numbers(db, experiment, cuped=False, journey=["cart", "payment"])
    assert_same_numbers(db, experiment)


def test_an_open_transaction_holds_back_the_fold(postgres_database_url, tmp_path):
    from tests.conftest import make_test_app

    app = make_test_app(postgres_database_url, tmp_path)
    with app.app_context(), get_db(app).session() as db, get_db(app).session() as writer:
        experiment = make_experiment(db)
        seed_dataset(db, experiment)
        writer.execute(text("SELECT 1"))   # a transaction begins, as a write in flight
        aggregated(db, experiment, rollup=True)        # sees the ids
        assert_same_numbers(db, experiment)            # not settled: nothing folded
        assert db.get(RollupState, experiment.id).events_through == 0
        writer.rollback()
        assert_same_numbers(db, experiment)            # settled: folded
        assert db.get(RollupState, experiment.id).events_through > 0


def test_concurrent_analyses_fold_each_event_once(postgres_database_url, tmp_path):
    from tests.conftest import make_test_app

    app = make_test_app(postgres_database_url, tmp_path)
    with app.app_context(), get_db(app).session() as db:
        experiment = make_experiment(db)
        seed_dataset(db, experiment)
        aggregated(db, experiment, rollup=True)
        more_traffic(db, experiment, 1)
        expected = aggregated(db, experiment, rollup=False)
    results, errors = [], []

    def analyse() -> None:
        try:
            with app.app_context(), get_db(app).session() as session:
                results.append(aggregated(session, session.get(Experiment, experiment.id),
                                          rollup=True))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=analyse) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 4
    for result in results:
        _close(result, expected)
    with app.app_context(), get_db(app).session() as db:
        assert db.get(RollupState, experiment.id).events_through > 0
        _close(aggregated(db, db.get(Experiment, experiment.id), rollup=True), expected)


def test_plans_larger_than_the_slots_fall_back_to_the_full_pass():
    assert slots_for([(f"w{i}", "or") for i in range(8)]) is not None
    assert slots_for([(f"w{i}", "or") for i in range(9)]) is None
    assert slots_for([("m0_y", "sum"), ("m1_y", "min"), ("m2_answer", "max")]) == {
        "m0_y": ("v0", "sum"), "m1_y": ("t0", "min"), "m2_answer": ("a0", "max")}


def test_a_concluded_experiment_loses_its_rollup_and_is_analysed_from_its_events(app, db):
    experiment = make_experiment(db)
    seed_dataset(db, experiment)
    for _ in range(2):
        analyze_experiment(db, experiment.key)
    postgres = db.get_bind().dialect.name == "postgresql"
    assert rollup_rows(db, experiment) == (4 if postgres else 0)  # the units with events
    transition(db, experiment.key, "conclude", SYSTEM,
               ConcludeIn(outcome="no_difference", winner=None, learnings=""))
    analyze_running(get_db(app).session)
    db.expire_all()
    assert rollup_rows(db, experiment) == 0
    assert db.get(RollupState, experiment.id) is None
    report = analyze_experiment(db, experiment.key)   # on demand, from the events
    assert report.body["units"] == {"control": 3, "one-page": 2}
    assert db.get(RollupState, experiment.id) is None


def test_a_unit_forced_by_a_new_override_leaves_the_analysis_folded_or_not(db):
    experiment = make_experiment(db)
    seed_dataset(db, experiment)
    for round_ in range(1, 4):  # folded into the rollup on PostgreSQL
        more_traffic(db, experiment, round_)
        assert_same_numbers(db, experiment)
    units_before = units_per_arm(db, experiment)
    update_experiment(db, experiment.key, ExperimentPatch(overrides={"c1": "one-page"}),
                      SYSTEM)
    flagged = dict(db.execute(select(Exposure.unit_id, Exposure.is_override)
                              .where(Exposure.experiment_id == experiment.id)).all())
    assert flagged["c1"] is True and flagged["c2"] is False
    assert_same_numbers(db, experiment)
    assert units_per_arm(db, experiment) == {"control": units_before["control"] - 1,
                                             "one-page": units_before["one-page"]}


def units_per_arm(db: Session, experiment: Experiment) -> dict[str, float]:
    arms: dict[str, float] = {}
    for (arm, _day), sums in aggregated(db, experiment, rollup=True)["units"].items():
        arms[arm] = arms.get(arm, 0) + sums["n"]
    return arms


def test_the_first_fold_leaves_the_rollup_analysed(db):
    """A first fold writes a whole experiment's units at once: ANALYZE right after, so the
    next reports are planned for the table's real size (autovacuum may be off or late)."""
    experiment = make_experiment(db)
    seed_dataset(db, experiment)
    for _ in range(2):
        aggregated(db, experiment, rollup=True)
    db.commit()
    if db.get_bind().dialect.name != "postgresql":
        assert rollup_rows(db, experiment) == 0  # SQLite keeps no rollup: nothing to plan
        return
    planned = db.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'unit_rollups'"))
    assert planned == db.scalar(select(func.count()).select_from(unit_rollups)) >= 4
