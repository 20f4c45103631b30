"""The holdout report (SPEC §12): the analysis pipeline over a holdout's exposures.

The exposures relation is the holdout's stored exposures with the group as the variant
(``holdout`` is the control, ``measure`` the treatment), the events are Parcours's own;
when identity links touch its units, the analysis unit is the identity cluster, resolved
by the experiments' code (SPEC §14: :func:`holdout_units`, ``identity`` counts in the body);
the holdout's metrics count every event from the unit's holdout exposure on (no
conversion window: ``hours=None``), no CUPED, no rollup. Funnel and friction points run
over the union of the in-scope experiments' journeys, in order of first appearance. The
body is built by :func:`experiments.services.report.build_report` (the same sections as
an experiment report), its ``experiment`` field named ``holdout``, and stored in
``holdout_reports``; the scheduler's analysis job computes every running holdout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import false, null, select
from sqlalchemy.orm import Session

from experiments.db import utcnow
from experiments.errors import ApiError
from experiments.models import (
    Event,
    Experiment,
    Holdout,
    HoldoutExposure,
    HoldoutReport,
    IdentityLink,
    Metric,
    Variant,
)
from experiments.schemas import AnalysisSettings
from experiments.services import identity
from experiments.services.analysis import analyze_each
from experiments.services.holdouts import (
    GROUPS,
    HoldoutConfig,
    get_holdout,
    latest_holdout_report,
)
from experiments.services.pipeline import (
    PipelineSources,
    aggregate_experiment,
    sum_specs,
)
from experiments.services.pipeline.dialects import refresh_statistics
from experiments.services.report import build_report

logger = logging.getLogger(__name__)
# The report's statistics: the analysis defaults (sequential: a holdout is looked at for
# months), without CUPED (no window, so no pre-exposure window either).
SETTINGS = AnalysisSettings(cuped=False)
# The tables a holdout report reads (their planner statistics kept fresh, as an experiment's).
HOLDOUT_TABLES = (HoldoutExposure.__tablename__, Event.__tablename__, IdentityLink.__tablename__)


@dataclass(frozen=True)
class HoldoutSubject:
    """A holdout as the report builders read an experiment (:class:`ReportSubject`)."""

    key: str
    variants: tuple[Variant, ...]
    metrics: tuple[Metric, ...]
    journey: tuple[str, ...]
    started_at: datetime | None


def in_scope_journey(session: Session, holdout: Holdout) -> tuple[str, ...]:
    """The union of the in-scope experiments' journeys, steps in order of first appearance
    (experiments in creation order)."""
    config = HoldoutConfig.build(holdout.id, holdout.key, holdout.percent, holdout.scope or {})
    steps: dict[str, None] = {}
    for key, layer, journey in session.execute(
            select(Experiment.key, Experiment.layer, Experiment.journey).order_by(Experiment.id)):
        if config.covers(key, layer):
            steps.update(dict.fromkeys(journey or ()))
    return tuple(steps)


def subject_of(session: Session, holdout: Holdout) -> HoldoutSubject:
    """The two groups as variants (1:1, ``holdout`` the control) and the holdout's metrics
    (transient rows, never added to the session)."""
    variants = tuple(Variant(key=group, weight=0.5, is_control=group == "holdout")
                     for group in GROUPS)
    metrics = tuple(Metric(**definition) for definition in holdout.metrics)
    return HoldoutSubject(holdout.key, variants, metrics, in_scope_journey(session, holdout),
                          holdout.created_at)


def holdout_tables() -> identity.IdentityTables:
    """Parcours's links and events, and the holdouts' exposures shaped as an experiment's
    (:class:`identity.IdentityTables`): the holdout id as ``experiment_id``, the group as
    ``variant_key``, no override, no attribute snapshot."""
    exposures = select(HoldoutExposure.id, HoldoutExposure.holdout_id.label("experiment_id"),
                       HoldoutExposure.unit_id, HoldoutExposure.group.label("variant_key"),
                       HoldoutExposure.exposed_at, false().label("is_override"),
                       null().label("attributes")).subquery("hx")
    return replace(identity.PARCOURS, exposures=exposures)


def holdout_units(session: Session, holdout_id: int) -> identity.AnalysisUnits:
    """What the holdout report reads: its exposures (one per unit: the table is unique per
    holdout and unit), the group as ``variant_key``, and Parcours's events; over identity
    clusters when links touch its units (:func:`identity.analysis_sources`, as an
    experiment's report)."""
    tables = holdout_tables()
    exposures = tables.exposures
    plain = (select(exposures.c.id.label("exposure_id"), exposures.c.unit_id,
                    exposures.c.variant_key, exposures.c.exposed_at)
             .where(exposures.c.experiment_id == holdout_id)
             .subquery("x"))
    return identity.analysis_sources(
        session, holdout_id, PipelineSources(plain, tables.events, unique_units=True), tables)


def _body(session: Session, holdout: Holdout, now: datetime) -> dict[str, Any]:
    subject = subject_of(session, holdout)
    specs = sum_specs(subject.metrics)
    refresh_statistics(session, HOLDOUT_TABLES)
    units = holdout_units(session, holdout.id)
    aggregates = aggregate_experiment(
        session, None, specs,
        hours=None, cuped=False, journey=subject.journey, rollup=False,
        sources=units.sources)
    previous = latest_holdout_report(session, holdout.id)
    body = build_report(subject, SETTINGS, aggregates, now=now,
                        previous=previous.body if previous else None)
    body["identity"] = identity.identity_section(units.summary(session), body["units"])
    return {"holdout": holdout.key, **{k: v for k, v in body.items() if k != "experiment"}}


def analyze_holdout(session: Session, key: str, *, now: datetime | None = None
                    ) -> HoldoutReport:
    """Analyse one holdout now, store its report and commit. A failure on the data is
    stored as a report carrying only ``error`` (the caller goes on)."""
    now = now or utcnow()
    holdout = get_holdout(session, key)
    holdout_id = holdout.id
    try:
        body = _body(session, holdout, now)
    except ApiError:
        raise
    except Exception as exc:
        session.rollback()
        logger.exception("analysis of holdout %s failed", key)
        body = {"holdout": key, "computed_at": now.isoformat(),
                "error": f"{type(exc).__name__}: {exc}"[:2000]}
    report = HoldoutReport(holdout_id=holdout_id, computed_at=now, body=body)
    session.add(report)
    session.commit()
    return report


def analyze_running_holdouts(session_factory: Callable[[], AbstractContextManager[Session]],
                             *, now: datetime | None = None) -> dict[str, str]:
    """Analyse every running holdout, each in its own transaction; failures are isolated."""
    with session_factory() as session:
        keys = list(session.scalars(select(Holdout.key).where(Holdout.status == "running")
                                    .order_by(Holdout.key)))
    return analyze_each(session_factory, keys, analyze_holdout, subject="holdout", now=now)


__all__ = ["HoldoutSubject", "analyze_holdout", "analyze_running_holdouts", "holdout_tables",
           "holdout_units", "in_scope_journey", "subject_of"]
