"""Analysis inside a warehouse (SPEC §15): the same report as in Parcours's own database, and
a report over a customer's own tables.

The warehouse runs in a child process (``tests.warehouse_child``): a chDB path, like a
DuckDB file, belongs to one process.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import Event, Experiment, Exposure, Report
from experiments.services.analysis import analyze_experiment
from experiments.services.erasure import erase_unit
from experiments.services.exposures import flag_as_overrides
from experiments.services.warehouses.engines import get_warehouses
from experiments.services.warehouses.status import per_unit_values
from tests.conftest import auth_headers, make_test_app
from tests.factories import experiment_payload
from tests.test_admin_support import cheap_argon2, logged_in  # noqa: F401  (autouse fixture)
from tests.test_warehouse_sync import run_child

METRICS = [
    {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary",
     "direction": "increase"},
    {"key": "revenue", "kind": "mean", "event": "purchase", "role": "secondary",
     "direction": "increase", "cap": {"type": "percentile", "value": 0.9}},
    {"key": "views", "kind": "count", "event": "page_view", "role": "secondary",
     "direction": "increase"},
    {"key": "revenue-per-session", "kind": "ratio", "numerator": "purchase",
     "denominator": "session", "role": "secondary", "direction": "increase"},
    {"key": "payment-errors", "kind": "friction", "friction_kind": "error", "step": "payment",
     "role": "guardrail", "direction": "decrease"},
    {"key": "nps", "kind": "nps", "event": "nps", "role": "secondary", "direction": "increase"},
    {"key": "time-to-buy", "kind": "time_to_convert", "event": "purchase", "role": "secondary",
     "direction": "decrease"},
    # Order statistics, in the whole report and per segment level (SPEC §11).
    {"key": "order-p50", "kind": "quantile", "quantile": 0.5, "event": "purchase",
     "source": "event_value", "role": "secondary", "direction": "increase"},
    {"key": "basket-p90", "kind": "quantile", "quantile": 0.9, "event": "purchase",
     "source": "unit_value", "role": "secondary", "direction": "increase"},
]
T0 = datetime(2026, 11, 20, 9, 0, 0, 123456, tzinfo=UTC)
JOURNEY = ["landing", "cart", "checkout", "payment", "confirmation"]


def start(app: Flask, key: str, **fields: Any) -> Experiment:
    """A running experiment (no targeting, no layer), read back from the database."""
    client, headers = app.test_client(), auth_headers(app)
    body = experiment_payload(key, layer=None, targeting=[], **fields)
    assert client.post("/api/v1/experiments", json=body, headers=headers).status_code == 201
    assert client.post(f"/api/v1/experiments/{key}/start", headers=headers).status_code == 200
    with get_db(app).sessionmaker() as session:
        return session.scalar(select(Experiment).where(Experiment.key == key))


def add_journey_traffic(db: Session, experiment: Experiment, units: int) -> None:
    """Exposures and events of every kind: in the window, before the exposure (CUPED),
    after the window (late), friction in and outside the journey, NPS answers."""
    rng, countries = random.Random(2026), random.Random(11)
    at0 = experiment.started_at
    for index in range(units):
        unit = f"u{index:04d}"
        exposed = at0 + timedelta(hours=rng.uniform(0, 96))
        # The segment dimension: text levels, a missing attribute and a JSON null.
        country = countries.choice(["fr", "fr", "de", "de", "es", None, "absent"])
        db.add(Exposure(experiment_id=experiment.id, unit_id=unit,
                        variant_key=rng.choice(["control", "one-page"]), exposed_at=exposed,
                        is_override=index == 0,
                        attributes={} if country == "absent" else {"country": country}))
        for number in range(rng.randrange(9)):
            at = exposed + timedelta(hours=rng.uniform(-80, 90))
            kind = rng.randrange(6)
            event: dict[str, Any] = {"type": "custom", "name": "page_view"}
            if kind == 0:
                event = {"type": "conversion", "name": "purchase",
                         "value": round(rng.uniform(5, 200), 2)}
            elif kind == 1:
                event = {"type": "custom", "name": "session", "value": float(rng.randrange(3))}
            elif kind == 2:
                event = {"type": "nps", "name": "nps", "value": float(rng.randrange(11))}
            elif kind == 3:
                event = {"type": "step", "name": "view", "step": rng.choice(JOURNEY)}
            elif kind == 4:
                friction = rng.choice(["error", "retry", "rage_click"])
                event = {"type": "friction", "name": friction, "friction_kind": friction,
                         "step": rng.choice([*JOURNEY, "help"])}
            db.add(Event(event_id=f"{unit}-{number}", unit_id=unit, occurred_at=at, **event))
    db.commit()


@pytest.fixture(params=["duckdb", "chdb"])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'analytics.duckdb'}"
    return f"chdb:///{tmp_path / 'clickhouse'}"


def without_times(body: dict[str, Any]) -> dict[str, Any]:
    """The report body without when it was computed."""
    return {name: value for name, value in body.items() if name != "computed_at"}


def differences(left: Any, right: Any, path: str = "") -> list[str]:
    """Where two JSON documents differ (paths and both values), for a readable failure:
    everything exactly but floats, within 1e-9 relative (sums in another order)."""
    if isinstance(left, dict) and isinstance(right, dict):
        return [d for k in sorted(left.keys() | right.keys())
                for d in differences(left.get(k), right.get(k), f"{path}.{k}")]
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        return [d for i, (a, b) in enumerate(zip(left, right, strict=True))
                for d in differences(a, b, f"{path}[{i}]")]
    if isinstance(left, float) and isinstance(right, float):
        same = math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-12)
    else:
        same = type(left) is type(right) and left == right
    return [] if same else [f"{path}: {left!r} != {right!r}"]


def test_a_warehouse_report_equals_the_parcours_report(database_url: str, tmp_path: Path,
                                                        warehouse_url: str) -> None:
    app = make_test_app(database_url, tmp_path)
    experiment = start(app, "wh-parity", metrics=METRICS, overrides={},
                       analysis={"dimensions": ["country"]})
    with get_db(app).sessionmaker() as db:  # a fixed start: the same data on every run
        experiment = db.get(Experiment, experiment.id)
        experiment.started_at = T0
        add_journey_traffic(db, experiment, 400)
    now = T0 + timedelta(days=6)
    synced = run_child(app, warehouse_url, "sync")
    assert synced.returncode == 0, synced.stderr
    assert len(json.loads(synced.stdout)["parcours_exposures"]) == 400
    with get_db(app).sessionmaker() as db:
        # An override given after u0001's exposure was synced: flagged in Parcours only.
        stored = db.get(Experiment, experiment.id)
        stored.overrides = {"u0001": "one-page"}
        assert len(flag_as_overrides(db, experiment.id, ["u0001"])) == 1
        db.commit()
        in_parcours = analyze_experiment(db, "wh-parity", now=now).body
        db.execute(delete(Report))
        stored = db.get(Experiment, experiment.id)
        stored.analysis = {**stored.analysis, "warehouse": "w"}
        db.commit()
    analysed = run_child(app, warehouse_url, "analyze", "wh-parity", now.isoformat())
    assert analysed.returncode == 0, analysed.stderr
    in_warehouse = json.loads(analysed.stdout.splitlines()[-1])

    assert "error" not in in_warehouse
    assert sum(in_parcours["units"].values()) == 398  # u0000 and u0001 are overrides
    assert {m["key"] for m in in_parcours["metrics"]} == {m["key"] for m in METRICS}
    assert in_parcours["funnel"] and in_parcours["friction_points"] is not None
    [segment] = in_parcours["segments"]  # computed inside the warehouse too, identically
    assert segment["dimension"] == "country"
    assert {level["level"] for level in segment["levels"]} == {"fr", "de", "es", "__null__"}
    for key in ("order-p50", "basket-p90"):  # each level's own values, all of them
        whole = next(m for m in in_parcours["metrics"] if m["key"] == key)["variants"]
        levels = [next(m for m in level["metrics"] if m["key"] == key)["variants"]
                  for level in segment["levels"]]
        assert [sum(level[index]["units"] for level in levels) for index in range(2)] == [
            variant["units"] for variant in whole] and all(v["units"] for v in whole), key
    assert not any("segments" in warning for warning in in_warehouse["warnings"])
    diffs = differences(without_times(in_warehouse), without_times(in_parcours))
    assert not diffs, "\n".join(diffs)
    get_db(app).engine.dispose()


# -- a customer's own tables ----------------------------------------------------------------

ORDERS_SQL = ("SELECT customer AS unit_id, ts AS occurred_at, 'conversion' AS type, "
              "'purchase' AS name, NULL AS step, amount AS value, NULL AS friction_kind "
              "FROM orders")
SUPPORT_SQL = ("SELECT customer AS unit_id, ts AS occurred_at, 'friction' AS type, "
               "'support_call' AS name, NULL AS step, NULL AS value, "
               "'support_contact' AS friction_kind FROM support_calls")
SHOP_METRICS = [
    {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary",
     "direction": "increase"},
    {"key": "order-value", "kind": "mean", "event": "purchase", "role": "secondary",
     "direction": "increase"},
    {"key": "support", "kind": "friction", "friction_kind": "support_contact",
     "role": "guardrail", "direction": "decrease"},
]


@pytest.fixture
def shop(database_url: str, tmp_path: Path) -> Iterator[tuple[Flask, Path]]:
    """An app whose warehouse ``shop`` is a DuckDB file holding the customer's tables."""
    path = tmp_path / "shop.duckdb"
    app = make_test_app(database_url, tmp_path, WAREHOUSE_SHOP_URL=f"duckdb:///{path}")
    yield app, path
    get_warehouses(app).dispose()
    get_db(app).engine.dispose()


