"""In-process warehouses (DuckDB, chDB) let one process at a time open a database file.

Parcours must not keep it open between uses: the customer's loaders, another gunicorn
worker or the scheduler's process could not open the warehouse at all. And when another
process has it open, Parcours waits for it instead of failing the analysis. Each side runs
in a process of its own (the lock is per process), as in production.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Parcours's side: the warehouse engine as the app makes it.
PARCOURS = """
import sys, time
from sqlalchemy import text
from experiments.config import WarehouseConfig
from experiments.services.warehouses.engines import _make_engine
engine = _make_engine(WarehouseConfig("w", sys.argv[1], timeout_seconds=60, settings={}))
if sys.argv[4:] == ["on-cue"]:  # imported: wait for the test's cue to open the warehouse
    print("ready", flush=True)
    sys.stdin.readline()
started = time.monotonic()
with engine.connect() as connection:
    connection.execute(text(sys.argv[2]))
    connection.commit()
print(f"done {time.monotonic() - started:.2f}", flush=True)
time.sleep(float(sys.argv[3]))  # a web worker lives on after its request
"""
# The other process (the customer's loader): the engine's own driver, holding the file for
# argv[3] seconds once it has written.
LOADER = """
import sys, time
from sqlalchemy import create_engine, text
engine = create_engine(sys.argv[1])
with engine.connect() as connection:
    connection.execute(text(sys.argv[2]))
    connection.commit()
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
engine.dispose()
"""
TABLES = {"duckdb": "CREATE TABLE IF NOT EXISTS orders (id INTEGER)",
          "chdb": "CREATE TABLE IF NOT EXISTS orders (id Int32) ENGINE = MergeTree ORDER BY id"}


def _url(engine: str, directory: Path) -> str:
    return (f"duckdb:///{directory / 'shop.duckdb'}" if engine == "duckdb"
            else f"chdb:///{directory / 'ch'}")


@contextmanager
def _running(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-c", script, *args], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        process.kill()
        process.communicate()


def _first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, process.communicate()[1][-2000:]
    return line.strip()


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], text=True,
                          capture_output=True, timeout=120)


@pytest.mark.parametrize("engine", ["duckdb", "chdb"])
def test_another_process_can_open_the_warehouse_between_parcours_uses(
        engine: str, tmp_path: Path) -> None:
    url = _url(engine, tmp_path)
    with _running(PARCOURS, url, TABLES[engine], "60") as parcours:
        assert _first_line(parcours).startswith("done")
        loader = _run(LOADER, url, "INSERT INTO orders VALUES (1)", "0")
        assert loader.returncode == 0, loader.stderr[-2000:]
        assert loader.stdout.strip() == "locked"


@pytest.mark.parametrize("engine", ["duckdb", "chdb"])
def test_parcours_waits_for_a_process_that_has_the_warehouse_open(
        engine: str, tmp_path: Path) -> None:
    url = _url(engine, tmp_path)
    assert _run(LOADER, url, TABLES[engine], "0").returncode == 0
    # Parcours's process is started and imported first, so that its start-up (slow on a
    # busy machine) does not eat the time the loader holds the file.
    with _running(PARCOURS, url, "INSERT INTO orders VALUES (2)", "0", "on-cue") as parcours:
        assert _first_line(parcours) == "ready"
        with _running(LOADER, url, "INSERT INTO orders VALUES (1)", "1.5") as loader:
            assert _first_line(loader) == "locked"
            opened = time.monotonic()
            assert parcours.stdin is not None
            parcours.stdin.write("go\n")
            parcours.stdin.flush()
            done = _first_line(parcours)
    assert done.startswith("done"), done
    waited = float(done.split()[1])
    assert waited > 0.5 and time.monotonic() - opened >= 1.0
