"""Running and storing analyses (SPEC §6): aggregates → report → decision → signals.

``analyze_experiment`` reads the experiment's aggregates where its data lives (Parcours's
tables or its warehouse; identity clusters, bandit periods and segments in either), builds
the report with :mod:`.report`, applies the decision rules and stores it, in one
transaction; the scheduler runs it over every running experiment (one failure never stops
the others). Also here: report history, exports and the calculators' entry points.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from experiments import signals
from experiments.db import utcnow
from experiments.errors import ApiError, Conflict, NotFound, ValidationFailed
from experiments.models import Experiment, Report
from experiments.schemas import AnalysisSettings
from experiments.schemas.reports import ExportRow
from experiments.services import alerts, decisions, identity, segments
from experiments.services.lifecycle import experiment_id, get_experiment
from experiments.services.pagination import paginate
from experiments.services.pipeline import sum_specs
from experiments.services.pipeline.rollup import ROLLUP_STATUSES, drop_rollups
from experiments.services.report import build_report
from experiments.services.results import calculation_to_dict
from experiments.services.warehouses import routing
from stats import (
    StatsInputError,
    analyze_variants,
    sample_size,
    variant_from_dict,
)
from stats.power import Design

logger = logging.getLogger(__name__)
Sums = Mapping[str, float]
def latest_report(session: Session, experiment_id: int, *,
                  successful: bool = False) -> Report | None:
    """The most recent report of an experiment (``successful``: the latest with results,
    skipping failed analyses, for the sequential running minimum)."""
    query = select(Report).where(Report.experiment_id == experiment_id).order_by(Report.id.desc())
    if not successful:
        return session.scalar(query.limit(1))
    for offset in range(20):  # one row at a time: report bodies are large
        report = session.scalar(query.offset(offset).limit(1))
        if report is None or not report.body.get("error"):
            return report
    return None


def latest_reports(session: Session, experiment_ids: Sequence[int]) -> dict[int, Report]:
    """The newest report of each experiment (max computed_at, then the highest id), keyed
    by experiment id: the admin list and the daily digest."""
    if not experiment_ids:
        return {}
    newest = (select(Report.experiment_id, func.max(Report.computed_at).label("at"))
              .where(Report.experiment_id.in_(experiment_ids))
              .group_by(Report.experiment_id).subquery())
    rows = session.scalars(select(Report).join(newest, (Report.experiment_id ==
                                                         newest.c.experiment_id)
                                               & (Report.computed_at == newest.c.at))
                           .order_by(Report.id))
    return {row.experiment_id: row for row in rows}


# Both frameworks' fields: the one the report does not use is null (SPEC §6).
SUMMARY_FIELDS = ("variant", "absolute_effect", "relative_effect", "adjusted_p_value",
                  "chance_to_win", "verdict")


def _summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """The short form webhooks carry in ``analysis.completed``."""
    primary = next((m for m in body["metrics"] if m["role"] == "primary"), None)
    return {
        "units": body["units"], "srm_detected": body["srm"]["detected"],
        "primary": None if primary is None else {
            "metric": primary["key"],
            "comparisons": [{key: c.get(key) for key in SUMMARY_FIELDS}
                            for c in primary["comparisons"]]},
        "decision": None if body["decision"] is None else {
            "outcome": body["decision"]["outcome"], "winner": body["decision"]["winner"]},
    }


def _emit_report_signals(session: Session, experiment: Experiment, report: Report,
                         now: datetime) -> None:
    """analysis.completed always; srm.detected when it applies; guardrail.breached once per
    guardrail and variant (the first report that shows the breach)."""
    body, base = report.body, {"experiment": experiment.key, "report_id": report.id}
    if body["srm"]["detected"]:
        signals.emit(signals.srm_detected, session,
                     {**base, "srm": body["srm"], "units": body["units"]})
    comparisons = {(metric, c["variant"]): c for metric, c in alerts.breached_guardrails(body)}
    for alert in alerts.first_breaches(session, experiment.id, report.id, body, now):
        comparison = comparisons[(alert["metric"], alert["variant"])]
        signals.emit(signals.guardrail_breached, session, {
            **base, "metric": alert["metric"], "method": body["method"],
            "message": alert["message"],
            **{key: comparison.get(key) for key in SUMMARY_FIELDS}})
    signals.emit(signals.analysis_completed, session, {**base, "summary": _summary(body)})


def analyze_experiment(session: Session, key: str, *, now: datetime | None = None,
                       dimensions: Sequence[str] = ()) -> Report:
    """Analyse one experiment now, store the report (and decision) and commit.

    An analysis that fails on the data (a numeric error, a database refusing the query)
    stores a report carrying only the ``error``, for this experiment alone: the caller,
    the scheduler's loop included, goes on (SPEC §6).
    """
    now = now or utcnow()
    experiment = get_experiment(session, key)
    try:
        return _analyze(session, experiment, now, dimensions)
    except ApiError:
        raise
    except Exception as exc:
        session.rollback()
        logger.exception("analysis of experiment %s failed", key)
        return store_failed_report(session, key, f"{type(exc).__name__}: {exc}", now)


def store_failed_report(session: Session, key: str, message: str, now: datetime) -> Report:
    """Keep the failure as the experiment's latest report (API, admin page, job log)."""
    experiment = get_experiment(session, key)
    settings = AnalysisSettings.model_validate(experiment.analysis)
    report = Report(experiment_id=experiment.id, computed_at=now, method=settings.method,
                    body={"experiment": key, "computed_at": now.isoformat(),
                          "error": message[:2000]})
    session.add(report)
    session.commit()
    return report


