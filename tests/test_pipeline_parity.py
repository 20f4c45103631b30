"""Parity of the portable pipeline (SPEC §15): one fixture, four engines, identical statistics.

The same deterministic data (5,200 exposed units, every metric kind, absolute and percentile
caps, CUPED, late and pre-exposure events, units exposed twice or to two variants, funnel
steps and friction kinds in and outside the journey) is loaded as plain tables
``parcours_exposures``/``parcours_events`` into SQLite, PostgreSQL, DuckDB and ClickHouse
(chDB) and run through the same pipeline; it is also loaded into Parcours's own tables
(first exposures only) and run through the ORM-table path. Every run must give the same
``ExperimentAggregates``: integers exactly, floats within 1e-9 relative.
"""

from __future__ import annotations

import csv
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from experiments.db import UtcDateTime
from experiments.models import Event, Exposure
from experiments.schemas import FRICTION_KINDS
from experiments.services.pipeline import (
    Daily,
    ExperimentAggregates,
    MetricSpec,
    PipelineSources,
    Plan,
    UnitPass,
    aggregate_dimensions,
    aggregate_experiment,
    aggregate_grouped,
    attribute_level,
    combine,
    marginal,
    own_sources,
    period_of,
    table_sources,
    units_query,
    variant_day_query,
)
from experiments.services.pipeline.exposures import first_exposures as first_exposure_rows
from experiments.services.pipeline.exposures import known_unique, multi_variant_units
from experiments.services.pipeline.run import ALL_DAYS
from tests.conftest import POSTGRES_URL, requires_postgres
from tests.test_aggregation import make_experiment
from tests.warehouse_child import reads_a_bucket

T0 = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)
EXPERIMENT = 7
UNITS = 5200
HOURS = 24.0
JOURNEY = ["landing", "cart", "payment"]
METRICS = [
    MetricSpec("conv", "conversion", event="purchase"),
    MetricSpec("rev", "mean", event="purchase", cap_type="absolute", cap_value=150.0),
    MetricSpec("views", "count", event="page_view", cap_type="percentile", cap_value=0.95),
    MetricSpec("rps", "ratio", numerator="purchase", denominator="session",
               cap_type="percentile", cap_value=0.9),
    MetricSpec("pay-errors", "friction", friction_kind="error", step="payment"),
    MetricSpec("any-friction", "friction"),
    MetricSpec("nps", "nps", event="survey"),
    MetricSpec("ttb", "time_to_convert", event="purchase"),
]
INTEGER_SUMS = {"n", "promoters", "detractors"}
# Exposure attribute snapshots: text, a number, JSON null and a missing key (both __null__).
ATTRIBUTES: list[dict[str, Any]] = [{"country": "FR", "plan": 1}, {"country": "DE", "plan": 2},
                                    {"country": "FR", "plan": 2}, {"country": None, "plan": 1},
                                    {"plan": 1}, {"country": "US"}]
PERIODS = [T0 + timedelta(hours=20), T0 + timedelta(hours=50)]  # bandit weight changes
EXACT_KINDS = {"conversion", "friction", "count"}


# -- the fixture ----------------------------------------------------------------------------


def _at(rng: random.Random, start: datetime, low_hours: float, high_hours: float) -> datetime:
    """A time with random microseconds (no two engines disagree on a window boundary)."""
    seconds = rng.randrange(int(low_hours * 3600), int(high_hours * 3600))
    return start + timedelta(seconds=seconds, microseconds=rng.randrange(1_000_000))


