"""Admin UI (``/admin``): server-rendered pages over the experiments services."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the admin blueprint on the app."""
