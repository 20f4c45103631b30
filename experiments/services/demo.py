"""The demo experiment `make run` shows a newcomer (idempotent)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.auth import SYSTEM
from experiments.models import Experiment
from experiments.services.lifecycle import create_experiment, transition

DEMO_KEY = "checkout-redesign"
DEMO_EXPERIMENT: dict[str, Any] = {
    "key": DEMO_KEY,
    "name": "One-page checkout",
    "hypothesis": "Merging address and payment removes the friction at payment",
    "owner": "journey-team@example.com",
    "journey": ["landing", "cart", "checkout", "payment", "confirmation"],
    "variants": [
        {"key": "control", "name": "Current", "weight": 0.5, "is_control": True, "payload": {}},
        {"key": "one-page", "name": "One page", "weight": 0.5, "is_control": False,
         "payload": {"layout": "single"}},
    ],
    "traffic": 1.0,
    "metrics": [
        {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary"},
        {"key": "revenue", "kind": "mean", "event": "purchase", "role": "secondary"},
        {"key": "payment-errors", "kind": "friction", "friction_kind": "error",
         "step": "payment", "role": "guardrail"},
        {"key": "nps", "kind": "nps", "event": "nps", "role": "secondary"},
    ],
    "analysis": {"method": "sequential", "min_units_per_variant": 500, "min_days": 0},
}


def seed_demo_data(session: Session) -> Iterator[str]:
    """Create and start the demo experiment unless it exists; yields progress lines."""
    if session.scalar(select(Experiment.id).where(Experiment.key == DEMO_KEY)) is not None:
        yield f"demo experiment {DEMO_KEY!r} already exists"
        return
    create_experiment(session, DEMO_EXPERIMENT, SYSTEM)
    transition(session, DEMO_KEY, "start", SYSTEM)
    yield f"created and started demo experiment {DEMO_KEY!r}"
