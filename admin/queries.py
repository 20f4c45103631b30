"""Read-only look-ups the admin pages need beyond the services (lists, latest reports)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, defer

from experiments.models import Experiment, Report, User
from experiments.services.pagination import paginate


def search_experiments(session: Session, *, status: str | None, text: str | None,
                       limit: int, cursor: str | None) -> tuple[list[Experiment], str | None]:
    """Experiments newest first, filtered by status and a case-insensitive text search."""
    query = select(Experiment)
    if status:
        query = query.where(Experiment.status == status)
    if text:
        query = query.where(_matches(text, Experiment.key, Experiment.name, Experiment.owner,
                                     Experiment.hypothesis, Experiment.learnings))
    rows, next_cursor = paginate(session, query, Experiment.id, limit=limit, cursor=cursor,
                                 descending=True)
    return list(rows), next_cursor


def _matches(text: str, *columns: Any) -> Any:
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return or_(*(func.lower(column).like(pattern.lower(), escape="\\") for column in columns))


def report_history(session: Session, experiment_id: int, *, limit: int) -> list[Report]:
    """The experiment's latest reports, newest first, bodies left unloaded (the page lists
    dates; only the report it shows loads its body)."""
    return list(session.scalars(select(Report).options(defer(Report.body))
                                .where(Report.experiment_id == experiment_id)
                                .order_by(Report.id.desc()).limit(limit)))


def get_report(session: Session, experiment_id: int, report_id: int) -> Report | None:
    """One report of this experiment (None if it belongs to another one)."""
    report = session.get(Report, report_id)
    return report if report is not None and report.experiment_id == experiment_id else None


def iterations_of(session: Session, experiment_id: int) -> list[Experiment]:
    """The experiments that iterate this one."""
    return list(session.scalars(select(Experiment).where(
        Experiment.iteration_of_id == experiment_id).order_by(Experiment.id)))


def list_users(session: Session) -> list[User]:
    """Every UI account, by email."""
    return list(session.scalars(select(User).order_by(User.email)))
