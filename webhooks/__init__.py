"""Webhooks: endpoints, Standard Webhooks signing, transactional outbox and delivery."""

from __future__ import annotations

from flask import Flask

DELIVER_JOB = "webhooks.deliver"
DELIVER_INTERVAL_S = 5


def init_app(app: Flask) -> None:
    """Register the webhook API, CLI, delivery job and signal subscribers on the app."""
    from experiments.jobs import JobSpec, register_job
    from webhooks import models  # noqa: F401  (tables must be known to the metadata)
    from webhooks.api import bp
    from webhooks.cli import webhooks_cli
    from webhooks.delivery import run_job
    from webhooks.outbox import connect_signals

    app.register_blueprint(bp)
    app.cli.add_command(webhooks_cli)
    register_job(app, JobSpec(DELIVER_JOB, interval_s=DELIVER_INTERVAL_S, run=run_job))
    connect_signals()
