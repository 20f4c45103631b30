"""Quantile metrics in the portable pipeline (SPEC §11, §15): the exact order statistics
(and event-level clustering sums) the database returns are the same on SQLite, PostgreSQL,
DuckDB and ClickHouse (chDB), and equal to the ones computed in Python from the raw rows of
the parity fixture (``tests/test_pipeline_parity.py``).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from experiments.services.pipeline import (
    QuantileSpec,
    quantile_stats,
    time_on_step,
)
from experiments.services.pipeline.dialects import prepare
from stats.quantile import QuantileStats, needed_ranks, stats_from_sorted
from stats.records import RatioStats
from tests.conftest import requires_postgres
from tests.test_pipeline_parity import (
    DATA,
    HOURS,
    JOURNEY,
    first_exposures,
    load,
    postgres_schema,  # noqa: F401 - the fixture
    segmented,
)

ALPHA = 0.05
SPECS = [QuantileSpec("order-p50", "event_value", 0.5, event="purchase"),
         QuantileSpec("order-p90", "event_value", 0.9, event="purchase"),
         QuantileSpec("basket-p75", "unit_value", 0.75, event="purchase"),
         QuantileSpec("cart-time-p90", "step_duration", 0.9, step="cart"),
         QuantileSpec("landing-time-p50", "step_duration", 0.5, step="landing")]
Result = tuple[dict[str, dict[Any, QuantileStats]], dict[Any, dict[str, Any]]]


# -- the reference, from the raw rows in Python ---------------------------------------------


def _window_events(keep: Any = None) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Per analysed unit: its variant and its events inside the analysis window."""
    by_unit: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in DATA[1]:
        by_unit[row["unit_id"]].append(row)
    out = {}
    for exposure in first_exposures(DATA[0]):
        if keep is not None and not keep(exposure["unit_id"]):
            continue
        start = exposure["exposed_at"]
        end = start + timedelta(hours=HOURS)
        out[exposure["unit_id"]] = (exposure["variant_key"], [
            row for row in by_unit[exposure["unit_id"]] if start <= row["occurred_at"] < end])
    return out


def _durations(events: list[dict[str, Any]], step: str) -> float | None:
    """Seconds from the first step event of ``step`` to the next one of a later step."""
    steps = [row for row in events if row["type"] == "step"]
    entered = [row["occurred_at"] for row in steps if row["step"] == step]
    if not entered:
        return None
    start = min(entered)
    later = [row["occurred_at"] for row in steps if JOURNEY.index(row["step"]) >
             JOURNEY.index(step) and row["occurred_at"] >= start]
    return (min(later) - start).total_seconds() if later else None


def python_reference(spec: QuantileSpec, keep: Any = None) -> dict[str, QuantileStats]:
    """Per variant (of the units ``keep`` accepts), the values sorted by numpy, then the
    same ranks and cluster sums."""
    values: dict[str, list[float]] = defaultdict(list)
    per_unit: dict[str, list[list[float]]] = defaultdict(list)  # event level: unit values
    for variant, events in _window_events(keep).values():
        purchases = [row["value"] for row in events if row["name"] == spec.event]
        if spec.source == "event_value":
            mine = [v for v in purchases if v is not None]
            values[variant] += mine
            if mine:
                per_unit[variant].append(mine)
        elif spec.source == "unit_value" and purchases:
            values[variant].append(sum(v or 0.0 for v in purchases))
        elif spec.source == "step_duration":
            seconds = _durations(events, spec.step or "")
            if seconds is not None:
                values[variant].append(seconds)
    out = {}
    for variant, found in values.items():
        stats = stats_from_sorted(np.sort(found), quantile=spec.quantile, alpha=ALPHA)
        if spec.source == "event_value":
            s = np.array([sum(v <= stats.estimate for v in unit) for unit in per_unit[variant]])
            n = np.array([len(unit) for unit in per_unit[variant]])
            stats = QuantileStats(stats.n, stats.estimate, stats.lower, stats.upper, RatioStats(
                len(n), float(s.sum()), float((s * s).sum()), float(n.sum()),
                float((n * n).sum()), float((s * n).sum())))
        out[variant] = stats
    return out


def python_time_on_step() -> dict[tuple[str, str], dict[str, Any]]:
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    for variant, events in _window_events().values():
        for step in JOURNEY:
            seconds = _durations(events, step)
            if seconds is not None:
                durations[(variant, step)].append(seconds)
    out = {}
    for cell, found in durations.items():
        ordered = np.sort(found)
        out[cell] = {name: float(ordered[needed_ranks(len(found), quantile=level).point - 1])
                     for name, level in (("p50", 0.5), ("p90", 0.9))}
        out[cell]["n"] = len(found)
    return out


# -- running and comparing ------------------------------------------------------------------


def run(connection: Any, sources: Any) -> Result:
    prepare(connection)
    by_spec = {spec.key: {cell[0]: stats for cell, stats in quantile_stats(
        connection, sources, spec, journey=JOURNEY, hours=HOURS, alpha=ALPHA).items()}
        for spec in SPECS}
    return by_spec, time_on_step(connection, sources, JOURNEY, hours=HOURS)


def _close(got: float | None, expected: float | None) -> bool:
    if got is None or expected is None:
        return got is expected
    return got == pytest.approx(expected, rel=1e-9, abs=1e-6)  # seconds: to the µs


def assert_same(got: QuantileStats, expected: QuantileStats, where: Any) -> None:
    assert got.n == expected.n, where
    for name in ("estimate", "lower", "upper"):
        assert _close(getattr(got, name), getattr(expected, name)), (where, name)
    assert (got.clusters is None) == (expected.clusters is None), where
    if expected.clusters is not None:
        assert got.clusters == expected.clusters, where  # integer counts: exact


