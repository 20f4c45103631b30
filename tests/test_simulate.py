"""Traffic simulator: exposures through assignment, valid journeys, known effects, exact splits."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from experiments.auth import SYSTEM
from experiments.db import utcnow
from experiments.models import Event, Exposure
from experiments.schemas import FRICTION_KINDS
from experiments.services.lifecycle import create_experiment, get_experiment, transition
from experiments.services.simulate import SESSION_MARGIN, SimulationPlan, simulate_traffic
from tests.factories import experiment_payload

KEY = "checkout-redesign"
JOURNEY = ["landing", "cart", "checkout", "payment", "confirmation"]
END = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


@pytest.fixture
def running(app, db):
    """A started 50/50 experiment open to everyone."""
    with app.app_context():
        create_experiment(db, experiment_payload(targeting=[], layer=None, overrides={}), SYSTEM)
        transition(db, KEY, "start", SYSTEM)
        # Started long before the simulated window, which the simulator never dates earlier.
        get_experiment(db, KEY).started_at = END - timedelta(days=30)
        db.commit()
        yield db


def simulate(db, **plan) -> dict[str, int]:
    return simulate_traffic(db, KEY, SimulationPlan(start=END, **plan))


def units_with(db, **where) -> Counter[str]:
    """Exposed units per variant that have at least one event matching ``where``."""
    query = (select(Exposure.variant_key, func.count(func.distinct(Exposure.unit_id)))
             .join(Event, Event.unit_id == Exposure.unit_id)
             .group_by(Exposure.variant_key))
    for column, value in where.items():
        query = query.where(getattr(Event, column) == value)
    return Counter(dict(db.execute(query).all()))


def rates(db, counts: dict[str, int], **where) -> dict[str, float]:
    hits = units_with(db, **where)
    return {variant: hits[variant] / counts[variant] for variant in counts}


def test_every_visitor_is_exposed_through_assignment(running):
    counts = simulate(running, units=300, seed=1)
    assert sum(counts.values()) == 300 and set(counts) == {"control", "one-page"}
    stored = Counter(dict(running.execute(
        select(Exposure.variant_key, func.count()).group_by(Exposure.variant_key)).all()))
    assert stored == Counter(counts)


def test_events_are_valid_journeys_after_exposure_and_within_the_window(running):
    simulate(running, units=300, seed=2, days=3)
    rows = running.execute(select(Event, Exposure.exposed_at).join(
        Exposure, Exposure.unit_id == Event.unit_id)).all()
    assert rows
    for event, exposed_at in rows:
        assert exposed_at < event.occurred_at <= exposed_at + timedelta(hours=1)
        assert END - timedelta(days=3) - SESSION_MARGIN <= exposed_at <= END - SESSION_MARGIN
        if event.type == "step":
            assert event.name == event.step and event.step in JOURNEY
        elif event.type == "friction":
            assert event.friction_kind in FRICTION_KINDS and event.name == event.friction_kind
            assert event.step in JOURNEY
        elif event.type == "conversion":
            assert (event.name, event.step) == ("purchase", "confirmation") and event.value > 0
        else:
            assert event.type == "nps" and event.name == "nps"
            assert event.value in {float(score) for score in range(11)}


def test_a_new_experiment_gets_nothing_dated_before_its_start(running):
    """Started an hour ago, simulated over 14 days: everything lies after the start."""
    experiment = get_experiment(running, KEY)
    experiment.started_at = utcnow() - timedelta(hours=1)
    running.commit()
    started_at = experiment.started_at
    simulate_traffic(running, KEY, SimulationPlan(units=200, seed=3, days=14))
    exposed = running.scalars(select(Exposure.exposed_at)).all()
    occurred = running.scalars(select(Event.occurred_at)).all()
    assert len(exposed) == 200 and occurred
    assert min(exposed) >= started_at and min(occurred) > started_at
    assert max(exposed) - min(exposed) < timedelta(hours=1)  # spread over the hour it ran


def test_a_tenth_of_browsers_have_skewed_clocks_that_the_server_corrects(running):
    simulate(running, units=600, seed=4)
    exposures = {row.unit_id: row for row in running.scalars(select(Exposure))}
    skewed = {unit for unit, row in exposures.items() if row.client_exposed_at is not None}
    assert 40 <= len(skewed) <= 80  # ~10 % of 600
    offsets = [abs((row.client_exposed_at - row.exposed_at).total_seconds())
               for unit, row in exposures.items() if unit in skewed]
    assert min(offsets) >= 4 and max(offsets) > 600  # seconds to hours off
    events = running.scalars(select(Event)).all()
    for event in events:  # corrected onto the server's clock: after the exposure, always
        assert event.occurred_at > exposures[event.unit_id].exposed_at
        assert (event.client_occurred_at is not None
                and event.client_occurred_at != event.occurred_at) == (event.unit_id in skewed)


def test_units_leave_the_funnel_step_by_step(running):
    simulate(running, units=400, seed=3)
    reached = [sum(units_with(running, type="step", step=step).values()) for step in JOURNEY]
    assert reached[0] == 400
    assert reached == sorted(reached, reverse=True) and reached[-1] < reached[1]


def test_a_known_effect_shows_in_conversion_rates(running):
    counts = simulate(running, units=2000, seed=4, base_conversion=0.1,
                      effects={"one-page": 1.0})
    conversion = rates(running, counts, type="conversion")
    assert conversion["control"] == pytest.approx(0.10, abs=0.035)
    assert conversion["one-page"] == pytest.approx(0.20, abs=0.045)


def test_an_a_a_simulation_has_no_real_difference(running):
    counts = simulate(running, units=2000, seed=5)
    conversion = rates(running, counts, type="conversion")
    assert abs(conversion["control"] - conversion["one-page"]) < 0.05


def test_extra_friction_at_a_step_hits_only_that_variant(running):
    counts = simulate(running, units=2000, seed=6,
                      friction={("control", "landing", "error"): 0.3})
    errors = rates(running, counts, type="friction", friction_kind="error", step="landing")
    assert errors["control"] == pytest.approx(0.31, abs=0.05)
    assert errors["one-page"] == pytest.approx(0.01, abs=0.015)


def exposed_attributes(db) -> Counter[tuple[str, str]]:
    """Exposed units per (variant, device) from the stored attribute snapshots."""
    return Counter((variant, attributes.get("device")) for variant, attributes in db.execute(
        select(Exposure.variant_key, Exposure.attributes)).all())


def test_visitors_carry_attribute_levels_in_their_shares_and_keep_them(running):
    plan = {"units": 2000, "seed": 10, "attribute_mix": {"device": {"mobile": 0.7,
                                                                      "desktop": 0.3}},
            "attributes": {"plan": "free"}}
    simulate(running, **plan)
    devices = Counter(device for (_, device), n in exposed_attributes(running).items()
                      for _ in range(n))
    assert set(devices) == {"mobile", "desktop"}
    assert devices["mobile"] / 2000 == pytest.approx(0.7, abs=0.035)
    stored = {unit: attributes for unit, attributes in running.execute(
        select(Exposure.unit_id, Exposure.attributes)).all()}
    # A unit's levels come from its id: the plan gives every unit the same ones again.
    again = SimulationPlan(start=END, **plan)
    assert all(stored[unit] == again.unit_attributes(unit) for unit in stored)
    assert all(attributes["plan"] == "free" for attributes in stored.values())


def test_a_segment_effect_changes_conversion_only_in_its_level(running):
    mix = {"device": {"mobile": 0.5, "desktop": 0.5}}
    simulate(running, units=4000, seed=11, attribute_mix=mix, effects={"one-page": 0.0},
             segment_effects={("device", "mobile"): {"one-page": 1.0}})
    exposed = exposed_attributes(running)
    converted = Counter((variant, attributes.get("device")) for variant, attributes in
                        running.execute(select(Exposure.variant_key, Exposure.attributes)
                                        .join(Event, Event.unit_id == Exposure.unit_id)
                                        .where(Event.type == "conversion")).all())
    rate = {cell: converted[cell] / exposed[cell] for cell in exposed}
    assert rate[("one-page", "mobile")] == pytest.approx(0.20, abs=0.035)
    for cell in (("control", "mobile"), ("control", "desktop"), ("one-page", "desktop")):
        assert rate[cell] == pytest.approx(0.10, abs=0.03), cell


def test_a_forced_split_is_exact_even_on_a_50_50_experiment(running):
    counts = simulate(running, units=1000, seed=7, split={"control": 0.52, "one-page": 0.48})
    assert counts == {"control": 520, "one-page": 480}


def test_rerunning_with_the_same_seed_stores_nothing_new(running):
    first = simulate(running, units=200, seed=8)
    events = running.scalar(select(func.count()).select_from(Event))
    assert simulate(running, units=200, seed=8) == first
    assert running.scalar(select(func.count()).select_from(Event)) == events
    assert running.scalar(select(func.count()).select_from(Exposure)) == 200


def test_nps_answers_come_from_about_the_asked_share(running):
    counts = simulate(running, units=1000, seed=9, nps_rate=0.5)
    answered = sum(units_with(running, type="nps").values())
    assert answered / sum(counts.values()) == pytest.approx(0.5, abs=0.07)


def test_a_draft_experiment_cannot_be_simulated(app, db):
    with app.app_context():
        create_experiment(db, experiment_payload(targeting=[], layer=None), SYSTEM)
        with pytest.raises(ValueError, match="not running"):
            simulate(db, units=10)


@pytest.mark.parametrize("plan", [
    {"effects": {"two-page": 0.1}},
    {"split": {"control": 0.5, "two-page": 0.5}},
    {"friction": {("mobile", "payment", "error"): 0.1}},
    {"attribute_mix": {"device": {"mobile": 1.0}},
     "segment_effects": {("device", "mobile"): {"two-page": 0.1}}},
])
def test_unknown_variants_are_refused(running, plan):
    with pytest.raises(ValueError, match="unknown variants"):
        simulate(running, units=10, **plan)


@pytest.mark.parametrize("plan", [
    {"units": -1}, {"units": 1, "days": 0}, {"units": 1, "base_conversion": 1.5},
    {"units": 1, "nps_rate": 2.0}, {"units": 1, "split": {"control": -1.0}},
    {"units": 1, "split": {"control": float("nan")}}, {"units": 1, "effects": {"a": -2.0}},
    {"units": 1, "effects": {"a": float("inf")}},
    {"units": 1, "friction": {("control", "payment", "lag"): 0.1}},
    {"units": 1, "attribute_mix": {"device": {}}},
    {"units": 1, "attribute_mix": {"device": {"mobile": -0.5}}},
    {"units": 1, "segment_effects": {("device", "mobile"): {"one-page": 0.1}}},
    {"units": 1, "attribute_mix": {"device": {"mobile": 1.0}},
     "segment_effects": {("device", "mobile"): {"one-page": -3.0}}},
])
def test_impossible_plans_are_refused(plan):
    with pytest.raises(ValueError):
        SimulationPlan(**plan)


def test_the_cli_simulates_with_effects_and_prints_counts(running, runner):
    result = runner.invoke(args=["simulate", "--experiment", KEY, "--units", "120", "--seed",
                                 "3", "--days", "2", "--effect", "one-page=+0.2",
                                 "--friction", "control:payment:error=0.1"])
    assert result.exit_code == 0, result.output
    assert "simulated 120 visitors on 'checkout-redesign'" in result.output
    running.expire_all()
    assert running.scalar(select(func.count()).select_from(Exposure)) == 120


def test_the_cli_simulates_attribute_levels_and_segment_effects(running, runner):
    result = runner.invoke(args=["simulate", "--experiment", KEY, "--units", "200", "--seed",
                                 "12", "--attribute", "device:mobile=0.5",
                                 "--attribute", "device:desktop=0.5",
                                 "--segment-effect", "device:mobile:one-page=+0.5"])
    assert result.exit_code == 0, result.output
    running.expire_all()
    assert {device for _, device in exposed_attributes(running)} == {"mobile", "desktop"}


@pytest.mark.parametrize(("args", "message"), [
    (["--experiment", KEY, "--units", "5", "--effect", "one-page"], "NAME=NUMBER"),
    (["--experiment", KEY, "--units", "5", "--friction", "control=0.1"], "VARIANT:STEP:KIND"),
    (["--experiment", KEY, "--units", "5", "--attribute", "device=0.1"], "NAME:LEVEL=SHARE"),
    (["--experiment", KEY, "--units", "5", "--attribute", "device:mobile=0.5",
      "--segment-effect", "device:tablet:one-page=0.1"], "not in attribute_mix"),
    (["--experiment", KEY, "--units", "0"], "--units"),
    (["--experiment", "nope", "--units", "5"], "nope"),
    (["--experiment", KEY, "--units", "5", "--effect", "b-variant=0.1"], "unknown variants"),
])
def test_the_cli_explains_bad_arguments(running, runner, args, message):
    result = runner.invoke(args=["simulate", *args])
    assert result.exit_code != 0 and message in result.output
