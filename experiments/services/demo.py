"""The demo experiment `make run` shows a newcomer (idempotent)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from experiments.auth import SYSTEM
from experiments.db import utcnow
from experiments.errors import Conflict
from experiments.models import Experiment, Exposure, Holdout
from experiments.schemas import EXPERIMENT_EXAMPLE
from experiments.schemas.holdouts import HoldoutFields
from experiments.services.analysis import analyze_experiment
from experiments.services.bandits import periods_of
from experiments.services.events import ingest_events
from experiments.services.holdout_reports import analyze_holdout
from experiments.services.holdouts import create_holdout
from experiments.services.identity import Link, link_ids
from experiments.services.lifecycle import create_experiment, get_experiment, transition
from experiments.services.reallocation import reallocate
from experiments.services.simulate import SESSION_MARGIN, SimulationPlan, simulate_traffic

DEMO_KEY = EXPERIMENT_EXAMPLE["key"]
# The documented example experiment, with revenue and NPS too, decided after 500 units per arm.
DEMO_EXPERIMENT: dict[str, Any] = {
    **EXPERIMENT_EXAMPLE,
    "metrics": [
        *EXPERIMENT_EXAMPLE["metrics"],
        {"key": "revenue", "kind": "mean", "event": "purchase", "role": "secondary"},
        {"key": "nps", "kind": "nps", "event": "nps", "role": "secondary"},
        # Back-office events under the customer id (late deliveries, below) count here, in
        # the variant the customer saw on the web (SPEC §14).
        {"key": "support-contacts", "kind": "friction", "friction_kind": "support_contact",
         "role": "secondary", "direction": "decrease"},
        # How long the slow tenth of the customers stay on the payment step (SPEC §11).
        {"key": "payment-time-p90", "kind": "quantile", "quantile": 0.9,
         "source": "step_duration", "step": "payment", "role": "secondary",
         "direction": "decrease"},
    ],
    # The demo is small enough to show the funnel's time on each step, and its visitors
    # carry a device and a country to break the report down by (SPEC §11).
    "analysis": {"method": "sequential", "min_units_per_variant": 500, "min_days": 0,
                 "time_on_step": True, "dimensions": ["device", "country"]},
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
# The one-page checkout helps most on phones, where the two pages were hardest to fill in:
# the report's device breakdown flags the mobile level as heterogeneous.
DEMO_PLAN = SimulationPlan(
    units=6000, seed=2026, days=14, effects={"one-page": 0.4},
    friction={("control", "payment", "error"): 0.06},
    attribute_mix={"device": {"mobile": 0.55, "desktop": 0.35, "tablet": 0.10},
                   "country": {"FR": 0.35, "DE": 0.25, "GB": 0.20, "ES": 0.10, "IT": 0.06,
                               "NL": 0.04}},
    segment_effects={("device", "mobile"): {"one-page": 0.9},
                     ("device", "desktop"): {"one-page": 0.0}})
# Demo visitors who log in (linked to a customer id, SPEC §14); every fourth then has a late
# delivery that the support line records under the customer id, two days after the visit.
DEMO_CUSTOMERS = 40
LATE_DELIVERY_EVERY = 4


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
    # After the checkout demo's traffic, so that its documented split and report stay as
    # they are; before the bandit's, whose visitors then fill the holdout's two groups.
    if session.scalar(select(Holdout.id).where(Holdout.key == DEMO_HOLDOUT.key)) is None:
        create_holdout(session, DEMO_HOLDOUT, SYSTEM)
        yield f"created holdout {DEMO_HOLDOUT.key!r} over every experiment"
        held = True
    else:
        held = False
    yield from seed_bandit_demo(session, traffic=traffic)
    if held and traffic:
        analyze_holdout(session, DEMO_HOLDOUT.key)
        yield f"analysed holdout {DEMO_HOLDOUT.key!r}"


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
    yield _demo_identity(session, experiment.id)
    # A first report right away, so a newcomer does not wait for the scheduler's interval.
    decision = analyze_experiment(session, DEMO_KEY).body.get("decision") or {}
    outcome = " ".join(filter(None, (decision.get("outcome"), decision.get("winner"))))
    yield f"analysed {DEMO_KEY!r}: decision {outcome}"


BANDIT_KEY = "homepage-banner"
# A short-lived choice between three banners: a bandit moves traffic to the best one.
BANDIT_EXPERIMENT: dict[str, Any] = {
    "key": BANDIT_KEY, "name": "Homepage banner", "owner": "marketing@example.com",
    "hypothesis": "A banner naming free returns brings more buyers than a discount banner",
    "journey": ["landing", "cart", "checkout", "payment", "confirmation"],
    "variants": [
        {"key": "discount", "name": "10 % off", "weight": 0.34, "is_control": True,
         "payload": {"banner": "discount"}},
        {"key": "free-returns", "name": "Free returns", "weight": 0.33,
         "payload": {"banner": "free-returns"}},
        {"key": "new-season", "name": "New season", "weight": 0.33,
         "payload": {"banner": "new-season"}},
    ],
    "metrics": [{"key": "purchase", "kind": "conversion", "event": "purchase",
                 "role": "primary"}],
    "allocation": {"type": "bandit", "burn_in_hours": 24, "update_every_hours": 48,
                   "min_weight": 0.05, "min_units_per_arm": 100},
    "analysis": {"method": "bayesian", "min_days": 3, "max_days": 21},
}
BANDIT_DAYS, BANDIT_CHUNKS, BANDIT_UNITS = 8, 4, 1500
BANDIT_EFFECTS = {"free-returns": 0.6, "new-season": 0.1}


def seed_bandit_demo(session: Session, *, traffic: bool = True) -> Iterator[str]:
    """The demo bandit: traffic in four 2-day chunks, the weights updated after each one."""
    if session.scalar(select(Experiment.id).where(Experiment.key == BANDIT_KEY)) is not None:
        yield f"demo bandit {BANDIT_KEY!r} already exists"
        return
    create_experiment(session, BANDIT_EXPERIMENT, SYSTEM)
    transition(session, BANDIT_KEY, "start", SYSTEM)
    bandit = get_experiment(session, BANDIT_KEY)
    start = utcnow() - timedelta(days=BANDIT_DAYS) - SESSION_MARGIN
    bandit.started_at = start
    bandit.salt = DEMO_SALT + "-banner"
    # Period 0 starts with the experiment (the start above is back-dated).
    periods_of(session, bandit.id)[0].started_at = start
    session.commit()
    yield f"created and started demo bandit {BANDIT_KEY!r}"
    if not traffic:
        return
    step = timedelta(days=BANDIT_DAYS / BANDIT_CHUNKS)
    for chunk in range(BANDIT_CHUNKS):
        end = start + step * (chunk + 1)
        simulate_traffic(session, BANDIT_KEY, SimulationPlan(
            units=BANDIT_UNITS, seed=2026 + chunk, days=int(step.days) or 1,
            effects=BANDIT_EFFECTS, start=end))
        try:
            period = reallocate(session, BANDIT_KEY, end, force=True)
        except Conflict as refusal:
            yield f"bandit {BANDIT_KEY!r}: no update ({refusal.message})"
            continue
        assert period is not None
        yield (f"bandit {BANDIT_KEY!r} period {period.period}: "
               + ", ".join(f"{arm} {weight:.0%}" for arm, weight in period.weights.items()))
    analyze_experiment(session, BANDIT_KEY)
    yield f"analysed {BANDIT_KEY!r}"


def _demo_identity(session: Session, experiment_id: int) -> str:
    """Log the first demo visitors in and record their back-office events under the
    customer id (a late delivery: ``friction`` ``support_contact``), as a support tool would."""
    now = utcnow()
    visits = session.execute(
        select(Exposure.unit_id, Exposure.exposed_at).where(Exposure.experiment_id == experiment_id)
        .order_by(Exposure.id).limit(DEMO_CUSTOMERS)).all()
    customers = [f"customer-{index + 1}" for index in range(len(visits))]
    linked = link_ids(session, [Link(visit.unit_id, customer, visit.exposed_at)
                                for visit, customer in zip(visits, customers, strict=True)],
                      SYSTEM)
    late = [{"event_id": f"demo-late-delivery-{customer}", "unit_id": customer,
             "type": "friction", "name": "late_delivery", "friction_kind": "support_contact",
             "occurred_at": min(visit.exposed_at + timedelta(days=2), now).isoformat(),
             "properties": {"channel": "support"}}
            for index, (visit, customer) in enumerate(zip(visits, customers, strict=True))
            if index % LATE_DELIVERY_EVERY == 0]
    result = ingest_events(session, late, now=now)
    return (f"linked {linked.linked} demo visitors to customer ids; {result.accepted} "
            "late deliveries recorded by support under the customer id")
