"""Admin pages, one module per area; importing a module attaches its routes to the blueprint."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from flask import flash, redirect, url_for
from werkzeug.wrappers import Response

from admin.format import error_text
from experiments.db import db_session
from experiments.errors import ApiError

MODULES = ("auth", "portfolio", "experiments", "library", "holdouts", "accounts", "webhooks",
           "audit", "warehouses")


def load_views() -> None:
    """Import every page module once (their decorators register the routes)."""
    for name in MODULES:
        importlib.import_module(f"admin.views.{name}")


def flash_refusal(exc: ApiError) -> None:
    """Show a refused action's reason on the next page; nothing was changed."""
    db_session().rollback()
    flash(error_text(exc), "error")


def run_action(action: Callable[[], object], done: str, endpoint: str,
               **url_values: Any) -> Response:
    """Run one state-changing service call, flash its outcome and redirect (post/redirect/get)."""
    try:
        action()
        flash(done, "success")
    except ApiError as exc:
        flash_refusal(exc)
    return redirect(url_for(endpoint, **url_values))