def _events_of(rng: random.Random, unit: str, exposed: datetime) -> list[dict[str, Any]]:
    rows = []
    for _ in range(rng.randrange(8)):
        # Mostly inside the window, some before the exposure (CUPED, and older than the
        # pre-window), some after the window closes (late): -36 h … +40 h.
        at = _at(rng, exposed, -36, 40)
        kind = rng.randrange(7)
        if kind == 0:
            value = None if rng.random() < 0.1 else round(rng.uniform(5, 300), 2)
            rows.append(("conversion", "purchase", None, None, value, at))
        elif kind == 1:
            rows.append(("custom", "session", None, None,
                         None if rng.random() < 0.5 else float(rng.randrange(1, 4)), at))
        elif kind == 2:
            rows.append(("custom", "page_view", None, None, None, at))
        elif kind == 3:
            rows.append(("nps", "survey", None, None, float(rng.randrange(11)), at))
        elif kind == 4:
            rows.append(("step", "view", rng.choice(JOURNEY), None, None, at))
        else:
            step = rng.choice([*JOURNEY, "help"])
            friction = rng.choice(FRICTION_KINDS[:4])
            rows.append(("friction", friction, step, friction, None, at))
    return [dict(zip(("type", "name", "step", "friction_kind", "value", "occurred_at"), row,
                     strict=True), unit_id=unit) for row in rows]


def generate() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Exposure rows (with duplicates and multi-variant units), event rows, and how many
    units were exposed to two variants."""
    rng = random.Random(20)
    exposures: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    multi = 0
    for index in range(UNITS + 150):
        unit = f"u{index:05d}"
        variant = rng.choice(["control", "treatment"])
        exposed = _at(rng, T0, 0, 72)
        exposures.append({"unit_id": unit, "variant_key": variant, "exposed_at": exposed})
        if index >= UNITS:  # exposed again to the other variant: left out
            other = "treatment" if variant == "control" else "control"
            exposures.append({"unit_id": unit, "variant_key": other,
                              "exposed_at": exposed + timedelta(hours=rng.randrange(1, 30))})
            multi += 1
        elif index % 25 == 0:  # a duplicate exposure, later, same variant: first one counts
            exposures.append({"unit_id": unit, "variant_key": variant,
                              "exposed_at": exposed + timedelta(hours=rng.randrange(1, 30))})
        events += _events_of(rng, unit, exposed)
    for index in range(300):  # events of units never exposed
        events += _events_of(rng, f"stranger{index}", _at(rng, T0, 0, 72))
    for number, row in enumerate(exposures):  # a unit's later exposures carry a changed level
        later = number and exposures[number - 1]["unit_id"] == row["unit_id"]
        row["attributes"] = json.dumps({"country": "XX", "plan": 9} if later else
                                       ATTRIBUTES[int(row["unit_id"][1:]) % len(ATTRIBUTES)])
    rng.shuffle(exposures)
    rng.shuffle(events)
    for number, row in enumerate(exposures, start=1):
        row.update(exposure_id=number, experiment_id=EXPERIMENT)
    for number, row in enumerate(events, start=1):
        row["id"] = number
    # Another experiment's exposures in the same table (the experiment filter drops them).
    exposures.append({"exposure_id": len(exposures) + 1, "experiment_id": EXPERIMENT + 1,
                      "unit_id": "u00001", "variant_key": "control", "exposed_at": T0,
                      "attributes": "{}"})
    return exposures, events, multi


DATA = generate()


def first_exposures(exposures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Parcours's own table holds: the first exposure of each single-variant unit."""
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for row in exposures:
        if row["experiment_id"] == EXPERIMENT:
            by_unit.setdefault(row["unit_id"], []).append(row)
    return [min(rows, key=lambda r: (r["exposed_at"], r["exposure_id"]))
            for rows in by_unit.values() if len({r["variant_key"] for r in rows}) == 1]


# -- loading ---------------------------------------------------------------------------------


class NaiveUtc(sa.types.TypeDecorator[datetime]):
    """UTC datetimes stored naive (chDB's DateTime64(6, 'UTC') column takes naive binds)."""

    impl = sa.DateTime()
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def plain_tables(schema: str | None, timestamp: Any,
                 attributes: bool = False) -> tuple[sa.Table, sa.Table]:
    metadata = sa.MetaData(schema=schema)
    exposures = sa.Table(
        "parcours_exposures", metadata, sa.Column("exposure_id", sa.BigInteger),
        sa.Column("experiment_id", sa.BigInteger), sa.Column("unit_id", sa.String(200)),
        sa.Column("variant_key", sa.String(64)), sa.Column("exposed_at", timestamp),
        *([sa.Column("attributes", sa.Text)] if attributes else []))
    events = sa.Table(
        "parcours_events", metadata, sa.Column("id", sa.BigInteger),
        sa.Column("unit_id", sa.String(200)), sa.Column("type", sa.String(16)),
        sa.Column("name", sa.String(200)), sa.Column("step", sa.String(64)),
        sa.Column("friction_kind", sa.String(32)), sa.Column("value", sa.Double),
        sa.Column("occurred_at", timestamp))
    return exposures, events


