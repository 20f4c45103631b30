"""SQL sufficient statistics on a small hand-made dataset, exact on both backends."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from experiments.auth import SYSTEM
from experiments.models import Event, Experiment, Exposure
from experiments.services import lifecycle
from experiments.services.pipeline import MetricSpec, aggregate_experiment, to_stats
from stats import CupedStats, MeanStats, NpsStats, ProportionStats, RatioStats
from tests.factories import experiment_payload

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
_ids = itertools.count()

METRICS = [
    {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary"},
    {"key": "revenue", "kind": "mean", "event": "purchase"},
    {"key": "views", "kind": "count", "event": "page_view"},
    {"key": "revenue-per-session", "kind": "ratio", "numerator": "purchase",
     "denominator": "session"},
    {"key": "payment-errors", "kind": "friction", "friction_kind": "error", "step": "payment",
     "role": "guardrail"},
    {"key": "nps", "kind": "nps"},
    {"key": "time-to-buy", "kind": "time_to_convert", "event": "purchase"},
]


def make_experiment(db: Session, key: str = "checkout", **overrides: Any) -> Experiment:
    """A running experiment with the metrics above (conversion window 72 h)."""
    fields = {"metrics": METRICS, "layer": None, "targeting": [], "overrides": {}, **overrides}
    payload = experiment_payload(key, **fields)
    lifecycle.create_experiment(db, payload, SYSTEM)
    return lifecycle.transition(db, key, "start", SYSTEM)


def expose(db: Session, experiment: Experiment, unit: str, variant: str,
           at: datetime = T0, *, override: bool = False) -> None:
    db.add(Exposure(experiment_id=experiment.id, unit_id=unit, variant_key=variant,
                    exposed_at=at, is_override=override))


def event(db: Session, unit: str, name: str, at: datetime, *, type: str = "conversion",
          value: float | None = None, step: str | None = None,
          friction_kind: str | None = None) -> None:
    db.add(Event(event_id=f"e{next(_ids)}", unit_id=unit, type=type, name=name, value=value,
                 step=step, friction_kind=friction_kind, occurred_at=at))


def hours(h: float) -> datetime:
    return T0 + timedelta(hours=h)


def seed_dataset(db: Session, experiment: Experiment) -> None:
    """Three control units, two treatment units and one override unit."""
    for unit, variant in (("c1", "control"), ("c2", "control"), ("c3", "control"),
                          ("t1", "one-page"), ("t2", "one-page")):
        expose(db, experiment, unit, variant)
    expose(db, experiment, "o1", "one-page", override=True)
    event(db, "c1", "purchase", hours(1), value=10)
    event(db, "c1", "purchase", hours(2), value=5)
    event(db, "c1", "page_view", hours(1), type="step", step="cart")
    event(db, "c1", "page_view", hours(2), type="step", step="checkout")
    event(db, "c1", "session", hours(0.1), type="custom")
    event(db, "c1", "nps", hours(1), type="nps", value=9)
    event(db, "c1", "nps", hours(5), type="nps", value=3)
    event(db, "c1", "error", hours(1), type="friction", step="payment", friction_kind="error")
    event(db, "c2", "purchase", hours(-1), value=20)     # before exposure: pre-period only
    event(db, "c2", "purchase", hours(73), value=50)     # after the 72 h window
    event(db, "c2", "page_view", hours(10), type="step", step="cart")
    event(db, "c2", "session", hours(0.2), type="custom")
    event(db, "c2", "session", hours(0.3), type="custom")
    event(db, "t1", "purchase", hours(3), value=30)
    event(db, "t1", "nps", hours(4), type="nps", value=10)
    event(db, "t1", "error", hours(1), type="friction", step="cart", friction_kind="error")
    event(db, "t1", "session", hours(0.1), type="custom")
    event(db, "t2", "purchase", hours(0.5), value=7)
    event(db, "t2", "error", hours(0.4), type="friction", step="payment", friction_kind="error")
    event(db, "t2", "page_view", hours(0.2), type="step", step="cart")
    event(db, "o1", "purchase", hours(1), value=100)     # override unit: never analysed
    db.commit()


def aggregates(db: Session, experiment: Experiment, *, cuped: bool = False) -> Any:
    return aggregate_experiment(db, experiment.id, [MetricSpec.of(m) for m in experiment.metrics],
                                hours=72, cuped=cuped)


def stats_of(result: Any, metric: str) -> dict[str, Any]:
    kind = next(m["kind"] for m in METRICS if m["key"] == metric)
    return {variant: to_stats(kind, sums)[0]
            for variant, sums in result.metrics[metric].totals().items()}


EXPECTED = {
    "purchase": {"control": ProportionStats(3, 1), "one-page": ProportionStats(2, 2)},
    "revenue": {"control": MeanStats(3, 15.0, 225.0), "one-page": MeanStats(2, 37.0, 949.0)},
    "views": {"control": MeanStats(3, 3.0, 5.0), "one-page": MeanStats(2, 1.0, 1.0)},
    "revenue-per-session": {
        "control": RatioStats(3, 15.0, 225.0, 3.0, 5.0, 15.0),
        "one-page": RatioStats(2, 37.0, 949.0, 1.0, 1.0, 30.0)},
    "payment-errors": {"control": ProportionStats(3, 1), "one-page": ProportionStats(2, 1)},
    "nps": {"control": NpsStats(1, 0, 1), "one-page": NpsStats(1, 1, 0)},
    "time-to-buy": {"control": MeanStats(1, 1.0, 1.0), "one-page": MeanStats(2, 3.5, 9.25)},
}


@pytest.mark.parametrize("metric", list(EXPECTED))
def test_sufficient_statistics_are_exact_for_every_metric_kind(db, metric):
    experiment = make_experiment(db)
    seed_dataset(db, experiment)
    result = stats_of(aggregates(db, experiment), metric)
    expected = EXPECTED[metric]
    assert set(result) == set(expected)
    for variant, record in expected.items():
        got = result[variant]
        assert type(got) is type(record)
        for name, value in vars(record).items():
            assert getattr(got, name) == pytest.approx(value, abs=1e-6), (variant, name)


def test_units_per_variant_exclude_override_units(db):
    experiment = make_experiment(db)
    seed_dataset(db, experiment)
    units = aggregates(db, experiment).units.totals()
    assert {variant: sums["n"] for variant, sums in units.items()} == {
        "control": 3, "one-page": 2}


def test_cuped_covariates_come_from_the_pre_exposure_window(db):
    experiment = make_experiment(db)
    seed_dataset(db, experiment)
    event(db, "c3", "purchase", hours(-80), value=99)  # older than the 72 h pre-window
    db.commit()
    result = aggregates(db, experiment, cuped=True)
    control = result.metrics["purchase"].totals()["control"]
    # Only c2 bought in the 72 h before exposure; c2 did not convert afterwards.
    assert to_stats("conversion", control)[1] == CupedStats(1.0, 1.0, 0.0)
    revenue = to_stats("mean", result.metrics["revenue"].totals()["control"])
    assert revenue == (MeanStats(3, 15.0, 225.0), CupedStats(20.0, 400.0, 0.0))
    # Ratio, NPS and time-to-convert metrics carry no covariates.
    assert to_stats("ratio", result.metrics["revenue-per-session"].totals()["control"])[1] is None


def test_a_unit_exposed_to_two_experiments_counts_in_both(db):
    first = make_experiment(db, "first")
    second = make_experiment(db, "second")
    expose(db, first, "u1", "control")
    expose(db, second, "u1", "one-page", at=hours(24))
    event(db, "u1", "purchase", hours(30), value=12)
    db.commit()
    one = stats_of(aggregates(db, first), "purchase")
    two = stats_of(aggregates(db, second), "purchase")
    assert one == {"control": ProportionStats(1, 1)}
    assert two == {"one-page": ProportionStats(1, 1)}


def test_rows_are_split_by_utc_exposure_day(db):
    experiment = make_experiment(db)
    expose(db, experiment, "a", "control", at=datetime(2026, 3, 1, 23, 30, tzinfo=UTC))
    expose(db, experiment, "b", "control", at=datetime(2026, 3, 2, 0, 30, tzinfo=UTC))
    event(db, "b", "purchase", datetime(2026, 3, 2, 1, 0, tzinfo=UTC), value=1)
    db.commit()
    result = aggregates(db, experiment)
    assert result.units.days() == ["2026-03-01", "2026-03-02"]
    purchase = result.metrics["purchase"]
    assert purchase.totals(until="2026-03-01")["control"]["sum"] == 0
    assert purchase.totals()["control"]["sum"] == 1


def test_journey_counts_units_per_step_and_friction_kind(db):
    experiment = make_experiment(db)
    seed_dataset(db, experiment)
    journey = aggregates(db, experiment).journey
    assert journey.reached[("control", "cart")] == 2
    assert journey.reached[("control", "checkout")] == 1
    assert journey.reached[("one-page", "cart")] == 2
    assert journey.reached[("one-page", "payment")] == 1
    assert journey.friction[("control", "payment", "error")] == 1
    assert journey.friction[("one-page", "cart", "error")] == 1
    assert journey.friction[("one-page", "cart", "rage_click")] == 0


def test_an_experiment_without_exposures_has_no_rows(db):
    experiment = make_experiment(db)
    result = aggregates(db, experiment, cuped=True)
    assert result.units.totals() == {}
    assert result.metrics["purchase"].totals() == {}


def seed_traffic(db: Session, experiment: Experiment, *, units: dict[str, int],
                 conversion: dict[str, float], reach: dict[str, float] | None = None,
                 friction: dict[tuple[str, str, str], float] | None = None,
                 start: datetime = T0, days: int = 1, seed: int = 0) -> None:
    """Bulk traffic with known rates: exposures spread over ``days``, purchases, steps, friction.

    ``reach`` gives each journey step's share of units (every variant), ``friction`` the
    probability of a (variant, step, kind) friction event among the units reaching that step.
    """
    rng = random.Random(seed)
    exposures, events = [], []
    for variant, count in units.items():
        for index in range(count):
            unit = f"{experiment.key}-{variant}-{index}"
            at = start + timedelta(days=index % days, minutes=rng.randrange(600))
            exposures.append({"experiment_id": experiment.id, "unit_id": unit,
                              "variant_key": variant, "exposed_at": at, "is_override": False})
            if rng.random() < conversion[variant]:
                events.append(_row(unit, "purchase", at + timedelta(hours=2), "conversion",
                                   value=round(rng.uniform(20, 80), 2)))
            for step, share in (reach or {}).items():
                if rng.random() >= share:
                    continue
                events.append(_row(unit, "view", at + timedelta(minutes=5), "step", step=step))
                for kind in FRICTION_KINDS_USED:
                    p = (friction or {}).get((variant, step, kind), 0.0)
                    if rng.random() < p:
                        events.append(_row(unit, kind, at + timedelta(minutes=6), "friction",
                                           step=step, friction_kind=kind))
    db.execute(Exposure.__table__.insert(), exposures)
    if events:
        db.execute(Event.__table__.insert(), events)
    db.commit()


FRICTION_KINDS_USED = ("error", "rage_click", "form_error")


def _row(unit: str, name: str, at: datetime, type: str, *, value: float | None = None,
         step: str | None = None, friction_kind: str | None = None) -> dict[str, Any]:
    return {"event_id": f"e{next(_ids)}", "unit_id": unit, "type": type, "name": name,
            "step": step, "friction_kind": friction_kind, "value": value, "occurred_at": at,
            "received_at": at, "properties": {}}