def assert_matches_python(result: Result) -> None:
    by_spec, tos = result
    for spec in SPECS:
        expected = python_reference(spec)
        assert by_spec[spec.key].keys() == expected.keys() == {"control", "treatment"}
        for variant, stats in expected.items():
            assert_same(by_spec[spec.key][variant], stats, (spec.key, variant))
    expected_tos = python_time_on_step()
    assert tos.keys() == expected_tos.keys()
    for cell, entry in expected_tos.items():
        assert tos[cell]["n"] == entry["n"], cell
        assert _close(tos[cell]["p50"], entry["p50"]) and _close(tos[cell]["p90"], entry["p90"])


@pytest.fixture(scope="module")
def sqlite_result(tmp_path_factory: pytest.TempPathFactory) -> Result:
    engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('qparity')}/plain.db")
    with engine.begin() as connection:
        result = run(connection, load(connection, None, Path()))
    engine.dispose()
    return result


def test_the_fixture_exercises_every_source(sqlite_result: Result) -> None:
    """Enough values for inference everywhere, clusters of several events, units that never
    leave a step (left out), durations with microseconds."""
    by_spec, tos = sqlite_result
    assert all(stats.n >= 100 for stats in by_spec["order-p90"].values())
    clusters = by_spec["order-p90"]["control"].clusters
    assert clusters is not None and clusters.den_sum > clusters.n  # several events per unit
    reached = {variant: sum(1 for v, events in _window_events().values() if v == variant and any(
        row["type"] == "step" and row["step"] == "cart" for row in events))
        for variant in ("control", "treatment")}
    assert all(0 < tos[(v, "cart")]["n"] < reached[v] for v in reached)
    assert ("control", "payment") not in tos  # the last step has no later step
    assert any(value % 1 for value in (tos[("control", "cart")]["p50"],
                                       tos[("treatment", "cart")]["p90"]))


def test_sqlite_equals_numpy_on_the_raw_rows(sqlite_result: Result) -> None:
    assert_matches_python(sqlite_result)


@pytest.mark.parametrize("url", ["duckdb:///:memory:", "chdb:///:memory:"])
def test_duckdb_and_clickhouse_give_identical_order_statistics(url: str,
                                                               tmp_path: Path) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        assert_matches_python(run(connection, load(connection, None, tmp_path)))
    engine.dispose()


@requires_postgres
def test_postgresql_gives_identical_order_statistics(
        postgres_schema: tuple[sa.Engine, str]) -> None:  # noqa: F811 - the fixture
    engine, schema = postgres_schema
    with engine.begin() as connection:
        sources = load(connection, schema, Path())
        # Fresh tables without statistics: the planner would guess one row per filter and
        # pick nested loops (real tables have statistics from autovacuum).
        for table in ("parcours_exposures", "parcours_events"):
            connection.execute(sa.text(f'ANALYZE "{schema}".{table}'))
        # Its ranked first exposures (the fixture repeats units) it still takes for one row,
        # and scanned the events once per unit by nested loops (8 s here); Parcours's tables
        # and a warehouse's copy are unique per unit and read unranked.
        connection.execute(sa.text("SET LOCAL enable_nestloop = off"))
        assert_matches_python(run(connection, sources))


def test_grouping_columns_split_the_partitions(tmp_path: Path) -> None:
    """Segments reuse the builders: a grouping column (a segment derived from the unit id)
    gives each (variant, level) the order statistics of its own units."""
    mobile = lambda unit: unit[-1] in "012"  # noqa: E731
    engine = sa.create_engine("duckdb:///:memory:")
    with engine.begin() as connection:
        plain = load(connection, None, tmp_path)
        grouped = segmented(connection, plain)
        got = {spec.key: quantile_stats(connection, grouped, spec, journey=JOURNEY, hours=HOURS,
                                        grouping=grouped.grouping) for spec in SPECS[::2]}
        steps = time_on_step(connection, grouped, JOURNEY, hours=HOURS, grouping=("segment",))
    engine.dispose()
    for spec in SPECS[::2]:
        for level, keep in (("mobile", mobile), ("desktop", lambda unit: not mobile(unit))):
            for variant, stats in python_reference(spec, keep).items():
                assert_same(got[spec.key][(variant, level)], stats, (spec.key, variant, level))
    assert sum(steps[("control", level, "cart")]["n"] for level in ("mobile", "desktop")) == \
        python_time_on_step()[("control", "cart")]["n"]


@pytest.mark.parametrize("url", ["sqlite://", "duckdb:///:memory:", "chdb:///:memory:"])
def test_a_step_without_a_later_one_has_no_duration(url: str, tmp_path: Path) -> None:
    """Time on the journey's last step: never left, so no value (the query reads no event),
    while a middle step's durations still see only the steps from it on — the same values
    as the Python reference (cart, in :data:`SPECS`)."""
    last = QuantileSpec("payment-time-p90", "step_duration", 0.9, step=JOURNEY[-1])
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        sources = load(connection, None, tmp_path)
        prepare(connection)
        got = quantile_stats(connection, sources, last, journey=JOURNEY, hours=HOURS,
                             alpha=ALPHA)
        cart = {cell[0]: stats for cell, stats in quantile_stats(
            connection, sources, SPECS[3], journey=JOURNEY, hours=HOURS, alpha=ALPHA).items()}
    engine.dispose()
    assert python_reference(last) == {} and dict(got) == {}
    for variant, stats in python_reference(SPECS[3]).items():
        assert_same(cart[variant], stats, variant)