def _csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> str:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else
                             row[c].strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(row[c], datetime)
                             else row[c] for c in columns])
    return str(path)


CH_EXPOSURES = ("exposure_id Int64, experiment_id Int64, unit_id String, variant_key String, "
                "exposed_at DateTime64(6, 'UTC'), attributes String")
CH_EVENTS = ("id Int64, unit_id String, type String, name String, step Nullable(String), "
             "friction_kind Nullable(String), value Nullable(Float64), "
             "occurred_at DateTime64(6, 'UTC')")


def load_chdb(connection: sa.Connection, tmp: Path,
              *tables: tuple[sa.Table, str, list[dict[str, Any]]]) -> None:
    """chDB tables (name, columns, rows) filled through its CSV reader: its driver binds a
    datetime as whole seconds."""
    for table, columns, rows in tables:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}"))
        connection.execute(sa.text(f"CREATE TABLE {table.name} ({columns}) "
                                   "ENGINE = MergeTree ORDER BY unit_id"))
        path = _csv(tmp / f"{table.name}.csv", rows, [c.name for c in table.c])
        structure = columns.replace("'", "\\'")
        connection.execute(sa.text(f"INSERT INTO {table.name} SELECT * FROM "
                                   f"file('{path}', 'CSVWithNames', '{structure}')"))


def load(connection: sa.Connection, schema: str | None, tmp: Path) -> PipelineSources:
    """The fixture as plain tables on this connection: bulk inserts, or the engine's CSV
    reader where executemany is slow (DuckDB, chDB)."""
    exposures_rows, event_rows, _ = DATA
    name = connection.dialect.name
    exposures, events = plain_tables(schema, NaiveUtc if name == "chdb" else UtcDateTime,
                                     attributes=True)
    if name == "chdb":
        load_chdb(connection, tmp, (exposures, CH_EXPOSURES, exposures_rows),
                  (events, CH_EVENTS, event_rows))
    elif name == "duckdb":
        exposures.metadata.create_all(connection)
        for table in (exposures, events):
            rows = exposures_rows if table is exposures else event_rows
            path = _csv(tmp / f"{table.name}.csv", rows, [c.name for c in table.c])
            stamp = "exposed_at" if table is exposures else "occurred_at"
            columns = ", ".join(f"timezone('UTC', CAST({c.name} AS TIMESTAMP))" if c.name == stamp
                                else c.name for c in table.c)
            connection.execute(sa.text(f"INSERT INTO {table.name} SELECT {columns} "
                                       f"FROM read_csv('{path}', header = true)"))
    else:
        exposures.metadata.create_all(connection)
        connection.execute(exposures.insert(), exposures_rows)
        connection.execute(events.insert(), event_rows)
    return table_sources(exposures, events, experiment=EXPERIMENT)


def run(connection: Any, sources: PipelineSources | None = None,
        experiment_id: int | None = None) -> ExperimentAggregates:
    return aggregate_experiment(connection, experiment_id, METRICS, hours=HOURS, cuped=True,
                                journey=JOURNEY, sources=sources)


def run_open(connection: Any, sources: PipelineSources) -> ExperimentAggregates:
    """No window end (``hours=None``, a holdout's report): every event from exposure on."""
    return aggregate_experiment(connection, None, METRICS, hours=None, cuped=False,
                                journey=JOURNEY, sources=sources)


def grouped(sources: PipelineSources) -> PipelineSources:
    """Grouped by two segment dimensions and the bandit period of the exposure."""
    return sources.grouped_by(country=attribute_level(sources, "country"),
                              plan=attribute_level(sources, "plan"),
                              period=period_of(sources.exposures.c.exposed_at, PERIODS))


