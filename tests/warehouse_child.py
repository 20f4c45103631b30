"""A separate process for warehouse tests: chDB and DuckDB files belong to one process.

``python -m tests.warehouse_child sync|crash N`` with the Parcours and warehouse URLs in
``PARCOURS_*`` env vars (warehouse name ``w``). ``sync`` syncs twice and prints the rows
each run copied and the ids then in the warehouse; ``crash N`` SIGKILLs itself right after
the N-th INSERT into the warehouse has run and before it commits: a sync killed mid-way.
``probe SQL…`` prints the columns of each ``events_sql`` (or the 422's details) and the
error of a query running past the warehouse's time limit. ``analyze KEY NOW [UNITS]``
analyses the experiment at that ISO time and prints how many statements read a bucket of
units, then its report body; ``periods KEY`` prints a bandit's
per-period sums of its primary metric as a reallocation reads them; ``kept KEY NOW TIMES
[UNITS]`` analyses it that many times (a pass over every unit split into buckets of at most
UNITS units: ``routing.UNITS_PER_PASS``) and prints the last report body, then the
experiment's fold records (``warehouses.rollup``), its per-unit tables there and how many
statements read a bucket of units.

The tests fork it from a server that imported this module once (``forked``): the same
fresh process, without two seconds of imports each time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime

from sqlalchemy import Engine, event, text

from experiments.app import create_app
from experiments.db import get_db
from experiments.errors import ValidationFailed
from experiments.services import bandits
from experiments.services.analysis import analyze_experiment
from experiments.services.lifecycle import get_experiment
from experiments.services.warehouses import rollup, routing, sync
from experiments.services.warehouses.engines import WarehouseError, get_warehouses
from experiments.services.warehouses.routing import reallocation_periods
from experiments.services.warehouses.sources import probe

SLOW_CLICKHOUSE_QUERY = "SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) = 1"


def _probe(engine: Engine, events_sql: str) -> object:
    try:
        return probe(engine, events_sql, "events_sql")
    except ValidationFailed as exc:
        return exc.details


def _error_of(engine: Engine, query: str) -> str:
    try:
        with engine.connect() as connection:
            connection.execute(text(query)).all()
    except WarehouseError as exc:
        return str(exc)
    return "no error"


def reads_a_bucket(statement: str) -> bool:
    """A statement of a pass split by unit: it tests the engine's hash of the unit id
    (``dialects.unit_bucket``: DuckDB ``hash``, ClickHouse ``cityHash64``)."""
    return "hash(" in statement.lower() or "hash64(" in statement.lower()


def _count_bucketed(engine: Engine, units: list[str]) -> dict[str, int]:
    """With ``units``, a pass over every unit split into buckets of at most that many
    (``routing.UNITS_PER_PASS``); counts the statements that read a bucket of units."""
    if units:
        routing.UNITS_PER_PASS = int(units[0])
    bucketed = {"n": 0}

    def count(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        bucketed["n"] += reads_a_bucket(statement)

    event.listen(engine, "before_cursor_execute", count)
    return bucketed


def main(mode: str, *args: str) -> None:
    app = create_app({"SCHEDULER": False})
    sync.BATCH_ROWS = 100
    with app.app_context():
        engine = get_warehouses().engine("w")
        if mode == "crash":
            inserts = {"n": 0}

            def kill(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
                if statement.lstrip().upper().startswith("INSERT"):
                    inserts["n"] += 1
                    if inserts["n"] == int(args[0]):
                        os.kill(os.getpid(), signal.SIGKILL)

            event.listen(engine, "after_cursor_execute", kill)
        bucketed = _count_bucketed(engine, {"analyze": args[2:], "kept": args[3:]}.get(mode, []))
        if mode == "analyze":
            with get_db().sessionmaker() as session:
                report = analyze_experiment(session, args[0], now=datetime.fromisoformat(args[1]))
                print(json.dumps({"bucketed": bucketed["n"]}))
                print(json.dumps(report.body))
            return
        if mode == "periods":
            with get_db().sessionmaker() as session:
                experiment = get_experiment(session, args[0])
                data = reallocation_periods(session, experiment,
                                            bandits.periods_of(session, experiment.id))
                primary = next(m.key for m in experiment.metrics if m.role == "primary")
                print(json.dumps({str(number): {arm: [s.n, s.sum, s.sum_squares]
                                                for arm, s in arms.items()}
                                  for number, arms in data.sums(primary).items()}))
            return
        if mode == "kept":
            with get_db().sessionmaker() as session:
                for _ in range(int(args[2])):
                    report = analyze_experiment(session, args[0],
                                                now=datetime.fromisoformat(args[1]))
                experiment_id = get_experiment(session, args[0]).id
            with engine.connect() as connection:
                records = connection.execute(text(
                    "SELECT version, base_table, events_through, exposures_through FROM "
                    f"parcours_rollups WHERE experiment_id = {experiment_id} ORDER BY version"))
                print(json.dumps({"report": report.body,
                                  "folds": [list(row) for row in records],
                                  "tables": sorted(rollup.kept_tables(connection,
                                                                      experiment_id)),
                                  "bucketed": bucketed["n"]}))
            return
        if mode == "probe":
            print(json.dumps({"probes": [_probe(engine, sql) for sql in args],
                              "slow": _error_of(engine, SLOW_CLICKHOUSE_QUERY)}))
            return
        copied = [{name: getattr(result, "exposures", result)
                   for name, result in sync.sync_all(get_db()).items()}
                  for _ in range(2)]
        with engine.connect() as connection:
            print(json.dumps({"copied": copied, **{table: [row[0] for row in connection.execute(
                text(f"SELECT id FROM {table} ORDER BY id"))]
                for table in ("parcours_exposures", "parcours_events",
                              "parcours_identity_links")}}))


def forked(args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """``main`` in a process forked from the preloaded fork server, with the environment,
    directory and output files that ``python -m tests.warehouse_child`` would have."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for stream, number, path in ((sys.stdout, 1, out), (sys.stderr, 2, err)):
        stream.flush()
        with open(path, "w") as file:
            os.dup2(file.fileno(), number)
    main(*args)


if __name__ == "__main__":
    main(*sys.argv[1:])
