"""The demo experiment `make run` shows a newcomer (idempotent)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from experiments.auth import SYSTEM
from experiments.db import utcnow
from experiments.models import Experiment, Exposure, Holdout
from experiments.schemas import EXPERIMENT_EXAMPLE
from experiments.schemas.holdouts import HoldoutFields
from experiments.services.analysis import analyze_experiment
from experiments.services.holdouts import create_holdout
from experiments.services.lifecycle import create_experiment, get_experiment, transition
from experiments.services.simulate import SESSION_MARGIN, SimulationPlan, simulate_traffic

DEMO_KEY = EXPERIMENT_EXAMPLE["key"]
# The documented example experiment, with revenue and NPS too, decided after 500 units per arm.
DEMO_EXPERIMENT: dict[str, Any] = {
    **EXPERIMENT_EXAMPLE,
    "metrics": [
        *EXPERIMENT_EXAMPLE["metrics"],
        {"key": "revenue", "kind": "mean", "event": "purchase", "role": "secondary"},
        {"key": "nps", "kind": "nps", "event": "nps", "role": "secondary"},
    ],
    "analysis": {"method": "sequential", "min_units_per_variant": 500, "min_days": 0},
}
DEMO_SALT = "parcours-demo"
# A real effect on the primary metric, and the friction the hypothesis is about: payment
# errors in the current (control) checkout.
# Everything the demo ships, measured against 5 % of visitors kept on the controls (SPEC §12).
DEMO_HOLDOUT = HoldoutFields.model_validate({
    "key": "demo-holdout", "name": "Everything shipped in the demo", "percent": 0.05,
    "scope": {"experiments": ["*"]},
    "metrics": [{"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary"},
                {"key": "revenue", "kind": "mean", "event": "purchase", "role": "secondary"}]})
DEMO_PLAN = SimulationPlan(units=6000, seed=2026, days=14, effects={"one-page": 0.4},
                           friction={("control", "payment", "error"): 0.06})


def seed_demo_data(session: Session, *, traffic: bool = True) -> Iterator[str]:
    """Create and start the demo experiment, and the demo holdout, unless they exist; yields
    progress lines.

    ``traffic`` also simulates its visitors (a few seconds); tests that only need the
    configuration pass ``traffic=False``.
    """
    if session.scalar(select(Experiment.id).where(Experiment.key == DEMO_KEY)) is not None:
        yield f"demo experiment {DEMO_KEY!r} already exists"
    else:
        create_experiment(session, DEMO_EXPERIMENT, SYSTEM)
        transition(session, DEMO_KEY, "start", SYSTEM)
        demo = get_experiment(session, DEMO_KEY)
        # The simulated traffic spans DEMO_PLAN.days: the demo pretends it started then.
        demo.started_at = utcnow() - timedelta(days=DEMO_PLAN.days) - SESSION_MARGIN
        # A fixed salt makes the demo's split, and so its report, the same on every machine.
        demo.salt = DEMO_SALT
        session.commit()
        yield f"created and started demo experiment {DEMO_KEY!r}"
    if traffic:
        yield from _demo_traffic(session)
    # After the demo's traffic, so that its documented split and report stay as they are.
    if session.scalar(select(Holdout.id).where(Holdout.key == DEMO_HOLDOUT.key)) is None:
        create_holdout(session, DEMO_HOLDOUT, SYSTEM)
        yield f"created holdout {DEMO_HOLDOUT.key!r} over every experiment"


def _demo_traffic(session: Session) -> Iterator[str]:
    """Simulate the demo's traffic unless it is there (a fixed seed makes reruns add nothing)."""
    experiment = get_experiment(session, DEMO_KEY)
    exposed = session.scalar(select(func.count()).select_from(Exposure).where(
        Exposure.experiment_id == experiment.id)) or 0
    if exposed >= DEMO_PLAN.units or experiment.status != "running":
        yield f"demo experiment {DEMO_KEY!r} has {exposed} exposed units"
        return
    counts = simulate_traffic(session, DEMO_KEY, DEMO_PLAN)
    yield (f"simulated {DEMO_PLAN.units} visitors over {DEMO_PLAN.days} days: "
           + ", ".join(f"{variant} {count}" for variant, count in counts.items()))
    # A first report right away, so a newcomer does not wait for the scheduler's interval.
    decision = analyze_experiment(session, DEMO_KEY).body.get("decision") or {}
    outcome = " ".join(filter(None, (decision.get("outcome"), decision.get("winner"))))
    yield f"analysed {DEMO_KEY!r}: decision {outcome}"