def run_grouped(connection: Any, sources: PipelineSources | None = None,
                experiment_id: int | None = None) -> dict[tuple[Any, ...], ExperimentAggregates]:
    if sources is None:
        assert experiment_id is not None
        sources = own_sources(experiment_id)
    return aggregate_grouped(connection, experiment_id, METRICS, hours=HOURS, cuped=True,
                             journey=JOURNEY, sources=grouped(sources))


def run_dimensions(connection: Any, sources: PipelineSources | None = None,
                   experiment_id: int | None = None
                   ) -> tuple[ExperimentAggregates, list[dict[Any, ExperimentAggregates]]]:
    if sources is None:
        assert experiment_id is not None
        sources = own_sources(experiment_id)
    return aggregate_dimensions(connection, experiment_id, METRICS, hours=HOURS, cuped=True,
                                journey=JOURNEY, sources=grouped(sources))


def totals_only(aggregates: ExperimentAggregates) -> ExperimentAggregates:
    """The same sums over every day, as one ``ALL_DAYS`` row per variant."""
    def one_day(daily: Daily) -> Daily:
        return Daily({(variant, ALL_DAYS): dict(sums)
                      for variant, sums in daily.totals().items()})
    return replace(aggregates, units=one_day(aggregates.units),
                   metrics={key: one_day(d) for key, d in aggregates.metrics.items()})


def assert_dimensions(got: tuple[ExperimentAggregates, list[dict[Any, ExperimentAggregates]]],
                      crossed: dict[tuple[Any, ...], ExperimentAggregates],
                      reference: ExperimentAggregates) -> None:
    """Summed per grouping set (the whole report per day, each dimension per level) equals
    the crossed groups' report and marginal totals: same sums, caps, friction, timing."""
    whole, dimensions = got
    assert_identical(whole, reference)
    assert whole.multi_variant_units == combine(crossed.values()).multi_variant_units
    assert len(dimensions) == 3
    for position, levels in enumerate(dimensions):
        expected = marginal(crossed, position)
        assert levels.keys() == expected.keys()
        for level, aggregates in levels.items():
            assert_identical(aggregates, totals_only(expected[level]))
            assert aggregates.multi_variant_units == expected[level].multi_variant_units


def expected_units() -> dict[tuple[str, str, int], int]:
    """Units per (country, plan, period), from each unit's FIRST exposure, in Python."""
    counts: dict[tuple[str, str, int], int] = {}
    for row in first_exposures(DATA[0]):
        attributes = json.loads(row["attributes"])
        key = (attributes.get("country") or "__null__", str(attributes.get("plan", "__null__")),
               sum(row["exposed_at"] >= at for at in PERIODS))
        counts[key] = counts.get(key, 0) + 1
    return counts


def assert_grouped(got: dict[tuple[Any, ...], ExperimentAggregates],
                   reference: ExperimentAggregates, multi: int = DATA[2]) -> None:
    """The groups add up exactly to the whole report, each unit in the levels of its first
    exposure (never 'XX', the later snapshot) and the period its exposure time falls in."""
    units = {(country, plan, int(period)): int(sum(s["n"] for s in a.units.rows.values()))
             for (country, plan, period), a in got.items()}
    assert units == expected_units()
    assert_identical(combine(got.values()), reference)
    by_country = marginal(got, 0)
    assert set(by_country) == {"FR", "DE", "US", "__null__"}
    assert_identical(combine(by_country.values()), reference)
    assert all(a.caps == reference.caps for a in got.values())  # one threshold for all
    assert {a.multi_variant_units for a in got.values()} == {multi}


# -- comparing -------------------------------------------------------------------------------


def assert_identical(got: ExperimentAggregates, expected: ExperimentAggregates) -> None:
    """Integers exactly, floats within 1e-9 relative; every key present on both sides."""
    assert dict(got.units.rows) == dict(expected.units.rows)
    kinds = {m.key: m.kind for m in METRICS}
    assert got.metrics.keys() == expected.metrics.keys()
    for key, daily in expected.metrics.items():
        assert got.metrics[key].rows.keys() == daily.rows.keys(), key
        for cell, sums in daily.rows.items():
            other = got.metrics[key].rows[cell]
            assert other.keys() == sums.keys(), (key, cell)
            for name, value in sums.items():
                if name in INTEGER_SUMS or (kinds[key] in EXACT_KINDS and "cross" not in name):
                    assert other[name] == value, (key, cell, name)
                else:
                    assert other[name] == pytest.approx(value, rel=1e-9, abs=1e-12), \
                        (key, cell, name)
    assert got.journey.reached == expected.journey.reached
    assert got.journey.friction == expected.journey.friction
    assert got.caps == expected.caps
    assert got.timing == expected.timing


