"""Scheduled jobs, declared as data; packages add theirs with :func:`register_job`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.db import Database, get_db, utcnow
from experiments.errors import ApiError
from experiments.models import Experiment

JOBS_KEY = "parcours.jobs"
logger = logging.getLogger(__name__)


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


# --- built-in jobs ---------------------------------------------------------------------------

DIGEST_INTERVAL_S = 86_400.0


class JobFailed(Exception):
    """A job finished its work but some of it failed; the message lists what."""


def init_app(app: Flask) -> None:
    """Declare the built-in jobs: analysis every ``ANALYSIS_INTERVAL_S`` and the daily digest."""
    settings = app.config["PARCOURS"]
    register_job(app, JobSpec("analysis", float(settings.ANALYSIS_INTERVAL_S), run_analysis))
    register_job(app, JobSpec("digest", DIGEST_INTERVAL_S, run_digest))
    # Checked as often as the analysis runs; each bandit's own burn-in and cadence decide.
    register_job(app, JobSpec("bandits", float(settings.ANALYSIS_INTERVAL_S), run_bandits))
    if settings.WAREHOUSES:
        register_job(app, JobSpec("warehouse-sync", float(settings.ANALYSIS_INTERVAL_S),
                                  run_warehouse_sync))


def run_analysis(app: Flask) -> None:
    """Analyse every running experiment, then every running holdout; one failure is logged
    and never stops the others."""
    from experiments.services.analysis import analyze_running
    from experiments.services.holdout_reports import analyze_running_holdouts

    results = analyze_running(get_db(app).session)
    holdouts = analyze_running_holdouts(get_db(app).session)
    logger.info("analysis: %d running holdout(s) analysed", len(holdouts))
    results.update({f"holdout {key}": result for key, result in holdouts.items()})
    failed = {key: result for key, result in results.items() if result != "ok"}
    logger.info("analysis: %d running experiment(s) analysed, %d failed",
                len(results) - len(holdouts), len(failed))
    if failed:
        raise JobFailed(f"{len(failed)} of {len(results)} experiment(s) failed: "
                        + "; ".join(f"{key}: {result}" for key, result in failed.items()))


def run_bandits(app: Flask) -> None:
    """Open a new weight period for every running bandit that is due (SPEC §13)."""
    from experiments.services.reallocation import reallocate_due

    with get_db(app).session() as session:
        results = reallocate_due(session)
    failed = {key: result for key, result in results.items() if result.startswith("error")}
    logger.info("bandits: %s", ", ".join(f"{k}: {r}" for k, r in results.items()) or "none")
    if failed:
        raise JobFailed("; ".join(f"{key}: {result}" for key, result in failed.items()))


def run_warehouse_sync(app: Flask) -> None:
    """Copy new exposures (and events, where asked) into every configured warehouse (§15)."""
    from experiments.services.warehouses.sync import sync_all

    results = sync_all(get_db(app))
    failed = {name: result for name, result in results.items() if isinstance(result, str)}
    logger.info("warehouse sync: %d warehouse(s), %d failed", len(results), len(failed))
    if failed:
        raise JobFailed("; ".join(f"{name}: {result}" for name, result in failed.items()))


def run_digest(app: Flask) -> None:
    """Log the daily digest of running experiments (what a team lead reads each morning)."""
    with get_db(app).session() as session:
        lines = build_digest(session)
    for line in lines:
        logger.info("digest: %s", line)


def build_digest(session: Session, *, now: datetime | None = None) -> list[str]:
    """A header plus one line per running experiment: age and its latest report's summary."""
    now = now or utcnow()
    experiments = session.scalars(select(Experiment).where(Experiment.status == "running")
                                  .order_by(Experiment.key)).all()
    from experiments.services.analysis import latest_reports

    lines = [f"{len(experiments)} running experiment(s) on {now:%Y-%m-%d}"]
    reports = latest_reports(session, [experiment.id for experiment in experiments])
    for experiment in experiments:
        report = reports.get(experiment.id)
        days = (now - experiment.started_at).days if experiment.started_at else 0
        summary = report_summary(report.body) if report else "no report yet"
        lines.append(f"{experiment.key} (day {days}): {summary}")
    return lines


def report_summary(body: Mapping[str, Any]) -> str:
    """One line out of a SPEC §6 report: units, SRM, primary metric verdict, decision."""
    units = body.get("units") or {}
    parts = [f"{sum(units.values())} units ("
             + ", ".join(f"{key} {count}" for key, count in units.items()) + ")"]
    srm = body.get("srm") or {}
    parts.append("SRM DETECTED" if srm.get("detected") else "SRM ok")
    primary = next((m for m in body.get("metrics") or [] if m.get("role") == "primary"), None)
    if primary:
        parts.append(_primary_summary(primary))
    decision = body.get("decision") or {}
    if decision.get("outcome"):
        winner = f" {decision['winner']}" if decision.get("winner") else ""
        parts.append(f"decision {decision['outcome']}{winner}")
    return " · ".join(parts)


def _primary_summary(metric: Mapping[str, Any]) -> str:
    """``purchase: one-page +11.8% better (p=0.030)`` for each treatment of the primary metric."""
    comparisons = []
    for comparison in metric.get("comparisons") or []:
        effect = comparison.get("relative_effect")
        p_value = comparison.get("adjusted_p_value", comparison.get("p_value"))
        text = f"{comparison.get('variant')} "
        text += f"{effect:+.1%}" if isinstance(effect, int | float) else "n/a"
        text += f" {comparison.get('verdict') or 'inconclusive'}"
        chance = comparison.get("chance_to_win")
        if isinstance(p_value, int | float):
            text += f" (p={p_value:.3f})"
        elif isinstance(chance, int | float):  # a Bayesian report has no p-values
            text += f" (chance to win {chance:.0%})"
        comparisons.append(text)
    return f"{metric.get('key')}: " + (", ".join(comparisons) or "no comparison")


def analyze_one(database: Database, key: str) -> tuple[bool, str]:
    """Analyse one experiment in its own transaction: (ok, one summary line); never raises."""
    from experiments.services.analysis import analyze_experiment

    try:
        with database.session() as session:
            report = analyze_experiment(session, key)
            body = report.body
    except ApiError as exc:
        return False, f"{key}: error: {exc.message}"
    except Exception as exc:
        logger.exception("analysis of %s failed", key)
        return False, f"{key}: error: {type(exc).__name__}: {exc}"
    if body.get("error"):
        return False, f"{key}: error: {body['error']}"
    return True, f"{key}: {report_summary(body)}"
