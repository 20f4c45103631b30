"""A thin declarative layer over Flask routes: auth, pydantic parsing, OpenAPI.

Each API view is declared once with :func:`api_route`; the same declaration
authenticates the caller, parses and validates the body and query with pydantic,
serialises the result and feeds ``/openapi.json``. Views stay thin: parse →
service → serialise.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Literal

from flask import Blueprint, Response, current_app, g, request
from pydantic import BaseModel, ValidationError

from experiments.auth import Principal
from experiments.db import (
    db_session,
    discard_request_session,
    forget_lost_connections,
    get_db,
    is_disconnect,
)
from experiments.errors import ApiError, ValidationFailed, validated, validation_details

AuthRole = Literal["admin", "client", "any"] | None
ResponseModel = type[BaseModel] | None
ROUTES: list[RouteSpec] = []
JSON_MIMETYPE = "application/json"
log = logging.getLogger(__name__)
JSON_CHARSETS = frozenset({"utf-8", "utf8"})  # SPEC §2: JSON is UTF-8, nothing else


@dataclass(frozen=True)
class RouteSpec:
    """What the OpenAPI document needs to know about one route."""

    rule: str
    method: str
    endpoint: str
    summary: str
    tags: tuple[str, ...]
    auth: AuthRole
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    responses: dict[int, ResponseModel] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    # Other media types the success response may have (e.g. text/csv exports).
    alternate_media: tuple[str, ...] = ()
    body_required: bool = True
    # The status of a body or query string that fails validation (OFREP: 400, its shape).
    invalid_status: int = 422


def api_route(
    blueprint: Blueprint,
    rule: str,
    method: str = "GET",
    *,
    auth: AuthRole = "admin",
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: ResponseModel = None,
    status: int = 200,
    responses: dict[int, ResponseModel] | None = None,
    errors: tuple[int, ...] = (),
    tags: tuple[str, ...] = (),
    alternate_media: tuple[str, ...] = (),
    idempotent: bool = False,
    optional_body: bool = False,
    invalid_status: int = 422,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an API view; see the module docstring.

    ``idempotent`` views are run once more, on a new connection, when the database
    connection was lost under them (a restart, a terminated backend): repeating them
    stores nothing twice. ``invalid_status`` is the status the document declares for a
    body or query string that fails validation, for a blueprint whose error handler
    answers it otherwise (OFREP: a 400 in its own shape, never a 422).
    """

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        def attempt(**path_args: Any) -> Any:
            if auth is not None:
                g.principal = authenticate(auth)
            kwargs = dict(path_args)
            if query is not None:
                kwargs["query"] = parse_query(query)
            if body is not None:  # an optional body may be absent: its model's defaults
                absent = optional_body and not request.get_data(cache=True)
                kwargs["body"] = body() if absent else parse_body(body)
            return to_response(view(**kwargs), status)

        @wraps(view)
        def wrapper(**path_args: Any) -> Any:
            if not idempotent:
                return attempt(**path_args)
            try:
                return attempt(**path_args)
            except Exception as exc:
                if not is_disconnect(exc):
                    raise
                log.warning("database connection lost on %s; retrying once", request.path)
                discard_request_session()
                forget_lost_connections(get_db().engine, exc)
                return attempt(**path_args)

        endpoint = view.__name__
        blueprint.add_url_rule(rule, endpoint, wrapper, methods=[method])
        all_responses = {status: response, **(responses or {})}
        ROUTES.append(RouteSpec(
            rule=(blueprint.url_prefix or "") + rule, method=method.lower(),
            endpoint=f"{blueprint.name}.{endpoint}", summary=_first_line(view.__doc__),
            tags=tags or (blueprint.name,), auth=auth, body=body, query=query,
            responses=all_responses, errors=errors, alternate_media=alternate_media,
            body_required=not optional_body, invalid_status=invalid_status,
        ))
        return wrapper

    return decorator


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