def assert_marked_unique_only_without_repeats(connection: sa.Connection,
                                              sources: PipelineSources,
                                              reference: ExperimentAggregates) -> None:
    """The fixture repeats units, so its exposures keep their ranking; its first exposures
    alone (what Parcours's table and a warehouse's copy of it hold) are found unique, and
    read unranked they give the reference's statistics — also with each unit's exposure
    columns joined back after the per-unit grouping (``join_back``), whole and by
    dimension."""
    assert not known_unique(connection, sources).unique_units
    if connection.dialect.name == "postgresql":
        # Its planner takes a ranked subquery's filtered rows for one and joins the units
        # back to it by nested loops (60 s here). A warehouse joins back only a table's
        # rows, whose statistics each sync refreshes (test_warehouse_postgres).
        connection.exec_driver_sql("SET LOCAL enable_nestloop = off")
    firsts = PipelineSources(first_exposure_rows(sources), sources.events)
    marked = known_unique(connection, firsts)
    assert marked.unique_units
    assert_identical(run(connection, marked), reference)
    assert_identical(run(connection, replace(marked, join_back=True)), reference)
    levels = grouped(sources)
    joined_back = PipelineSources(first_exposure_rows(levels), sources.events, True,
                                  levels.grouping, join_back=True)
    assert_grouped(aggregate_grouped(connection, None, METRICS, hours=HOURS, cuped=True,
                                     journey=JOURNEY, sources=joined_back), reference, multi=0)
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("RESET enable_nestloop")


def assert_split_passes_add_up(connection: sa.Connection, sources: PipelineSources,
                               reference: ExperimentAggregates) -> None:
    """A pass over every unit split into buckets of units (``units_per_pass`` 1,000: the
    most statements, four, for the fixture's 5,200) gives the one statement's statistics,
    whole and by dimension; with a percentile cap (which ranks every unit at once) it stays
    one."""
    bucketed: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if reads_a_bucket(statement):
            bucketed.append(statement)

    split = replace(sources, units_per_pass=1000)
    sa.event.listen(connection, "before_cursor_execute", count)
    try:
        assert_identical(run(connection, split), reference)
        assert bucketed == []
        metrics = [replace(m, cap_type="absolute", cap_value=20.0)
                   if m.cap_type == "percentile" else m for m in METRICS]
        whole, *levels = _dimensions(connection, metrics, grouped(sources))
        got, *got_levels = _dimensions(connection, metrics, grouped(split))
    finally:
        sa.event.remove(connection, "before_cursor_execute", count)
    assert len(bucketed) == 4
    assert_identical(got, whole)
    assert [set(level) for level in got_levels] == [set(level) for level in levels]
    for level, got_level in zip(levels, got_levels, strict=True):
        for key, aggregates in level.items():
            assert_identical(got_level[key], aggregates)


def _dimensions(connection: sa.Connection, metrics: list[MetricSpec],
                sources: PipelineSources) -> list[Any]:
    whole, levels = aggregate_dimensions(connection, None, metrics, hours=HOURS, cuped=True,
                                         journey=JOURNEY, sources=sources)
    return [whole, *levels]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> ExperimentAggregates:
    """The plain tables on SQLite."""
    engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('parity')}/plain.db")
    with engine.begin() as connection:
        result = run(connection, load(connection, None, Path()))
    engine.dispose()
    return result


@pytest.fixture(scope="module")
def open_reference(tmp_path_factory: pytest.TempPathFactory) -> ExperimentAggregates:
    """The plain tables on SQLite, without a window end."""
    engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('parity')}/open.db")
    with engine.begin() as connection:
        result = run_open(connection, load(connection, None, Path()))
    engine.dispose()
    return result


