"""Analysis of 1 M exposed units and 10 M events vs one hand-written aggregate query (SPEC §9).

Targets: a full report (``analyze_experiment``, 4 metrics) ≤ 1.5× the time of one
aggregate SQL query computing the primary metric's per-variant counts, and a peak RSS
of the analysis process < 300 MB. PostgreSQL only: a fresh database is created (and
dropped) on ``PARCOURS_BENCH_POSTGRES_URL``; the data is generated in SQL.

The reports are timed as the scheduler produces them: the first analysis of the
experiment reads every event (printed, with its ratio), the second folds them into the
per-unit rollup (printed), and the timed reports then run while traffic keeps coming
(before each, 1,000 new units and 10,000 new events are added in SQL, untimed).

    PARCOURS_BENCH_UNITS=100000 .venv/bin/python -m bench bench_analysis   # try small first

The same scheduled report broken down by 3 dimensions (country 25 levels, device 3, plan 5)
is timed beside it (SPEC §9: ≤ 2×). Measured 2026-12-04 on PostgreSQL: 9.1× when one pass
grouped by the dimensions' cross product (folded in Python), 3.57× with one SELECT per
grouping set UNION ALL'd, 2.12–2.52× with one GROUP BY GROUPING SETS statement (PostgreSQL
sorted the per-unit rows: it cannot estimate the attributes' levels), then 1.67× at 1 M units
and 1.86× at 200,000 (OK) once the crossed groups were hashed (docs/performance.md,
"Segments").

The same scheduled report with the funnel's time on step (``analysis.time_on_step``) is
timed too: it could be on by default only within 1.5x the report without.

PARCOURS_BENCH_KEEP_DB=1 keeps the filled database and prints its URL; giving that URL as
PARCOURS_BENCH_DATABASE_URL reruns the timings on it without regenerating (EXPLAIN work).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from bench.support import POSTGRES_URL, scratch_postgres_database

UNITS = int(os.environ.get("PARCOURS_BENCH_UNITS", "1000000"))
EVENTS_PER_UNIT = int(os.environ.get("PARCOURS_BENCH_EVENTS_PER_UNIT", "10"))
REPEAT = int(os.environ.get("PARCOURS_BENCH_REPEAT", "3"))
KEY = "bench-checkout"
STARTED = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 14
NOW = STARTED + timedelta(days=DAYS + 1)
TARGET_RATIO = 1.5
NEW_UNITS, NEW_EVENTS = 1_000, 10_000  # arriving between two scheduled reports
TARGET_RSS_MB = 300
# Segments (SPEC §9, §11): a report broken down by 3 dimensions (25, 3 and 5 levels in the
# exposures' attributes) costs at most twice the scheduled report without.
DIMENSIONS = ("country", "device", "plan")
TARGET_SEGMENTS_RATIO = 2.0
# The funnel's time on step (analysis.time_on_step, SPEC §11) may be on by default only if
# the scheduled report with it stays within 1.5x the report without.
TARGET_TIME_ON_STEP_RATIO = 1.5

# The baseline a data analyst would write: units and converters (a purchase within the
# 72 h conversion window after the first exposure) per variant, in one statement.
BASELINE_SQL = text("""
WITH exposed AS (
    SELECT unit_id, variant_key, exposed_at FROM exposures
    WHERE experiment_id = :experiment_id AND NOT is_override
), converters AS (
    SELECT DISTINCT x.unit_id FROM exposed x JOIN events e ON e.unit_id = x.unit_id
    WHERE e.name = 'purchase' AND e.occurred_at >= x.exposed_at
      AND e.occurred_at < x.exposed_at + interval '72 hours'
)
SELECT x.variant_key, count(*) AS units, count(c.unit_id) AS converters
FROM exposed x LEFT JOIN converters c ON c.unit_id = x.unit_id
GROUP BY x.variant_key ORDER BY x.variant_key
""")

# Not a target, a diagnosis: the cheapest query that touches what a full report needs (every
# event with a journey step or a metric's name, joined to its unit, one group per unit).
# A report cannot be faster than this without another data layout (see docs/performance.md).
FLOOR_SQL = text("""
SELECT count(*) FROM (
    SELECT x.id, count(*) FROM exposures x JOIN events e ON e.unit_id = x.unit_id
    WHERE x.experiment_id = :experiment_id AND NOT x.is_override
      AND (e.step IS NOT NULL OR e.name IN ('purchase', 'nps'))
    GROUP BY x.id
) AS per_unit
""")

EXPOSURES_SQL = text("""
INSERT INTO exposures (experiment_id, unit_id, variant_key, exposed_at, attributes, is_override)
SELECT :experiment_id, 'u' || g,
       CASE WHEN random() < 0.5 THEN 'control' ELSE 'one-page' END,
       :started + (g * :span_s / :units) * interval '1 second',
       jsonb_build_object('country', 'c' || floor(random() * 25)::int,
                          'device', (ARRAY['mobile', 'desktop', 'tablet'])[1 + g % 3],
                          'plan', 'p' || floor(random() * 5)::int), false