def _analyze(session: Session, experiment: Experiment, now: datetime,
             dimensions: Sequence[str] = ()) -> Report:
    """The analysis proper: aggregates, report, decision, signals, one transaction."""
    settings = AnalysisSettings.model_validate(experiment.analysis)
    # Configured and ad hoc breakdowns (SPEC §11), configured first, each once.
    breakdowns = list(dict.fromkeys([*settings.dimensions, *dimensions]))
    specs = sum_specs(experiment.metrics)
    # Where its data lives (SPEC §15): Parcours's tables or its warehouse, the same pass
    # (identity clusters, bandit periods, segments, order statistics) in either.
    analysed = routing.aggregates_for(session, experiment, settings, specs, breakdowns,
                                      rollup=experiment.status in ROLLUP_STATUSES)
    aggregates, levels, bandit = analysed.aggregates, analysed.levels, analysed.bandit
    previous = latest_report(session, experiment.id, successful=True)
    body = build_report(experiment, settings, aggregates, now=now,
                        previous=previous.body if previous else None, bandit=bandit)
    body["identity"] = identity.identity_section(analysed.linked, body["units"])
    if levels is not None:  # descriptive only: decisions read the whole report's metrics
        body["segments"] = segments.segments_section(experiment, settings, levels)
    result = decisions.report_decision(experiment, settings, body, now)
    body["decision"] = (result.to_dict(now) if result is not None
                        else decisions.current_decision(experiment))
    report = Report(experiment_id=experiment.id, computed_at=now, method=settings.method,
                    body=body)
    session.add(report)
    try:
        session.flush()
        applies = result is not None and settings.auto_decide
        if applies and decisions.changes_decision(experiment, result):
            decisions.record_decision(session, experiment, result, report, now)
        _emit_report_signals(session, experiment, report, now)
        session.flush()
        if applies and settings.auto_conclude and result.outcome in decisions.CONCLUDING:
            decisions.conclude_automatically(session, experiment, result, report, now)
        else:
            session.commit()
    except StaleDataError:
        session.rollback()
        raise Conflict("the experiment changed while it was analysed; retry") from None
    return report


def running_experiment_keys(session: Session) -> list[str]:
    """Keys of the running experiments, in a stable order (scheduler, CLI progress)."""
    return list(session.scalars(select(Experiment.key).where(Experiment.status == "running")
                                .order_by(Experiment.key)))


def analyze_running(session_factory: Callable[[], AbstractContextManager[Session]], *,
                    now: datetime | None = None) -> dict[str, str]:
    """Analyse every running experiment, each in its own transaction; failures are isolated.

    First drops the per-unit rollups of experiments that can no longer run.
    """
    with session_factory() as session:
        keys = running_experiment_keys(session)
        drop_rollups(session, keep=list(session.scalars(
            select(Experiment.id).where(Experiment.status.in_(ROLLUP_STATUSES)))))
        session.commit()
    return analyze_each(session_factory, keys, analyze_experiment, subject="experiment", now=now)


def analyze_each(session_factory: Callable[[], AbstractContextManager[Session]], keys: list[str],
                 analyze: Callable[..., Any], *, subject: str,
                 now: datetime | None = None) -> dict[str, str]:
    """Run `analyze(session, key, now=now)` for each key in its own transaction: "ok" or
    "error: …" (the stored report's error or the exception) per key; failures are isolated."""
    results: dict[str, str] = {}
    for key in keys:
        try:
            with session_factory() as session:
                error = analyze(session, key, now=now).body.get("error")
            results[key] = f"error: {error}" if error else "ok"
        except Exception as exc:  # one broken subject must not stop the others
            logger.exception("analysis of %s %s failed", subject, key)
            results[key] = f"error: {type(exc).__name__}: {exc}"
    return results


def report_to_dict(report: Report) -> dict[str, Any]:
    """The public JSON of a stored report (SPEC §6) with its id."""
    return {"id": report.id, **report.body}


def get_latest_report(session: Session, key: str) -> Report:
    """The latest report of an experiment, or 404 when it was never analysed."""
    report = latest_report(session, experiment_id(session, key))
    if report is None:
        raise NotFound(f"experiment {key!r} has no report yet")
    return report