def test_no_window_end_counts_every_later_event(reference: ExperimentAggregates,
                                                open_reference: ExperimentAggregates) -> None:
    """``hours=None``: late events (after the 24 h window) count, events before exposure
    never do, and the units are the same."""
    assert open_reference.units.rows == reference.units.rows
    for variant, (before, after) in open_reference.timing.items():
        assert before == 0
        assert after > reference.timing[variant][1]
    for key in ("views", "conv"):
        later = open_reference.metrics[key].totals()
        within = reference.metrics[key].totals()
        assert all(later[v]["sum"] >= within[v]["sum"] for v in within)
        assert sum(later[v]["sum"] for v in later) > sum(within[v]["sum"] for v in within)


def test_the_reference_covers_every_case(reference: ExperimentAggregates) -> None:
    """The fixture exercises what it claims: both arms, caps that bite, CUPED, the journey
    and friction outside it, late and early events."""
    units = sum(sums["n"] for sums in reference.units.rows.values())
    assert units == len(first_exposures(DATA[0])) == UNITS
    assert len(reference.units.days()) == 4  # exposures over 72 h from 20:00 UTC
    assert reference.caps["rev"] == {"y": 150.0}
    assert reference.caps["views"]["y"] and reference.caps["rps"]["num"]
    totals = reference.metrics["conv"].totals()
    assert all(totals[v]["pre_sum"] > 0 and totals[v]["sum"] > 0 for v in ("control", "treatment"))
    assert reference.metrics["nps"].totals()["control"]["promoters"] > 0
    assert ("treatment", "help", "error") in reference.journey.friction
    assert all(reference.journey.reached[(v, s)] > 0 for v in ("control", "treatment")
               for s in JOURNEY)
    assert all(before > 0 and after > 0 for before, after in reference.timing.values())
    assert reference.multi_variant_units == DATA[2] > 0


@pytest.fixture
def postgres_schema() -> Iterator[tuple[sa.Engine, str]]:
    """A schema of its own on the test server (safe under xdist), dropped afterwards."""
    assert POSTGRES_URL
    engine = sa.create_engine(POSTGRES_URL)
    schema = f"parity_{uuid.uuid4().hex[:12]}"
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield engine, schema
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


# How each engine's session is told to read times in another zone than UTC (a server so
# configured, or DuckDB's default: the machine's own zone). The parity tests run there:
# days are UTC days and the event scan's bounds UTC instants whatever the zone (ClickHouse
# parsed a bound's text in its own zone, 9 h early in Tokyo, losing the last units' late
# events; DuckDB cast a TIMESTAMPTZ to the session zone's day).
IN_TOKYO = {"duckdb": "SET TimeZone = 'Asia/Tokyo'",
            "chdb": "SET session_timezone = 'Asia/Tokyo'",
            "postgresql": "SET TIME ZONE 'Asia/Tokyo'"}


@pytest.mark.parametrize("url", ["duckdb:///:memory:", "chdb:///:memory:"])
def test_duckdb_and_clickhouse_give_identical_statistics(
        url: str, reference: ExperimentAggregates, open_reference: ExperimentAggregates,
        tmp_path: Path) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        sources = load(connection, None, tmp_path)
        connection.exec_driver_sql(IN_TOKYO[connection.dialect.name])
        assert_identical(run(connection, sources), reference)
        assert_identical(run_open(connection, sources), open_reference)
        assert connection.scalar(multi_variant_units(sources)) == DATA[2]
        assert_marked_unique_only_without_repeats(connection, sources, reference)
        crossed = run_grouped(connection, sources)
        assert_grouped(crossed, reference)
        assert_dimensions(run_dimensions(connection, sources), crossed, reference)
        assert_split_passes_add_up(connection, sources, reference)
    engine.dispose()


