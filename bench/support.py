"""What the benchmarks and the process-level tests share: scratch databases and gunicorn."""

from __future__ import annotations

import http.client
import os
import runpy
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("PARCOURS_BENCH_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def scratch_postgres_database(base_url: str, prefix: str = "parcours_bench", *,
                              keep: bool = False) -> Iterator[str]:
    """A new, empty database next to ``base_url``'s, dropped (forcibly) afterwards unless
    ``keep`` (then its URL is printed, to rerun against it)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        if keep:
            print(f"kept: PARCOURS_BENCH_DATABASE_URL={url}", flush=True)
        else:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def gunicorn_defaults(database_url: str) -> tuple[str, int, int]:
    """Worker class, workers and threads gunicorn.conf.py gives this machine for that
    database (``PARCOURS_WORKERS``/``PARCOURS_THREADS`` still override them)."""
    with mock.patch.dict(os.environ, {"PARCOURS_DATABASE_URL": database_url}):
        conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    return str(conf["worker_class"]), int(conf["workers"]), int(conf["threads"])


def describe_shape(worker_class: str, workers: int, threads: int) -> str:
    """``gevent 2`` or ``gthread 5x1``: how gunicorn serves, for a benchmark's output."""
    return f"{worker_class} {workers}" + (f"x{threads}" if worker_class == "gthread" else "")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Block until ``GET /healthz`` answers 200, or fail if the server died or never did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("gunicorn exited before serving")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not become healthy")


@contextmanager
def gunicorn(target: str, *, env: Mapping[str, str], cwd: Path,
             args: Sequence[str] = ()) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Serve ``target`` on a free loopback port until the block ends (SIGTERM, then wait)."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", *args, "-b", f"127.0.0.1:{port}", target]
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port, process)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=30)
