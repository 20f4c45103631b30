"""gunicorn settings for `gunicorn wsgi:app` (override any of them with GUNICORN_CMD_ARGS)."""

import gc
import multiprocessing
import os
from typing import Any

bind = os.environ.get("PARCOURS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("PARCOURS_WORKERS", multiprocessing.cpu_count() * 2 + 1))
# On PostgreSQL, threads serve I/O-bound requests (the database does the heavy lifting).
# On SQLite, one thread per worker: pysqlite releases and retakes the GIL for every row it
# writes, so a sibling thread busy in Python stalls a write transaction that holds the
# database's only write lock, and every other worker waits behind it (bench_events).
_SQLITE = os.environ.get("PARCOURS_DATABASE_URL", "sqlite:").startswith("sqlite")
threads = int(os.environ.get("PARCOURS_THREADS", 1 if _SQLITE else 4))
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
