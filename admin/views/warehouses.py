"""Warehouses (SPEC §15): where experiments are analysed in place, their sync and sources."""

from __future__ import annotations

from flask import render_template

from admin.blueprint import bp
from admin.session_auth import requires
from experiments.db import db_session
from experiments.services.warehouses.status import describe_warehouses


@bp.route("/warehouses")
@requires("admin")
def warehouses() -> str:
    """Each configured warehouse: dialect, last sync and lag, its sources as validated."""
    return render_template("admin/warehouses.html", warehouses=describe_warehouses(db_session()))