@requires_postgres
def test_postgresql_plain_tables_give_identical_statistics(
        postgres_schema: tuple[sa.Engine, str], reference: ExperimentAggregates,
        open_reference: ExperimentAggregates) -> None:
    engine, schema = postgres_schema
    with engine.begin() as connection:
        sources = load(connection, schema, Path())
        connection.exec_driver_sql(IN_TOKYO["postgresql"])
        assert_identical(run(connection, sources), reference)
        assert_identical(run_open(connection, sources), open_reference)
        assert connection.scalar(multi_variant_units(sources)) == DATA[2]
        assert_marked_unique_only_without_repeats(connection, sources, reference)
        crossed = run_grouped(connection, sources)
        assert_grouped(crossed, reference)
        assert_dimensions(run_dimensions(connection, sources), crossed, reference)


def test_own_tables_give_identical_statistics(db: Session,
                                               reference: ExperimentAggregates) -> None:
    """Parcours's own tables (first exposures, plus override units that never count) on
    SQLite and PostgreSQL, through the ORM-table path and its rollup."""
    experiment = make_experiment(db)
    first = first_exposures(DATA[0])
    db.execute(Exposure.__table__.insert(), [
        {"experiment_id": experiment.id, "unit_id": row["unit_id"],
         "variant_key": row["variant_key"], "exposed_at": row["exposed_at"],
         "attributes": json.loads(row["attributes"]), "is_override": False}
        for row in first] + [
        {"experiment_id": experiment.id, "unit_id": f"forced{i}", "variant_key": "treatment",
         "exposed_at": T0, "attributes": {}, "is_override": True} for i in range(20)])
    db.execute(Event.__table__.insert(), [
        {**row, "event_id": f"e{row['id']}", "received_at": row["occurred_at"],
         "properties": {}} for row in DATA[1]])
    db.commit()
    assert_identical(run(db, experiment_id=experiment.id), reference)
    db.commit()
    assert_identical(run(db, experiment_id=experiment.id), reference)  # rollup read back
    crossed = run_grouped(db, experiment_id=experiment.id)
    assert_grouped(crossed, reference, multi=0)
    assert_dimensions(run_dimensions(db, experiment_id=experiment.id), crossed, reference)


def test_sqlite_groups_add_up_and_a_level_is_its_own_analysis(
        reference: ExperimentAggregates, tmp_path: Path) -> None:
    """On SQLite too; and one level equals the analysis of that level's units alone (for an
    uncapped metric: a capped one is capped by the whole experiment's threshold)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/grouped.db")
    with engine.begin() as connection:
        sources = load(connection, None, tmp_path)
        got = run_grouped(connection, sources)
        assert_grouped(got, reference)
        assert_dimensions(run_dimensions(connection, sources), got, reference)
        first = first_exposure_rows(grouped(sources))
        fr = sa.select(first).where(first.c.country == "FR").subquery("fr")
        alone = aggregate_experiment(connection, None, METRICS[:1], hours=HOURS, cuped=True,
                                     journey=JOURNEY,
                                     sources=PipelineSources(fr, sources.events, True))
    engine.dispose()
    level = marginal(got, 0)["FR"]
    assert level.units.rows == alone.units.rows
    assert level.metrics["conv"].rows == alone.metrics["conv"].rows
    assert level.journey == alone.journey


def segmented(connection: sa.Connection, plain: PipelineSources) -> PipelineSources:
    """Adds a `segment` exposure column derived from the unit id (units ending in 0-2 are
    "mobile", the rest "desktop") to the loaded tables; the sources grouped by it."""
    connection.execute(sa.text("ALTER TABLE parcours_exposures ADD COLUMN segment VARCHAR"))
    connection.execute(sa.text("UPDATE parcours_exposures SET segment = "
                               "CASE WHEN right(unit_id, 1) IN ('0', '1', '2') "
                               "THEN 'mobile' ELSE 'desktop' END"))
    base, _ = plain_tables(None, UtcDateTime)
    table = sa.Table("parcours_exposures", sa.MetaData(), *(c._copy() for c in base.c),
                     sa.Column("segment", sa.String))
    return table_sources(table, plain.events, experiment=EXPERIMENT, grouping=("segment",))


def test_a_grouping_column_flows_from_exposures_to_the_variant_rows(tmp_path: Path) -> None:
    """The hook for segments, bandit periods, holdouts: an exposure column (here a segment
    derived from the unit id) splits stage 3's rows, and the split rows add up to the rest."""
    engine = sa.create_engine("duckdb:///:memory:")
    with engine.begin() as connection:
        plain = load(connection, None, tmp_path)
        grouped = segmented(connection, plain)
        plan = Plan.of(METRICS, JOURNEY, True, grouped.events)
        unit = UnitPass.of(grouped, plan, hours=HOURS).query().subquery("u")
        rows = connection.execute(variant_day_query(plan, unit,
                                                    sets=[(grouped.grouping, True)])).all()
        units = connection.execute(units_query(grouped)).all()
        whole = run(connection, plain)
    engine.dispose()
    assert {row.segment for row in rows} == {row.segment for row in units} == {"mobile",
                                                                               "desktop"}
    by_cell: dict[tuple[str, str], float] = {}
    for row in units:
        by_cell[(row.variant_key, str(row.day))] = by_cell.get(
            (row.variant_key, str(row.day)), 0) + row.n
    assert by_cell == {cell: sums["n"] for cell, sums in whole.units.rows.items()}
    purchases: dict[str, float] = {}
    for row in rows:
        purchases[row.variant_key] = purchases.get(row.variant_key, 0) + row.m0_sum
    assert purchases == {v: s["sum"] for v, s in whole.metrics["conv"].totals().items()}
    with pytest.raises(ValueError, match="no column"):
        plain.with_grouping("segment")