def customer_tables(path: Path, exposed: dict[str, tuple[str, datetime]]
                    ) -> tuple[list[tuple[str, datetime, float]], list[tuple[str, datetime]]]:
    """``orders(customer, ts, amount)`` and ``support_calls(customer, ts)`` in the DuckDB
    file: in the 72 h window, before the exposure, after the window, and strangers'."""
    rng = random.Random(7)
    orders, calls = [], []
    for unit, (_, at) in exposed.items():
        for _ in range(rng.randrange(3)):
            orders.append((unit, at + timedelta(hours=rng.uniform(-30, 100)),
                           round(rng.uniform(10, 90), 2)))
        if rng.random() < 0.3:
            calls.append((unit, at + timedelta(hours=rng.uniform(-10, 80))))
    orders.append(("stranger", next(iter(exposed.values()))[1], 500.0))
    engine = sa.create_engine(f"duckdb:///{path}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE orders (customer VARCHAR, ts TIMESTAMPTZ, "
                                   "amount DOUBLE)")
        connection.exec_driver_sql("CREATE TABLE support_calls (customer VARCHAR, "
                                   "ts TIMESTAMPTZ)")
        connection.execute(sa.text("INSERT INTO orders VALUES (:c, :t, :a)"),
                           [{"c": c, "t": t, "a": a} for c, t, a in orders])
        connection.execute(sa.text("INSERT INTO support_calls VALUES (:c, :t)"),
                           [{"c": c, "t": t} for c, t in calls])
    engine.dispose()
    return orders, calls


