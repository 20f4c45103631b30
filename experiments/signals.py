"""Domain signals; other packages (webhooks, metrics) subscribe without being imported.

Every signal is sent with the SQLAlchemy session of the transaction that caused
it as ``sender``, *before* that transaction commits, so a subscriber can write an
outbox row that commits or rolls back together with the change.
"""

from __future__ import annotations

from typing import Any

from blinker import Namespace
from sqlalchemy.orm import Session

_signals = Namespace()

experiment_created = _signals.signal("experiment.created")
experiment_started = _signals.signal("experiment.started")
experiment_paused = _signals.signal("experiment.paused")
experiment_concluded = _signals.signal("experiment.concluded")
experiment_decided = _signals.signal("experiment.decided")
analysis_completed = _signals.signal("analysis.completed")
srm_detected = _signals.signal("srm.detected")
guardrail_breached = _signals.signal("guardrail.breached")
experiment_reallocated = _signals.signal("experiment.reallocated")
holdout_created = _signals.signal("holdout.created")
holdout_concluded = _signals.signal("holdout.concluded")

DOMAIN_SIGNALS = (
    experiment_created, experiment_started, experiment_paused, experiment_concluded,
    experiment_decided, analysis_completed, srm_detected, guardrail_breached,
    experiment_reallocated,
    holdout_created, holdout_concluded,
)
EVENT_TYPES = tuple(signal.name for signal in DOMAIN_SIGNALS)


def emit(signal: Any, session: Session, data: dict[str, Any]) -> None:
    """Send a domain signal inside the caller's transaction; ``data`` is the event body."""
    signal.send(session, event_type=signal.name, data=data)
