"""The warehouse bench's generators and baseline query at a tiny size (the bench is not a test:
this only proves that DuckDB and chDB generate the same rows and answer the same numbers)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from bench.bench_warehouse import (
    DAY_S,
    ENGINES,
    SPAN_S,
    STARTED,
    add_traffic,
    baseline,
    draw,
    engine_url,
    generate,
    python_baseline,
)

UNITS = 1_000


def test_generators_and_baseline_agree_on_duckdb_and_chdb(tmp_path: Path) -> None:
    expected = python_baseline(UNITS)
    assert expected["control"][0] + expected["one-page"][0] == UNITS
    assert expected["control"][1] > 0 and expected["one-page"][1] > 0
    offsets = [draw("offset", n) % (5 * DAY_S) - DAY_S for n in range(UNITS * 10)]
    pre, late = sum(o < 0 for o in offsets), sum(o >= 72 * 3600 for o in offsets)
    assert 1_500 < pre < 2_500 and 1_500 < late < 2_500  # a fifth of the events each
    summaries = {}
    for engine in ENGINES:
        (tmp_path / engine).mkdir()
        url = engine_url(engine, tmp_path / engine)
        generate(url, UNITS)
        assert baseline(url) == expected, engine
        sql = create_engine(url)
        with sql.connect() as connection:
            assert connection.scalar(text("SELECT count(*) FROM parcours_exposures")) == UNITS
            assert connection.scalar(text("SELECT count(*) FROM parcours_events")) == UNITS * 10
            # pre-exposure events (CUPED's period) and late ones (after the 72 h window)
            assert connection.execute(text(
                "SELECT sum(CASE WHEN e.occurred_at < x.exposed_at THEN 1 ELSE 0 END), "
                "sum(CASE WHEN e.occurred_at >= x.exposed_at + INTERVAL 72 HOUR "
                "THEN 1 ELSE 0 END) FROM parcours_events e JOIN parcours_exposures x "
                "ON e.unit_id = x.unit_id")).one() == (pre, late)
            summaries[engine] = connection.execute(text(
                "SELECT type, name, count(*), sum(value), min(occurred_at), max(occurred_at) "
                "FROM parcours_events GROUP BY type, name ORDER BY type, name")).all()
        add_traffic(url)  # the scheduled reports' new units: exposed during the last day
        with sql.connect() as connection:
            first, last, units, earlier = connection.execute(text(
                "SELECT min(x.exposed_at), max(x.exposed_at), count(DISTINCT x.unit_id), "
                "sum(CASE WHEN e.occurred_at < x.exposed_at THEN 1 ELSE 0 END) "
                f"FROM parcours_exposures x JOIN parcours_events e ON e.unit_id = x.unit_id "
                f"WHERE x.id > {UNITS}")).one()
        assert units > 0 and 0.15 < earlier / (units * 10) < 0.25
        start = STARTED.replace(tzinfo=None)
        assert (first - start).total_seconds() >= SPAN_S - DAY_S, engine
        assert (last - start).total_seconds() < SPAN_S
        sql.dispose()
    assert summaries["duckdb"] == summaries["chdb"]
    kinds = {row[0] for row in summaries["duckdb"]}
    assert kinds == {"step", "friction", "conversion", "nps", "custom"}