def test_events_sql_over_customer_tables_analyses_parcours_exposures(
        shop: tuple[Flask, Path]) -> None:
    app, path = shop
    experiment = start(app, "shop-test", metrics=SHOP_METRICS, overrides={})
    rng = random.Random(11)
    exposed = {f"c{index:03d}": (rng.choice(["control", "one-page"]),
                                 experiment.started_at + timedelta(hours=rng.uniform(0, 48)))
               for index in range(120)}
    with get_db(app).sessionmaker() as db:
        for unit, (variant, at) in exposed.items():
            db.add(Exposure(experiment_id=experiment.id, unit_id=unit, variant_key=variant,
                            exposed_at=at))
        db.commit()
    orders, calls = customer_tables(path, exposed)
    client, headers = app.test_client(), auth_headers(app)
    answer = client.put("/api/v1/warehouses/shop/sources",
                        json={"events_sql": [ORDERS_SQL, SUPPORT_SQL]}, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    with app.app_context(), get_db(app).sessionmaker() as db:  # as the scheduler runs jobs
        stored = db.get(Experiment, experiment.id)
        stored.analysis = {**stored.analysis, "warehouse": "shop", "cuped": False}
        db.commit()
        body = analyze_experiment(db, "shop-test",
                                  now=experiment.started_at + timedelta(days=5)).body

    window = timedelta(hours=72)

    def inside(unit: str, at: datetime) -> bool:
        return unit in exposed and exposed[unit][1] <= at < exposed[unit][1] + window

    expected: dict[str, dict[str, Any]] = {}
    for variant in ("control", "one-page"):
        units = [u for u, (v, _) in exposed.items() if v == variant]
        spent = {u: sum(a for c, t, a in orders if c == u and inside(u, t)) for u in units}
        bought = {u for u, _, _ in ((c, t, a) for c, t, a in orders if inside(c, t))
                  if u in units}
        called = {c for c, t in calls if inside(c, t) and c in units}
        expected[variant] = {"units": len(units), "purchase": len(bought) / len(units),
                             "order-value": sum(spent.values()) / len(units),
                             "support": len(called) / len(units)}
    assert "error" not in body
    assert body["units"] == {v: expected[v]["units"] for v in expected}
    estimates = {m["key"]: {e["variant"]: e["estimate"] for e in m["variants"]}
                 for m in body["metrics"]}
    for key in ("purchase", "order-value", "support"):
        for variant in expected:
            assert estimates[key][variant] == pytest.approx(expected[variant][key], rel=1e-9)
    assert 0 < expected["control"]["support"] < 1 and expected["control"]["purchase"] > 0

    # Ten units copied twice (two syncs overlapping a batch would leave that): the copy is
    # no longer unique per unit, so its first exposures are ranked again; nothing changes.
    with get_warehouses(app).engine("shop").begin() as connection:  # DuckDB: same settings
        connection.exec_driver_sql("INSERT INTO parcours_exposures SELECT * FROM "
                                   "parcours_exposures WHERE unit_id < 'c010'")
    with app.app_context(), get_db(app).sessionmaker() as db:
        again = analyze_experiment(db, "shop-test",
                                   now=experiment.started_at + timedelta(days=5)).body
    assert again["units"] == body["units"]
    # Sums in another order (DuckDB's threads): floats within 1e-9 relative, as in parity.
    assert differences(again["metrics"], body["metrics"]) == []

    page = logged_in(app, "viewer").get("/admin/experiments/shop-test")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'analysed in warehouse <code id="warehouse-name">shop</code>' in text
    assert 'id="analysis-error"' not in text and "order-value" in text


# -- per-unit values kept in the warehouse between analyses ---------------------------------


def more_traffic(db: Session, experiment: Experiment, first: int, units: int,
                 events_per_unit: int) -> None:
    """New units (some with events before their exposure), and new events of every kind
    for units already exposed (later NPS answers, purchases, steps, friction)."""
    rng = random.Random(first)
    at0 = experiment.started_at
    for index in range(first, first + units):
        unit = f"u{index:04d}"
        exposed = at0 + timedelta(hours=rng.uniform(0, 96))
        db.add(Exposure(experiment_id=experiment.id, unit_id=unit,
                        variant_key=rng.choice(["control", "one-page"]), exposed_at=exposed,
                        attributes={"country": rng.choice(["fr", "de"])}))
        db.add(Event(event_id=f"{unit}-pre", unit_id=unit, type="custom", name="page_view",
                     occurred_at=exposed - timedelta(hours=2)))
    for number in range(units * events_per_unit):
        unit = f"u{rng.randrange(first + units):04d}"
        at = at0 + timedelta(hours=rng.uniform(0, 140))
        event = rng.choice([
            {"type": "conversion", "name": "purchase", "value": round(rng.uniform(5, 90), 2)},
            {"type": "nps", "name": "nps", "value": float(rng.randrange(11))},
            {"type": "step", "name": "view", "step": rng.choice(JOURNEY)},
            {"type": "friction", "name": "error", "friction_kind": "error", "step": "payment"},
            {"type": "custom", "name": "session", "value": 1.0}])
        db.add(Event(event_id=f"more-{first}-{number}", unit_id=unit, occurred_at=at, **event))
    db.commit()


# Each Parcours database and each engine once (the database only feeds the sync): the
# test runs six analyses in child processes, about 20 s per pair on chDB.
@pytest.mark.parametrize(("database_url", "warehouse_url"),
                         [("sqlite", "chdb"), ("postgresql", "duckdb")], indirect=True)
def test_reports_kept_in_the_warehouse_between_analyses_equal_the_parcours_report(
        database_url: str, tmp_path: Path, warehouse_url: str) -> None:
    """The first analysis records the plan, the second folds every event into a per-unit
    table, later ones read it plus what arrived since (new events and new units: grouped
    by the variant, day and segment the table carries; an erased unit: joined back to the
    exposures, which leave it out) and fold again once that is over a tenth (without the
    erased unit; the table folded from kept until the next fold); a new override is a new
    plan, recorded, then folded anew: every report equals the one Parcours computes from
    all its events. A fold from the events is split into buckets of at most 64 units
    (``units_per_pass``, as at millions on an in-process engine)."""
    app = make_test_app(database_url, tmp_path)
    key = "wh-kept"
    experiment = start(app, key, metrics=METRICS, overrides={},
                       analysis={"dimensions": ["country"]})
    with get_db(app).sessionmaker() as db:
        experiment = db.get(Experiment, experiment.id)
        experiment.started_at = T0
        experiment.analysis = {**experiment.analysis, "warehouse": "w"}
        add_journey_traffic(db, experiment, 200)
    now = T0 + timedelta(days=6)

    def in_both(times: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
        analysed = run_child(app, warehouse_url, "kept", key, now.isoformat(), str(times),
                             "64")
        assert analysed.returncode == 0, analysed.stderr
        kept = json.loads(analysed.stdout)
        with get_db(app).sessionmaker() as db:
            stored = db.get(Experiment, experiment.id)
            stored.analysis = {**stored.analysis, "warehouse": None}
            db.commit()
            in_parcours = analyze_experiment(db, key, now=now).body
            stored.analysis = {**stored.analysis, "warehouse": "w"}
            db.commit()
        assert "error" not in kept["report"], kept["report"]["error"]
        diffs = differences(without_times(kept["report"]), without_times(in_parcours))
        assert not diffs, "\n".join(diffs)
        return kept["report"], kept

    late = T0 + timedelta(hours=50)  # u0300's exposure, synced only after the fold...
    with get_db(app).sessionmaker() as db:  # ... its events (around it) before: folded ids
        db.add_all([Event(event_id=f"late-{name}", unit_id="u0300", occurred_at=late + shift,
                          **fields) for name, shift, fields in [
            ("pre", timedelta(hours=-2), {"type": "custom", "name": "page_view"}),
            ("view", timedelta(minutes=-1), {"type": "custom", "name": "page_view"}),
            ("buy", timedelta(minutes=30), {"type": "conversion", "name": "purchase",
                                            "value": 42.0}),
            ("step", timedelta(minutes=5), {"type": "step", "name": "view",
                                            "step": JOURNEY[1]})]])
        db.commit()
    _, first = in_both(times=2)  # the plan recorded, then everything folded into a table
    [(_, seen, _, _), (_, table, events_through, _)] = first["folds"]
    assert seen is None and first["tables"] == [table] and events_through > 700
    # 199 units: the fold's four buckets (the revenue's percentile cap ranks every unit
    # at once: the first report's pass stays whole)
    assert first["bucketed"] == 4
    with get_db(app).sessionmaker() as db:  # as the warehouses page tells it
        assert per_unit_values(db, db.get(Experiment, experiment.id), sources=False,
                               sync_events=True)["kept"]

    with get_db(app).sessionmaker() as db:  # the only unit exposed since the fold: its
        db.add(Exposure(experiment_id=experiment.id, unit_id="u0300", variant_key="one-page",
                        exposed_at=late, attributes={"country": "fr"}))  # folded events are
        db.commit()  # looked for from its window on, 2 h before it (CUPED's pre-period)
    body, alone = in_both()
    assert alone["folds"] == first["folds"] and sum(body["units"].values()) == 200 + 1 - 1

    with get_db(app).sessionmaker() as db:  # under a tenth more: read live, no new fold
        more_traffic(db, db.get(Experiment, experiment.id), 200, 8, 5)
    body, live = in_both()
    assert live["folds"] == first["folds"] and live["tables"] == [table]
    assert sum(body["units"].values()) == 200 + 8 + 1 - 1  # u0000 is an override

    with get_db(app).sessionmaker() as db:  # an erased unit: left out by the join
        erase_unit(db, "u0007", SYSTEM)
    body, erased = in_both()
    assert erased["folds"] == first["folds"] and sum(body["units"].values()) == 209 - 2

    with get_db(app).sessionmaker() as db:  # over a tenth: folded again, the old table kept
        more_traffic(db, db.get(Experiment, experiment.id), 208, 30, 8)
    body, refolded = in_both()  # ... without the erased unit, read without the join
    [(_, again, through, _)] = refolded["folds"][2:]
    assert through > events_through and refolded["tables"] == sorted([table, again])
    assert sum(body["units"].values()) == 239 - 2

    with get_db(app).sessionmaker() as db:  # a new override: a new plan, recorded, then
        stored = db.get(Experiment, experiment.id)  # folded anew; the older tables dropped
        stored.overrides = {"u0012": "one-page"}
        assert len(flag_as_overrides(db, experiment.id, ["u0012"])) == 1
        db.commit()
    body, anew = in_both(times=2)
    [(_, unfolded, _, _), (_, latest, _, _)] = anew["folds"][3:]
    assert unfolded is None and anew["tables"] == [latest]
    assert sum(body["units"].values()) == 239 - 3  # u0000 and u0012 overridden, u0007 erased
    get_db(app).engine.dispose()