FROM generate_series(CAST(:first_unit AS bigint), CAST(:last_unit AS bigint)) AS g
""")

# Ten events per unit on average: journey steps, friction, purchases with values, NPS
# answers and custom events; about a quarter fall before the unit's exposure (CUPED).
EVENTS_SQL = text("""
INSERT INTO events (event_id, unit_id, type, name, step, friction_kind, value,
                    occurred_at, received_at, properties)
SELECT :prefix || n, 'u' || u, kind,
       CASE kind WHEN 'step' THEN step WHEN 'friction' THEN friction
                 WHEN 'conversion' THEN 'purchase' WHEN 'nps' THEN 'nps' ELSE 'click' END,
       CASE WHEN kind IN ('step', 'friction') THEN step END,
       CASE WHEN kind = 'friction' THEN friction END,
       CASE kind WHEN 'conversion' THEN round((20 + r2 * 80)::numeric, 2)::float
                 WHEN 'nps' THEN floor(r2 * 11) END,
       at, least(at, now()), '{}'::jsonb
FROM (
    SELECT n, u, at,
           CASE WHEN r < 0.55 THEN 'step' WHEN r < 0.70 THEN 'friction'
                WHEN r < 0.80 + CASE WHEN u % 2 = 0 THEN 0.01 ELSE 0 END THEN 'conversion'
                WHEN r < 0.85 THEN 'nps' ELSE 'custom' END AS kind,
           (ARRAY['landing', 'cart', 'checkout', 'payment', 'confirmation'])
               [1 + floor(r2 * 5)::int] AS step,
           (ARRAY['error', 'abandonment', 'retry', 'rage_click', 'dead_click', 'slow_step',
                  'back_navigation', 'form_error', 'support_contact', 'bounce'])
               [1 + floor(r3 * 10)::int] AS friction,
           r2
    FROM (
        SELECT n, u, random() AS r, random() AS r2, random() AS r3,
               :started + (u * :span_s / :units) * interval '1 second'
                   + (random() * 4 - 1) * interval '1 day' AS at
        FROM (SELECT n, 1 + floor(random() * :last_unit)::bigint AS u
              FROM generate_series(1, :events) AS n) AS picked
    ) AS drawn
) AS typed
""")


def main() -> None:
    """Create a fresh database, fill it, time analysis vs baseline, report RSS, drop it."""
    with bench_database() as (url, experiment_id):
        drop_rollup(url, experiment_id)  # a reused database starts cold too
        baseline_s = best_of(lambda: run_baseline(url, experiment_id))
        print(f"baseline aggregate query   {baseline_s:8.2f}s", flush=True)
        first_s = timed(lambda: run_analysis(url))
        print(f"first report (all events)  {first_s:8.2f}s   ratio {first_s / baseline_s:.2f}x "
              "(once per experiment; information only)", flush=True)
        fold_s = timed(lambda: run_analysis(url))
        print(f"second report + rollup     {fold_s:8.2f}s   (folds every event once; "
              "information only)", flush=True)
        analysis_s = best_of(lambda: run_analysis(url),
                             before=lambda: add_traffic(url, experiment_id))
        segments_s = best_of(lambda: run_analysis(url, dimensions=DIMENSIONS),
                             before=lambda: add_traffic(url, experiment_id))
        floor_s = best_of(lambda: run_floor(url, experiment_id))
        with time_on_step(url):
            timed_s = best_of(lambda: run_analysis(url),
                              before=lambda: add_traffic(url, experiment_id))
        rss = child_rss(url)
    ratio = analysis_s / baseline_s
    print(f"scheduled report (4 m.)    {analysis_s:8.2f}s   ratio {ratio:.2f}x "
          f"(target <= {TARGET_RATIO}x) {'OK' if ratio <= TARGET_RATIO else 'MISSED'}")
    segments_ratio = segments_s / analysis_s
    print(f"same + 3 dimensions        {segments_s:8.2f}s   ratio {segments_ratio:.2f}x the "
          f"report without (target <= {TARGET_SEGMENTS_RATIO}x) "
          f"{'OK' if segments_ratio <= TARGET_SEGMENTS_RATIO else 'MISSED'}")
    timed_ratio = timed_s / analysis_s
    print(f"scheduled report + time on step {timed_s:5.2f}s   ratio {timed_ratio:.2f}x the "
          f"report without (default on when <= {TARGET_TIME_ON_STEP_RATIO}x) "
          f"{'OK' if timed_ratio <= TARGET_TIME_ON_STEP_RATIO else 'MISSED'}")
    print(f"floor: join+group only     {floor_s:8.2f}s   ratio {floor_s / baseline_s:.2f}x "
          "(what reading every event costs; information only)")
    print(f"analysis peak RSS          {rss['peak_mb']:8.0f} MB (after imports "
          f"{rss['imports_mb']:.0f} MB; target < {TARGET_RSS_MB} MB) "
          f"{'OK' if rss['peak_mb'] < TARGET_RSS_MB else 'MISSED'}")


@contextmanager
def bench_database() -> Any:
    """(url, experiment id) of a filled database: a fresh one (dropped afterwards unless
    PARCOURS_BENCH_KEEP_DB=1), or the one PARCOURS_BENCH_DATABASE_URL names (kept, reused)."""
    reuse = os.environ.get("PARCOURS_BENCH_DATABASE_URL")
    if reuse:
        engine = create_engine(reuse)
        with engine.connect() as connection:
            experiment_id = connection.scalar(
                text("SELECT id FROM experiments WHERE key = :key"), {"key": KEY})
        engine.dispose()
        print(f"reusing {make_url(reuse).database}", flush=True)
        yield reuse, experiment_id
        return
    with fresh_database() as url:
        print(f"units={UNITS:,} events={UNITS * EVENTS_PER_UNIT:,} "
              f"database={make_url(url).database}", flush=True)
        experiment_id = create_running_experiment(url)
        started = time.perf_counter()
        generate_data(url, experiment_id)
        print(f"data generated in {time.perf_counter() - started:.1f}s", flush=True)
        yield url, experiment_id


@contextmanager
def fresh_database() -> Any:
    """A migrated database next to the configured one, dropped afterwards (unless kept)."""
    from experiments.migrate import upgrade

    keep = os.environ.get("PARCOURS_BENCH_KEEP_DB") == "1"
    with scratch_postgres_database(POSTGRES_URL, keep=keep) as url:
        upgrade(url)
        yield url


def bench_app(url: str) -> Any:
    """The app on the bench database, without scheduler or extensions."""
    from experiments.app import create_app

    return create_app({"DATABASE_URL": url, "SCHEDULER": False, "EXTENSIONS": (),
                       "SECRET_KEY": "bench", "INSTANCE_PATH": tempfile.gettempdir(),
                       "LOG_LEVEL": "WARNING"})


def bench_experiment() -> dict[str, Any]:
    """The demo experiment's 4 additive metrics under the bench's key, with CUPED, without
    time on step (timed on its own: :func:`time_on_step`) nor the demo's quantile metric and
    dimensions (order statistics are read from the events at every report, like time on
    step: the rollup cannot hold them)."""
    from experiments.services.demo import DEMO_EXPERIMENT

    metrics = [m for m in DEMO_EXPERIMENT["metrics"] if m["kind"] != "quantile"]
    return {**DEMO_EXPERIMENT, "key": KEY, "metrics": metrics,
            "analysis": {"method": "sequential", "min_units_per_variant": 1000,
                         "min_days": 7, "cuped": True, "time_on_step": False}}


@contextmanager
def time_on_step(url: str) -> Any:
    """The bench experiment with ``analysis.time_on_step`` on, off again afterwards."""
    from experiments.db import get_db
    from experiments.services.lifecycle import get_experiment

    def switch(on: bool) -> None:
        app = bench_app(url)
        with app.app_context(), get_db(app).session() as session:
            experiment = get_experiment(session, KEY)
            experiment.analysis = {**experiment.analysis, "time_on_step": on}
            session.commit()
        get_db(app).engine.dispose()

    switch(True)
    try:
        yield
    finally:
        switch(False)


def create_running_experiment(url: str, payload: dict[str, Any] | None = None) -> int:
    """``payload`` (default :func:`bench_experiment`), started DAYS days before NOW."""
    from experiments.auth import SYSTEM
    from experiments.db import get_db
    from experiments.models import Experiment
    from experiments.services.lifecycle import create_experiment, transition

    app = bench_app(url)
    payload = payload or bench_experiment()
    with app.app_context(), get_db(app).session() as session:
        experiment = create_experiment(session, payload, SYSTEM)
        transition(session, KEY, "start", SYSTEM)
        session.get(Experiment, experiment.id).started_at = STARTED
        experiment_id = experiment.id
    get_db(app).engine.dispose()
    return experiment_id


def generate_data(url: str, experiment_id: int) -> None:
    """Exposures and events in SQL, with the events' indexes built after the load."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    params = {**traffic_params(experiment_id), "first_unit": 1, "last_unit": UNITS,
              "events": UNITS * EVENTS_PER_UNIT, "prefix": "e"}
    with engine.connect() as connection:
        connection.execute(text("SET maintenance_work_mem = '512MB'"))
        connection.execute(text("SELECT setseed(0.42)"))
        connection.execute(EXPOSURES_SQL, params)
        with indexes_dropped(connection, "events"):
            connection.execute(EVENTS_SQL, params)
        connection.execute(text("VACUUM ANALYZE exposures"))
        connection.execute(text("VACUUM ANALYZE events"))
    engine.dispose()


