"""gunicorn settings for `gunicorn wsgi:app` (override any of them with GUNICORN_CMD_ARGS)."""

import gc
import multiprocessing
import os
from typing import Any

bind = os.environ.get("PARCOURS_BIND", "127.0.0.1:8000")
_SQLITE = os.environ.get("PARCOURS_DATABASE_URL", "sqlite:").startswith("sqlite")
_CORES = multiprocessing.cpu_count()
# On PostgreSQL, one worker per core with 16 threads each. A worker runs Python on about
# one core (the GIL) while its threads wait for the database, and the more requests one
# process holds, the more first exposures share a statement and a commit (group commit,
# services/exposures.py). bench_assign on 2 cores, same code, as ratios to a bare endpoint
# (returning/elsewhere/new units): 5×4 gave 0.77×/0.48×/0.38×, 2×16 0.83–1.09×/0.52–0.66×/
# 0.42–0.51× over several runs (README, Performance).
# Each worker holds up to threads + 1 database connections.
# On SQLite, 2 × cores + 1 workers of one thread: pysqlite releases and retakes the GIL
# for every row it writes, so a sibling thread busy in Python stalls a write transaction
# that holds the database's only write lock, and every other worker waits behind it.
workers = int(os.environ.get("PARCOURS_WORKERS", 2 * _CORES + 1 if _SQLITE else max(2, _CORES)))
threads = int(os.environ.get("PARCOURS_THREADS", 1 if _SQLITE else 16))
worker_class = "gthread"
timeout = 30
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak never becomes an outage.
max_requests = 10_000
max_requests_jitter = 1_000
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
