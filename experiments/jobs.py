"""Scheduled jobs, declared as data; packages add theirs with :func:`register_job`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask

JOBS_KEY = "parcours.jobs"


@dataclass(frozen=True)
class JobSpec:
    """A job the scheduler runs every ``interval_s`` seconds (once per interval overall)."""

    name: str
    interval_s: float
    run: Callable[[Flask], None]


def register_job(app: Flask, job: JobSpec) -> None:
    """Add a job to the app's schedule (webhooks registers its delivery tick this way)."""
    app.extensions.setdefault(JOBS_KEY, {})[job.name] = job


def registered_jobs(app: Flask) -> list[JobSpec]:
    """Every job declared on the app, in registration order."""
    return list(app.extensions.get(JOBS_KEY, {}).values())
