"""The ``admin`` blueprint: session auth, CSRF, HTML error pages and template helpers."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from admin import format as fmt
from admin.messages import field_label
from admin.session_auth import has_role, load_current_user
from experiments.errors import ApiError, error_response

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static", static_url_path="/static")
PUBLIC_ENDPOINTS = {"admin.login", "admin.static"}
MAX_ID = 2**31 - 1


@bp.before_request
def _authenticate_and_check_csrf() -> Response | None:
    """Every admin request: CSRF on writes, then a logged-in, active user (or the login page)."""
    from admin import csrf

    if current_app.config.get("WTF_CSRF_ENABLED", True):
        csrf.protect()
    g.admin_user = load_current_user()
    if g.admin_user is None and request.endpoint not in PUBLIC_ENDPOINTS:
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
    return None


@bp.url_value_preprocessor
def _ids_in_range(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """An id no INTEGER column can hold is simply not found (instead of a database error)."""
    for value in (values or {}).values():
        if isinstance(value, int) and not 0 <= value <= MAX_ID:
            abort(404, "not found")


@bp.app_template_global()
def can(role: str) -> bool:
    """Whether the logged-in user has at least ``role`` (hide buttons they may not use)."""
    return has_role(role)


bp.add_app_template_global(field_label, "field_label")


@bp.context_processor
def _template_context() -> dict[str, Any]:
    return {"current_user": g.get("admin_user"), "fmt": fmt}


@bp.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError) -> tuple[str, int]:
    return render_template("admin/error.html", status=400, title="Form expired",
                           message="The form's security token is missing or expired. "
                                   "Go back, reload the page and submit again."), 400


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> tuple[str, int]:
    return render_template("admin/error.html", status=exc.status, title=_TITLES.get(
        exc.status, "Error"), message=exc.message, details=exc.details), exc.status


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[str, int]:
    status = exc.code or 500
    return render_template("admin/error.html", status=status, title=_TITLES.get(status, exc.name),
                           message=exc.description), status


@bp.app_errorhandler(404)
def _not_found(exc: HTTPException) -> Any:
    """An address under /admin/ that no page has: the admin's own page, not the API's
    JSON envelope (Flask picks no blueprint for a URL that matches no route)."""
    if request.blueprint is None and request.path.startswith("/admin/"):
        return render_template("admin/error.html", status=404, title=_TITLES[404],
                               message="No page here.", current_user=load_current_user(),
                               fmt=fmt), 404
    if request.blueprint == "admin":
        return _http_error(exc)
    return error_response(404, exc.description or exc.name)


_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Not allowed",
           409: "Conflict", 422: "Invalid input"}