def traffic_params(experiment_id: int) -> dict[str, Any]:
    """Parameters shared by the initial load and the traffic added between reports."""
    return {"experiment_id": experiment_id, "units": UNITS, "started": STARTED,
            "span_s": DAYS * 86_400.0}


def add_traffic(url: str, experiment_id: int) -> None:
    """New units and new events (0.1 % each) arrive between two scheduled reports, numbered
    after the units already there (a reused database holds earlier runs' traffic)."""
    engine = create_engine(url)
    with engine.begin() as connection:
        first_unit = 1 + connection.scalar(
            text("SELECT count(*) FROM exposures WHERE experiment_id = :id"),
            {"id": experiment_id})
        params = {**traffic_params(experiment_id), "first_unit": first_unit,
                  "last_unit": first_unit + NEW_UNITS - 1, "events": NEW_EVENTS,
                  "prefix": f"r{first_unit}-"}
        connection.execute(EXPOSURES_SQL, params)
        connection.execute(EVENTS_SQL, params)
    engine.dispose()


def drop_rollup(url: str, experiment_id: int) -> None:
    """Forget the experiment's per-unit rollup (the first report then reads every event)."""
    engine = create_engine(url)
    with engine.begin() as connection:
        for table in ("unit_rollups", "rollup_states"):
            connection.execute(text(f"DELETE FROM {table} WHERE experiment_id = :id"),
                               {"id": experiment_id})
    engine.dispose()