EDGE_EXPOSURES = [T0, T0 + timedelta(microseconds=999_999)]  # a whole second, and its last µs


@pytest.mark.parametrize("engine_name", ["sqlite", "duckdb", "chdb",
                                         pytest.param("postgresql", marks=requires_postgres)])
def test_the_window_edges_are_the_same_on_every_engine(engine_name: str, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    """An event exactly ``hours`` before or after the exposure is outside the window; one
    microsecond inside it counts, before the exposure (CUPED's pre-period) or from it on."""
    schema = None
    if engine_name == "postgresql":
        engine, schema = request.getfixturevalue("postgres_schema")
    else:
        engine = sa.create_engine({"sqlite": f"sqlite:///{tmp_path}/edges.db",
                                   "duckdb": "duckdb:///:memory:",
                                   "chdb": "chdb:///:memory:"}[engine_name])
    window, tick = timedelta(hours=HOURS), timedelta(microseconds=1)
    offsets = {-window: "out", -window + tick: "pre", -tick: "pre", timedelta(0): "post",
               window - tick: "post", window: "out"}
    exposures_rows = [{"exposure_id": n + 1, "experiment_id": EXPERIMENT, "unit_id": f"u{n}",
                       "variant_key": "control", "exposed_at": at, "attributes": "{}"}
                      for n, at in enumerate(EDGE_EXPOSURES)]
    event_rows = [{"id": len(offsets) * n + k + 1, "unit_id": f"u{n}", "type": "custom",
                   "name": "page_view", "step": None, "friction_kind": None, "value": None,
                   "occurred_at": at + offset}
                  for n, at in enumerate(EDGE_EXPOSURES) for k, offset in enumerate(offsets)]
    exposures, events = plain_tables(schema, NaiveUtc if engine_name == "chdb" else UtcDateTime,
                                     attributes=True)
    with engine.begin() as connection:
        if engine_name == "chdb":
            load_chdb(connection, tmp_path, (exposures, CH_EXPOSURES, exposures_rows),
                      (events, CH_EVENTS, event_rows))
        else:
            exposures.metadata.create_all(connection)
            connection.execute(exposures.insert(), exposures_rows)
            connection.execute(events.insert(), event_rows)
        got = aggregate_experiment(connection, None, [MetricSpec("views", "count",
                                                                 event="page_view")],
                                   hours=HOURS, cuped=True, journey=[],
                                   sources=table_sources(exposures, events,
                                                         experiment=EXPERIMENT))
    if engine_name != "postgresql":
        engine.dispose()
    expected = {side: list(offsets.values()).count(side) * len(EDGE_EXPOSURES)
                for side in ("pre", "post")}
    views = got.metrics["views"].totals()["control"]
    assert (views["sum"], views["pre_sum"]) == (expected["post"], expected["pre"]) == (4, 4)
    assert got.timing["control"] == [4.0, 4.0]
