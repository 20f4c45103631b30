"""Admin-only pages: UI users and API keys."""

from __future__ import annotations

from collections.abc import Callable

from flask import current_app, flash, make_response, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin import queries
from admin.blueprint import bp
from admin.format import error_text
from admin.session_auth import principal, requires
from admin.views import run_action
from experiments.auth import API_ROLES, USER_ROLES
from experiments.db import db_session
from experiments.errors import ApiError
from experiments.services import accounts


def _users_page(status: int = 200, form: dict[str, str] | None = None,
                error: str | None = None) -> tuple[str, int]:
    return render_template("admin/users.html", users=queries.list_users(db_session()),
                           roles=USER_ROLES, form=form or {"email": "", "role": "viewer"},
                           error=error), status


@bp.route("/users", methods=["GET", "POST"])
@requires("admin")
def users() -> Response | tuple[str, int]:
    """List users; create one (argon2-hashed password)."""
    if request.method == "GET":
        return _users_page()
    form = {"email": request.form.get("email", "").strip(),
            "role": request.form.get("role", "")}
    try:
        user = accounts.create_user(db_session(), email=form["email"], role=form["role"],
                                    password=request.form.get("password", ""),
                                    principal=principal())
    except ApiError as exc:
        db_session().rollback()
        return _users_page(exc.status, form, error_text(exc))
    flash(f"Created {user.role} {user.email}.", "success")
    return redirect(url_for("admin.users"))


def _user_action(action: Callable[[], object], done: str) -> Response:
    return run_action(action, done, "admin.users")


@bp.route("/users/<int:user_id>/role", methods=["POST"])
@requires("admin")
def change_user_role(user_id: int) -> Response:
    """Change a user's role."""
    role = request.form.get("role", "")
    return _user_action(lambda: accounts.change_role(db_session(), user_id, role, principal()),
                        "Role changed.")


@bp.route("/users/<int:user_id>/active", methods=["POST"])
@requires("admin")
def set_user_active(user_id: int) -> Response:
    """Deactivate or reactivate a user."""
    active = request.form.get("active") == "1"
    return _user_action(lambda: accounts.set_active(db_session(), user_id, active, principal()),
                        "User reactivated." if active else "User deactivated.")


@bp.route("/api-keys", methods=["GET", "POST"])
@requires("admin")
def api_keys() -> Response:
    """List keys (prefixes only); a created key is shown once, on this response only."""
    created, error, status = None, None, 200
    form = {"name": "", "role": "client"}
    if request.method == "POST":
        form = {"name": request.form.get("name", ""), "role": request.form.get("role", "")}
        try:
            created = accounts.create_api_key(db_session(), name=form["name"], role=form["role"],
                                              principal=principal())
        except ApiError as exc:
            db_session().rollback()
            error, status = error_text(exc), exc.status
    response = make_response(render_template(
        "admin/api_keys.html", keys=accounts.list_api_keys(db_session()), roles=API_ROLES,
        created=created, error=error, form=form), status)
    response.headers["Cache-Control"] = "no-store"  # the new key must not linger in caches
    return response


@bp.route("/api-keys/<int:key_id>/revoke", methods=["POST"])
@requires("admin")
def revoke_api_key(key_id: int) -> Response:
    """Revoke a key (it stops working within seconds on every host)."""
    try:
        api_key = accounts.revoke_api_key(db_session(), key_id, principal())
        current_app.extensions["parcours.api_keys"].clear()
        flash(f"Revoked key {api_key.name!r}.", "success")
    except ApiError as exc:
        flash(error_text(exc), "error")
    return redirect(url_for("admin.api_keys"))
