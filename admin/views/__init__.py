"""Admin pages, one module per area; importing a module attaches its routes to the blueprint."""

from __future__ import annotations

import importlib

MODULES = ("auth", "experiments", "library", "accounts", "webhooks", "audit")


def load_views() -> None:
    """Import every page module once (their decorators register the routes)."""
    for name in MODULES:
        importlib.import_module(f"admin.views.{name}")
