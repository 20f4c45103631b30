"""Bandit routes (SPEC §13): weight periods, forced reallocation and the calculator."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from experiments.api.routing import api_route, current_principal
from experiments.db import db_session
from experiments.schemas.bandits import AllocationList, AllocationOut, StatsBanditIn, StatsBanditOut
from experiments.services import bandits, reallocation

bp = Blueprint("bandits", __name__, url_prefix="/api/v1")


@api_route(bp, "/experiments/<key>/allocations", response=AllocationList, errors=(404,),
           tags=("experiments",))
def list_allocations(key: str) -> dict[str, Any]:
    """The weight periods of a bandit, oldest first (empty for a fixed allocation)."""
    return {"items": bandits.list_allocations(db_session(), key)}


@api_route(bp, "/experiments/<key>/reallocate", "POST", response=AllocationOut,
           errors=(404, 409), tags=("experiments",))
def reallocate(key: str) -> dict[str, Any]:
    """Update the bandit's weights now (ignores burn-in and cadence, not min_units_per_arm)."""
    period = reallocation.reallocate(db_session(), key, force=True, principal=current_principal())
    assert period is not None  # a forced update either happens or is a 409
    return bandits.period_to_dict(period)


@api_route(bp, "/stats/bandit", "POST", auth="client", body=StatsBanditIn,
           response=StatsBanditOut, tags=("calculators",))
def bandit_numbers(body: StatsBanditIn) -> dict[str, Any]:
    """Period-weighted estimates, p_best, next weights and SRM from per-period sums."""
    return bandits.calculate_bandit([p.model_dump() for p in body.periods],
                                    min_weight=body.min_weight, seed=body.seed,
                                    direction=body.direction)