def authenticate(required: Literal["admin", "client", "any"]) -> Principal:
    """Resolve the bearer key to a principal and enforce the role (401/403)."""
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is None:
        message = "missing or malformed Authorization: Bearer <api key>"
        if "key" in request.args:  # a beacon's key that is not a client key
            message += ("; only a client key (pk_…) is read from ?key=, and only on "
                        "POST /api/v1/events: an admin key never travels in a URL")
        raise ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})
    cache = current_app.extensions["parcours.api_keys"]
    principal = cache.lookup(db_session(), token)
    if principal is None:
        raise ApiError(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    if required == "admin" and principal.role != "admin":
        raise ApiError(403, "this route needs an admin key")
    return principal


def bearer_token(header: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, None when malformed."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def current_principal() -> Principal:
    """The authenticated caller of this request."""
    return g.principal


def refuse_nul_in_url() -> None:
    """Before every view (API and admin): a NUL character in the path or query string.

    A path key with a NUL names nothing (404), a query parameter with one is a 422 naming
    it; PostgreSQL could not even compare them, so they must not reach a query.
    """
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str) and "\x00" in value:
            raise ApiError(404, f"nothing has that {name}: it contains a NUL character")
    bad = sorted({name for name, value in request.args.items(multi=True)
                  if "\x00" in name or "\x00" in value})
    if bad:
        raise ValidationFailed([{"field": name.replace("\x00", "\\0"),
                                 "message": "must not contain NUL characters"} for name in bad],
                               "the query string is invalid")


def check_json_content_type() -> None:
    """415 unless the body is declared ``application/json`` in UTF-8 (or no charset)."""
    if request.mimetype != JSON_MIMETYPE:
        raise ApiError(415, "send the body as application/json")
    charset = request.mimetype_params.get("charset")
    if charset is not None and charset.strip().lower() not in JSON_CHARSETS:
        raise ApiError(415, f"JSON bodies must be UTF-8, not charset={charset}; "
                            "send Content-Type: application/json")


def parse_body(model: type[BaseModel]) -> BaseModel:
    """Parse and validate the JSON body in one pass: 415, 400 or 422 naming each field.

    Strict JSON validation: ``"0.5"`` is not a number and ``0`` is not a boolean, so
    what the OpenAPI document says is exactly what is accepted.
    """
    check_json_content_type()
    return validated_json(model, request.get_data(cache=True))


def validated_json(model: type[BaseModel], body: bytes, *, repairable: bool = True
                   ) -> BaseModel:
    """``body`` validated against ``model``: 400 when it is not JSON (after replacing its
    lone surrogates, :func:`without_lone_surrogates`), 422 naming each failing field."""
    try:
        return model.model_validate_json(body, strict=True)
    except ValidationError as exc:
        malformed = [e for e in exc.errors(include_url=False) if e["type"] == "json_invalid"]
        if malformed and repairable and (repaired := without_lone_surrogates(body)) is not None:
            return validated_json(model, repaired, repairable=False)
        if malformed:
            reason = malformed[0].get("ctx", {}).get("error") or malformed[0]["msg"]
            raise ApiError(400, f"malformed JSON: {reason}", code="invalid_json") from None
        raise ApiError(422, "the request body is invalid",
                       details=validation_details(exc)) from None


# Every escape of a JSON string, in order (a backslash always starts one, so an escaped
# backslash followed by "ud800" is never taken for a surrogate): a surrogate pair whole,
# then a lone surrogate (group "lone"), then any other escape.
_ESCAPE = re.compile(rb"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                     rb"|(?P<lone>u[dD][89a-fA-F][0-9a-fA-F]{2})|u[0-9a-fA-F]{4}|.)", re.DOTALL)
_REPLACEMENT = rb"\ufffd"


def without_lone_surrogates(body: bytes) -> bytes | None:
    """``body`` with each ``\\uD800``–``\\uDFFF`` escape that is not half of a pair
    replaced by U+FFFD, or None when it has none.

    Why: a browser's ``JSON.stringify`` writes a string cut in the middle of an emoji (a
    ``slice`` of a name, say) as a lone surrogate escape, which is not Unicode; refusing
    the JSON would lose a whole events batch for one character. Replaced as Go's
    ``encoding/json`` does; a valid pair is left as it is."""
    repaired = _ESCAPE.sub(lambda escape: _REPLACEMENT if escape["lone"] else escape[0], body)
    return repaired if repaired != body else None


def parse_query(model: type[BaseModel]) -> BaseModel:
    """Validate query-string parameters against ``model``."""
    return validated(model, request.args.to_dict(), "the query string is invalid")


def to_response(result: Any, status: int) -> Any:
    """Serialise a view's return value: pydantic model, dict/list, or a Response."""
    if isinstance(result, Response):
        return result
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(), status=status, mimetype=JSON_MIMETYPE)
    if result is None:
        return Response(status=status)
    return Response(json_text(result), status=status, mimetype=JSON_MIMETYPE)


def json_text(result: Any) -> str:
    """A view's dict or list as the JSON text of its response."""
    return json.dumps(result, default=str)
