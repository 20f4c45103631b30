"""JSON API blueprints (``/api/v1``) and service endpoints."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    """Mount every API blueprint; each module owns one resource."""
    from experiments.api import (
        assign,
        bandits,
        calculators,
        events,
        experiments,
        holdouts,
        identity,
        ofrep,
        portfolio,
        reports,
        sdk,
        system,
        units,
        warehouses,
    )
    from experiments.api.routing import refuse_nul_in_url

    app.before_request(refuse_nul_in_url)
    for module in (experiments, assign, ofrep, events, sdk, system, reports, calculators,
                   units, portfolio, bandits, warehouses, identity,
                   holdouts):
        app.register_blueprint(module.bp)
