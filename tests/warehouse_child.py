"""A separate process for warehouse tests: chDB and DuckDB files belong to one process.

``python -m tests.warehouse_child sync|crash N`` with the Parcours and warehouse URLs in
``PARCOURS_*`` env vars (warehouse name ``w``). ``sync`` syncs twice and prints the rows
each run copied and the ids then in the warehouse; ``crash N`` SIGKILLs itself right after
the N-th INSERT into the warehouse has run and before it commits: a sync killed mid-way.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from sqlalchemy import event, text

from experiments.app import create_app
from experiments.db import get_db
from experiments.services.warehouses import sync
from experiments.services.warehouses.engines import get_warehouses


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
        copied = [{name: getattr(result, "exposures", result)
                   for name, result in sync.sync_all(get_db()).items()}
                  for _ in range(2)]
        with engine.connect() as connection:
            print(json.dumps({"copied": copied, **{table: [row[0] for row in connection.execute(
                text(f"SELECT id FROM {table} ORDER BY id"))]
                for table in ("parcours_exposures", "parcours_events")}}))


if __name__ == "__main__":
    main(*sys.argv[1:])
