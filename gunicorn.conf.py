"""gunicorn settings for `gunicorn wsgi:app` (override any of them with GUNICORN_CMD_ARGS)."""

import multiprocessing
import os

bind = os.environ.get("PARCOURS_BIND", "127.0.0.1:8000")
# Threads serve I/O-bound requests (the database does the heavy lifting).
workers = int(os.environ.get("PARCOURS_WORKERS", multiprocessing.cpu_count() * 2 + 1))
threads = int(os.environ.get("PARCOURS_THREADS", 4))
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
