"""The SPEC §2 error envelope, for every error the service can produce."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import Flask, Response, jsonify, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from experiments.db import is_unavailable

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}
RETRY_AFTER_S = 5  # a restarted or failed-over database is usually back within seconds


M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error a view or service raises on purpose; rendered as the envelope."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def summary(self) -> str:
        """One line for people (CLI, admin UI): the message and each field's problem."""
        details = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in self.details)
        return f"{self.message}{' (' + details + ')' if details else ''}"


class NotFound(ApiError):
    def __init__(self, message: str = "resource not found") -> None:
        super().__init__(404, message)


class Conflict(ApiError):
    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(409, message, details=details)


class ValidationFailed(ApiError):
    """422 whose details name each failing field path (``variants[1].weight``)."""

    def __init__(self, details: list[dict[str, Any]], message: str = "invalid input") -> None:
        super().__init__(422, message, details=details)

    @classmethod
    def field(cls, field: str, message: str) -> ValidationFailed:
        return cls([{"field": field, "message": message}], message=f"{field}: {message}")


def validated(model: type[M], data: Any, message: str = "invalid input") -> M:
    """``model`` validated from ``data``, or a 422 naming every failing field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(validation_details(exc), message) from None


def field_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """Render a pydantic ``loc`` as ``variants[1].weight``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def validation_details(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """Turn a pydantic error into SPEC ``details`` entries."""
    details = []
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if not _is_union_tag(part))
        message = _plain_message(error)
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        details.append({"field": field_path(loc, prefix) or prefix or "body", "message": message})
    return details


def _plain_message(error: Any) -> str:
    """pydantic's message, in the client's terms where it speaks of its own: a constrained
    string's length in characters (its generic form says "at least 1 item after
    validation"), an object (not "a valid dictionary or instance of EventIn"). The input
    is read, never echoed."""
    kind, context, value = error["type"], error.get("ctx") or {}, error.get("input")
    generic_length = isinstance(value, str) and "after validation" in error["msg"]
    if kind == "too_short" and generic_length:
        minimum = context["min_length"]
        return "must not be empty" if minimum == 1 else f"must have at least {minimum} characters"
    if kind == "too_long" and generic_length:
        return f"must have at most {context['max_length']} characters (got {len(value)})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be an object"
    return str(error["msg"])


def _is_union_tag(part: int | str) -> bool:
    # pydantic inserts the function/union member name into loc; it is noise for clients.
    return isinstance(part, str) and (part.startswith("function-") or "[" in part)


def error_body(status: int, message: str, *, code: str | None = None,
               details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The envelope as a dict, for callers that build responses themselves."""
    return {"error": {"code": code or _CODES.get(status, "error"), "message": message,
                      "details": details or []}}


def error_response(status: int, message: str, *, code: str | None = None,
                   details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """A JSON response carrying the envelope."""
    response = jsonify(error_body(status, message, code=code, details=details))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def byte_size(limit: int | None) -> str:
    """A body limit as a reader says it (``1 MiB``), for the 413's message."""
    if limit is None:
        return "size"
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if limit >= size and limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit} bytes"


def register_error_handlers(app: Flask) -> None:
    """Render every error as the envelope; HTML pages keep their own handlers."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, code=exc.code, details=exc.details,
                              headers=exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        if request.path.startswith("/admin") and request.blueprint == "admin":
            return exc
        message = exc.description or exc.name
        if status == 413:  # Werkzeug's text says neither the limit nor what to do
            message = (f"the request body is over the {byte_size(request.max_content_length)} "
                       "limit of this route")
        response = error_response(status, message)
        for name, value in exc.get_headers():
            if name.lower() in {"retry-after", "allow"}:
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if is_unavailable(exc):
            app.logger.warning("database unavailable on %s %s: %s", request.method,
                               request.path, exc.__class__.__name__)
            return error_response(503, "the database cannot be reached; retry shortly",
                                  code="unavailable",
                                  headers={"Retry-After": str(RETRY_AFTER_S)})
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error", code="internal_error")
