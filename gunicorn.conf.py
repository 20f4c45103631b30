"""gunicorn settings for `gunicorn wsgi:app` (override any of them with GUNICORN_CMD_ARGS)."""

import gc
import multiprocessing
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

bind = os.environ.get("PARCOURS_BIND", "127.0.0.1:8000")
_SQLITE = os.environ.get("PARCOURS_DATABASE_URL", "sqlite:").startswith("sqlite")
_CORES = multiprocessing.cpu_count()
# On PostgreSQL, gevent workers, one per core (at least 2). A worker runs Python on
# about one core (the GIL) while its requests wait for the database, and the more
# requests one process holds, the more first exposures share a statement and a commit
# (group commit, services/exposures.py). Greenlets hand a finished batch's requests back
# without the thread wake-ups and GIL hand-offs that cost gthread about a tenth of its
# CPU there. psycopg waits through gevent's loop by itself, and so does the writer
# connection of services/exposures.py. bench_assign on 2 cores, ratios to a bare endpoint
# under the same settings (returning/elsewhere/new units): gevent 0.95×/0.69–0.78×/
# 0.58–0.66×; gthread 2×16 0.97–1.06×/0.68–0.77×/0.49–0.59× (docs/performance.md).
# Each worker holds up to the pool's 30 database connections + 1.
# On SQLite, gthread: cores + 1 workers of one thread. pysqlite releases and retakes
# the GIL for every row it writes, so a sibling thread busy in Python stalls a write
# transaction that holds the database's only write lock, and every other worker waits
# behind it; under gevent, its blocking calls would stall the whole worker. One worker
# more than the cores keeps them busy while one waits for the lock; more workers only
# queue on it (bench_events on 2 cores: 3 workers 0.54-0.56x, 5 workers 0.46-0.63x,
# median 0.49x).
workers = int(os.environ.get("PARCOURS_WORKERS", _CORES + 1 if _SQLITE else max(2, _CORES)))
worker_class = "gthread" if _SQLITE else "gevent"
threads = int(os.environ.get("PARCOURS_THREADS", 1))  # gthread only
worker_connections = 1000  # gevent only: concurrent clients per worker
timeout = 30
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak never becomes an outage, but rarely: a
# new worker starts with cold caches (configuration, keys, known exposures) and new
# connections, and at 2,000 requests/s per worker, 10,000 requests meant every 5 s.
max_requests = 1_000_000
max_requests_jitter = 100_000
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss rid=%({x-request-id}o)s'
forwarded_allow_ips = os.environ.get("PARCOURS_FORWARDED_ALLOW_IPS", "127.0.0.1")
# The scheduler runs as its own process (`flask --app wsgi scheduler`), never in web workers.
raw_env = ["PARCOURS_SCHEDULER=off"]


def post_worker_init(worker: Any) -> None:
    """Freeze what the worker built at start-up (app, models, schemas, ~200k objects).

    They live as long as the worker; left to the collector, each full collection
    re-scans them all, which cost ingestion a tenth of its CPU (bench_events).
    """
    gc.freeze()


# --- API keys never reach the access log (SPEC §2) ------------------------------------
# A `key=` query value (in the request line, the query string, the referer) and an
# Authorization header are masked before gunicorn formats the line.
_KEY_PARAMETER = re.compile(r"((?:^|[?&;])key=)[^&;\s\"]*", re.IGNORECASE)


class RedactingLogger(Logger):
    """gunicorn's logger, with credentials masked in every access log atom."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any
              ) -> dict[str, Any]:
        """gunicorn's atoms with `key=` values and Authorization headers redacted."""
        atoms = super().atoms(resp, req, environ, request_time)
        for name, value in atoms.items():
            if name == "{authorization}i":
                atoms[name] = "[redacted]"
            elif isinstance(value, str) and "key=" in value.lower():
                atoms[name] = _KEY_PARAMETER.sub(r"\1[redacted]", value)
        return atoms


logger_class = RedactingLogger


# --- one /metrics for the whole server (prometheus-client's multiprocess mode) --------
# Each worker writes its metric values to files in PROMETHEUS_MULTIPROC_DIR and /metrics
# reads them all, so one scrape is every worker, and a dead worker's counts stay. The
# directory is emptied at start (stale files of an earlier run would add up) and one
# made here is removed at exit. prometheus_client is only imported after the variable is
# set, in the workers (never --preload) and in child_exit.
_MADE_METRICS_DIR: list[str] = []


def on_starting(server: Any) -> None:
    """Create (or empty) the metrics directory before any worker is forked."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = tempfile.mkdtemp(prefix="parcours-metrics-")
        _MADE_METRICS_DIR.append(directory)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Let the dead worker's live gauges go (its counters are kept)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this server made for itself."""
    for directory in _MADE_METRICS_DIR:
        shutil.rmtree(directory, ignore_errors=True)