@contextmanager
def indexes_dropped(connection: Connection, table: str) -> Any:
    """Drop a table's secondary indexes and unique constraints, recreate them afterwards
    (a bulk load then one index build is several times faster than row-by-row upkeep)."""
    constraints = connection.execute(text(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = CAST(:table AS regclass) AND contype = 'u'"), {"table": table}).all()
    indexes = connection.execute(text(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :table "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint "
        "WHERE conrelid = CAST(:table AS regclass))"), {"table": table}).all()
    for name, _ in constraints:
        connection.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
    for name, _ in indexes:
        connection.execute(text(f'DROP INDEX "{name}"'))
    yield
    for name, definition in constraints:
        connection.execute(text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'))
    for _, definition in indexes:
        connection.execute(text(definition))


def best_of(run: Callable[[], Any], *, before: Callable[[], None] = lambda: None) -> float:
    """Median of REPEAT timed runs after one warm-up (same cache state for both sides);
    ``before`` runs untimed ahead of each."""
    before()
    run()
    times = []
    for _ in range(REPEAT):
        before()
        times.append(timed(run))
    return statistics.median(times)


def timed(run: Callable[[], Any]) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def run_baseline(url: str, experiment_id: int) -> None:
    """The hand-written aggregate query, on its own connection like the analysis."""
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(BASELINE_SQL, {"experiment_id": experiment_id}).all()
    engine.dispose()
    assert sum(row.units for row in rows) >= UNITS


def run_floor(url: str, experiment_id: int) -> None:
    """The bare join and per-unit grouping a full report cannot avoid (see FLOOR_SQL)."""
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.scalar(FLOOR_SQL, {"experiment_id": experiment_id}) > 0
    engine.dispose()


def run_analysis(url: str, *, units: int = UNITS,
                 dimensions: tuple[str, ...] = ()) -> dict[str, Any]:
    """One full report through the same service the scheduler calls (``units`` exposed),
    broken down by ``dimensions`` (ad hoc, as ``POST …/analyze`` asks)."""
    from experiments.db import get_db
    from experiments.services.analysis import analyze_experiment

    app = bench_app(url)
    with app.app_context(), get_db(app).session() as session:
        report = analyze_experiment(session, KEY, now=NOW, dimensions=dimensions)
        body = report.body
    get_db(app).engine.dispose()
    assert sum(body["units"].values()) >= units, body.get("units")
    assert [s["dimension"] for s in body.get("segments", [])] == list(dimensions)
    return body


def child_rss(url: str) -> dict[str, float]:
    """Peak RSS of one analysis in a fresh child process (ru_maxrss, KiB on Linux)."""
    output = subprocess.run([sys.executable, "-m", "bench.bench_analysis", "--child", url],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _child(url: str) -> None:
    """Child side of :func:`child_rss`: imports, then the analysis, printing both peaks."""
    import experiments.app
    import experiments.services.analysis  # noqa: F401

    imports_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_analysis(url)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"imports_mb": imports_kb / 1024, "peak_mb": peak_kb / 1024}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2])
    else:
        main()
