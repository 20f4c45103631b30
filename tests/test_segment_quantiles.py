"""Quantile metrics inside segment levels (SPEC §11), end to end on SQLite and PostgreSQL:
each level's order statistics come from the database grouped by variant and level (the
merged ``__other__`` being one partition of its own), and its comparisons equal
``stats.quantile`` on the raw durations in numpy, in the dimension's BH family."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session

from experiments.models import Event, Exposure
from experiments.services.analysis import analyze_experiment
from experiments.services.segments import (
    NULL,
    OTHER,
    QUANTILE_HETEROGENEITY_NOTE,
    SLICE_WARNING,
)
from stats import adjust_p_values
from stats.quantile import QuantileVariantInput, analyze_quantiles, stats_from_sorted
from tests.test_admin_support import cheap_argon2, logged_in  # noqa: F401  (autouse fixture)
from tests.test_aggregation import T0, make_experiment
from tests.test_quantile_report import ANALYSIS

METRICS = [
    {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary",
     "direction": "increase"},
    {"key": "cart-time-p90", "kind": "quantile", "quantile": 0.9, "step": "cart",
     "source": "step_duration", "role": "secondary", "direction": "decrease"},
]
BIG = {"FR": 300, "DE": 300, "ES": 300}  # units per arm; the treatment helps in FR only
SMALL = {f"C{index:02d}": 5 + index for index in range(20)}  # the 3 smallest → __other__
NO_COUNTRY = 12  # per arm → __null__
Durations = dict[str, dict[str, list[float]]]  # level as reported → variant → seconds


def _duration(rng: random.Random, variant: str, country: str | None) -> float:
    """Seconds in the cart: log-normal (median 55 s, p90 104 s); in FR the treatment
    shortens the slow tail only (beyond 60 s, a quarter of the time: p90 ≈ 71 s)."""
    seconds = round(rng.lognormvariate(4, 0.5), 1)
    if country == "FR" and variant == "one-page" and seconds > 60:
        seconds = round(60 + (seconds - 60) / 4, 1)
    return seconds


def _traffic(db: Session, experiment_id: int) -> Durations:
    """Every unit: a cart step, then checkout after its duration (and a purchase for one in
    five); returns the durations per reported level and variant."""
    rng = random.Random(21)
    kept = [*BIG, *sorted(SMALL, key=lambda c: -SMALL[c])[:17]]
    exposures, events, durations = [], [], defaultdict(lambda: defaultdict(list))
    per_arm: list[tuple[str | None, int]] = [*BIG.items(), *SMALL.items(), (None, NO_COUNTRY)]
    for country, units in per_arm:
        level = NULL if country is None else country if country in kept else OTHER
        for variant in ("control", "one-page"):
            for index in range(units):
                unit = f"{country}-{variant}-{index}"
                exposures.append({"experiment_id": experiment_id, "unit_id": unit,
                                  "variant_key": variant, "exposed_at": T0, "is_override": False,
                                  "attributes": {} if country is None else {"country": country}})
                entered = T0 + timedelta(hours=rng.uniform(0, 48))
                seconds = _duration(rng, variant, country)
                durations[level][variant].append(seconds)
                events += [{"unit_id": unit, "type": "step", "name": step, "step": step,
                            "occurred_at": at} for step, at in (
                    ("cart", entered), ("checkout", entered + timedelta(seconds=seconds)))]
                if rng.random() < 0.2:
                    events.append({"unit_id": unit, "type": "conversion", "name": "purchase",
                                   "step": None, "occurred_at": entered})
    db.execute(Exposure.__table__.insert(), exposures)
    db.execute(Event.__table__.insert(), [
        {"event_id": f"e{number}", "friction_kind": None, "value": None, "properties": {},
         "received_at": row["occurred_at"], **row} for number, row in enumerate(events)])
    db.commit()
    return durations


def _reference(durations: dict[str, list[float]]) -> Any:
    """The level's comparison from the raw durations, sorted in numpy."""
    return analyze_quantiles(
        [QuantileVariantInput(variant, variant == "control",
                              stats_from_sorted(np.sort(values), quantile=0.9))
         for variant, values in durations.items()],
        quantile=0.9, correction="none", direction="decrease")


def test_the_p90_shortened_in_one_level_is_significant_there_only(app, db: Session) -> None:
    experiment = make_experiment(db, metrics=METRICS,
                                 analysis={**ANALYSIS, "dimensions": ["country"]})
    durations = _traffic(db, experiment.id)
    body = analyze_experiment(db, "checkout", now=T0 + timedelta(days=4)).body
    [segment] = body["segments"]
    levels = {level["level"]: level for level in segment["levels"]}
    assert segment["merged_levels"] == 3 and list(levels)[-2:] == [OTHER, NULL]
    # Said once for the dimension, not once per level.
    assert segment["warnings"] == [SLICE_WARNING,
                                   QUANTILE_HETEROGENEITY_NOTE.format("cart-time-p90")]
    assert set(levels) == set(durations)

    family = []  # the dimension's BH family: every level × metric × treatment with a test
    for name, level in levels.items():
        metric = next(m for m in level["metrics"] if m["key"] == "cart-time-p90")
        want = _reference(durations[name])
        # The order statistics are the database's, per variant AND level (__other__ is
        # the merged levels' own partition, not a sum), equal to numpy's.
        assert [(v["variant"], v["units"]) for v in metric["variants"]] == [
            (v.variant, v.units) for v in want.variants]
        for got, expected in zip(metric["variants"], want.variants, strict=True):
            assert got["estimate"] == expected.estimate
            assert got["ci"] == (None if expected.ci is None else list(expected.ci))
        [got] = metric["comparisons"]
        assert got["absolute_effect"] == pytest.approx(want.comparisons[0].absolute_effect)
        assert not any("not tested against the rest" in w for w in level["warnings"])
        assert [h["metric"] for h in level["heterogeneity"]] == ["purchase"]
        assert not any("no values" in warning for warning in level["warnings"])
        if min(level["units"].values()) < 100:  # estimates only, null tests
            assert got["p_value"] is None and got["adjusted_p_value"] is None
            assert got["verdict"] == "inconclusive"
            continue
        assert got["p_value"] == pytest.approx(want.comparisons[0].p_value, rel=1e-9)
        assert got["absolute_ci"] == pytest.approx(list(want.comparisons[0].absolute_ci))
        family += [(m["key"], name, c) for m in level["metrics"]
                   for c in m["comparisons"] if c["p_value"] is not None]

    assert {name for _, name, _ in family} == set(BIG)
    adjusted = adjust_p_values([c["p_value"] for _, _, c in family], "bh")
    assert [c["adjusted_p_value"] for _, _, c in family] == pytest.approx(list(adjusted))
    significant = [name for key, name, c in family
                   if key == "cart-time-p90" and c["significant"]]
    assert significant == ["FR"]
    fr = next(m for m in levels["FR"]["metrics"] if m["key"] == "cart-time-p90")
    assert fr["comparisons"][0]["verdict"] == "better"
    assert fr["comparisons"][0]["absolute_effect"] < 0

    # The admin segment table has the quantile's row, in seconds, with its verdict.
    page = logged_in(app, "viewer").get("/admin/experiments/checkout").get_data(as_text=True)
    section = page[page.index('id="segments"'):page.index('aria-labelledby="funnel-title"')]
    france = section[section.index('data-level="FR"'):]
    france = france[:france.index('class="segment-level"')]
    row = france[france.index("<th scope=\"row\">cart-time-p90"):]
    row = row[:row.index("</tr>")]
    assert "p90 of time on cart" in row and " s " in row and "verdict-better" in row
