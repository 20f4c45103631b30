"""Optional services the admin pages use when they are installed (analysis, simulator, export).

Each getter returns a callable with a fixed signature, or None so that the page
hides the button instead of failing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from flask import Response
from sqlalchemy.orm import Session


def _attr(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def analyzer() -> Callable[[Session, str], Any] | None:
    """``analyze_experiment(session, key)`` of the analysis service."""
    return _attr("experiments.services.analysis", "analyze_experiment")


def simulator() -> Callable[[Session, str, int], Any] | None:
    """Simulated traffic for ``units`` units (demo mode)."""
    simulate = _attr("experiments.services.simulate", "simulate_traffic")
    plan = _attr("experiments.services.simulate", "SimulationPlan")
    if simulate is None or plan is None:
        return None

    def run(session: Session, key: str, units: int) -> Any:
        return simulate(session, key, plan(units=units))

    return run


def exporter() -> Callable[[Session, str, str], Response] | None:
    """The CSV/JSON export of the report service, as a download response."""
    return None