def list_reports(session: Session, key: str, *, limit: int,
                 cursor: str | None) -> tuple[list[Report], str | None]:
    """Report history of an experiment, newest first."""
    rows, next_cursor = paginate(session, select(Report).where(
        Report.experiment_id == experiment_id(session, key)), Report.id, limit=limit, cursor=cursor,
        descending=True)
    return list(rows), next_cursor


EXPORT_COLUMNS = tuple(ExportRow.model_fields)  # the CSV columns are the JSON row's fields


def _split(pair: Sequence[float] | None) -> tuple[float | None, float | None]:
    return (None, None) if pair is None else (pair[0], pair[1])


def export_rows(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per metric and variant: its estimate and, for treatments, the comparison; then
    the same rows per segment level (``dimension``, ``level`` and the heterogeneity test)."""
    rows = _metric_rows(body.get("metrics", []), {})
    for segment in body.get("segments", []):
        for level in segment["levels"]:
            tests = {(t["metric"], t["variant"]): t for t in level.get("heterogeneity", [])}
            rows += _metric_rows(level["metrics"], {"dimension": segment["dimension"],
                                                    "level": level["level"]}, tests)
    return rows


def _metric_rows(metrics: Sequence[Mapping[str, Any]], where: Mapping[str, Any],
                 tests: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
                 ) -> list[dict[str, Any]]:
    rows = []
    for metric in metrics:
        comparisons = {c["variant"]: c for c in metric.get("comparisons", [])}
        for variant in metric.get("variants", []):
            comparison = comparisons.get(variant["variant"], {})
            row = dict.fromkeys(EXPORT_COLUMNS)
            row.update(metric=metric["key"], kind=metric["kind"], role=metric["role"],
                       variant=variant["variant"], units=variant["units"],
                       estimate=variant["estimate"], **where)
            row["ci_low"], row["ci_high"] = _split(variant.get("ci"))
            if comparison:
                for name in ("absolute_effect", "relative_effect", "p_value",
                             "adjusted_p_value", "chance_to_win", "expected_loss",
                             "significant", "verdict"):
                    row[name] = comparison.get(name)
                row["absolute_ci_low"], row["absolute_ci_high"] = _split(
                    comparison.get("absolute_ci"))
                row["relative_ci_low"], row["relative_ci_high"] = _split(
                    comparison.get("relative_ci"))
            test = (tests or {}).get((metric["key"], variant["variant"]))
            if test is not None:
                row["heterogeneity_adjusted_p_value"] = test["adjusted_p_value"]
                row["heterogeneity_detected"] = test["detected"]
            rows.append(row)
    return rows


# -- standalone calculators -----------------------------------------------------------------



def export_document(key: str, report: Report) -> dict[str, Any]:
    """The JSON export: the report's rows and what identifies them (API and admin)."""
    return {"experiment": key, "report_id": report.id,
            "computed_at": report.body.get("computed_at"), "rows": export_rows(report.body),
            "identity": report.body.get("identity")}


def export_csv_lines(rows: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    """The CSV export, header first, one line at a time (it can be streamed)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in [None, *rows]:
        if row is not None:
            writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()

def calculate_comparisons(kind: str, variants: Sequence[Mapping[str, Any]], *, method: str,
                          alpha: float, correction: str, direction: str = "increase",
                          mde: float | None = None,
                          weights: Sequence[float] | None = None) -> dict[str, Any]:
    """The report's statistics on numbers typed by hand; bad numbers are a 422 naming them."""
    try:
        inputs = [variant_from_dict(kind, data, index=i)  # type: ignore[arg-type]
                  for i, data in enumerate(variants)]
        result = analyze_variants(kind, inputs, method=method, alpha=alpha,  # type: ignore[arg-type]
                                  correction=correction, direction=direction,  # type: ignore[arg-type]
                                  mde=mde, weights=weights)
    except StatsInputError as error:
        raise ValidationFailed.field(error.field, error.message) from None
    return calculation_to_dict(result)


def power_design(settings: Mapping[str, Any]) -> Design:
    """The test the units are planned for: a sequential experiment's own (its always-valid
    intervals need about twice the fixed-horizon sample for the same power), else the
    fixed-horizon one."""
    method = settings.get("method", AnalysisSettings.model_fields["method"].default)
    return "sequential" if method == "sequential" else "fixed_horizon"


def calculate_power(kind: str, **options: Any) -> dict[str, Any]:
    """Units per variant, total and days for a planned experiment (statsmodels conventions)."""
    try:
        result = sample_size(kind, **options)  # type: ignore[arg-type]
    except StatsInputError as error:
        raise ValidationFailed.field(error.field, error.message) from None
    return {"units_per_variant": result.units_per_variant, "total_units": result.total_units,
            "days": result.days}
