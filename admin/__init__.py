"""Admin UI (``/admin``): server-rendered pages over the experiments services."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()


def init_app(app: Flask) -> None:
    """Register the admin blueprint, its CSRF protection and the session cookie flags."""
    from admin.blueprint import bp
    from admin.views import load_views

    settings = app.config.get("PARCOURS")
    explicit: dict[str, Any] = dict(getattr(settings, "extra", None) or {})
    local = app.debug or app.testing or bool(getattr(settings, "DEMO", False))
    # HttpOnly + SameSite=Lax always; Secure unless served over plain http locally
    # (debug, tests, the `make run` demo). Values passed to create_app() win.
    defaults = {
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": not local,
        "PERMANENT_SESSION_LIFETIME": timedelta(hours=12),
        "WTF_CSRF_TIME_LIMIT": 12 * 3600,
    }
    app.config.update({name: value for name, value in defaults.items() if name not in explicit})
    # CSRF is checked by the admin blueprint only, so the JSON API (bearer keys) is unaffected.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    csrf.init_app(app)
    load_views()
    app.register_blueprint(bp)
