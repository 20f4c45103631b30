"""Login and logout."""

from __future__ import annotations

from flask import flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin.blueprint import bp
from admin.session_auth import login_user, logout_user
from experiments.db import db_session
from experiments.services.accounts import authenticate_user


def _safe_next(target: str | None) -> str:
    """Only ever redirect inside the admin UI (no open redirect)."""
    if target and target.startswith("/admin") and not target.startswith("//"):
        return target
    return url_for("admin.portfolio")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | tuple[str, int] | str:
    """Email + password; a wrong pair gets one generic message."""
    if g.admin_user is not None and request.method == "GET":
        return redirect(_safe_next(request.args.get("next")))
    if request.method == "POST":
        email = request.form.get("email", "")
        user = authenticate_user(db_session(), email, request.form.get("password", ""))
        if user is not None:
            login_user(user)
            return redirect(_safe_next(request.form.get("next")))
        flash("Wrong email or password, or the account is deactivated.", "error")
        return render_template("admin/login.html", email=email,
                               next=request.form.get("next", "")), 401
    return render_template("admin/login.html", email="", next=request.args.get("next", ""))


@bp.route("/logout", methods=["POST"])
def logout() -> Response:
    """End the session."""
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("admin.login"))
