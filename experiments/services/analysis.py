"""Analysis pipeline: aggregates in SQL, statistics from ``stats``, reports stored as history."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from experiments.models import Report


def analyze_experiment(session: Session, key: str, *, now: datetime | None = None) -> Report:
    """Analyse one experiment now, store the report (and decision) and commit."""
    raise NotImplementedError


def analyze_running(session_factory: Callable[[], AbstractContextManager[Session]], *,
                    now: datetime | None = None) -> dict[str, str]:
    """Analyse every running experiment, each in its own transaction."""
    raise NotImplementedError


def report_to_dict(report: Report) -> dict[str, Any]:
    """The public JSON of a stored report (SPEC §6) with its id."""
    return {"id": report.id, **report.body}
