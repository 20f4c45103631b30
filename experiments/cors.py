"""Browser access to the client routes: CORS from ``PARCOURS_CORS_ORIGINS``, and beacons.

Only ``/api/v1/assign``, ``/api/v1/exposures``, ``/api/v1/events``, ``/api/v1/identify``
and the OFREP routes (``/ofrep/v1/evaluate/flags[/{key}]``) are opened to other origins,
and only for the configured origins (``*`` allows any). Those routes
take client keys, which are public by design: they can only assign and send events.
No cookies are involved, so ``Access-Control-Allow-Credentials`` is never sent.

``navigator.sendBeacon`` (used by ``parcours.js`` on ``pagehide``) can set neither an
``Authorization`` header nor a JSON content type. :class:`BeaconAuth` therefore lets
``POST /api/v1/events`` alone take a *client* key as ``?key=pk_…`` with a ``text/plain``
body, rewriting the request into the ordinary authenticated JSON form before the
app sees it. Admin keys are never accepted in a URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from flask import Flask, Response, current_app, request

CLIENT_ROUTES = frozenset({"/api/v1/assign", "/api/v1/exposures", "/api/v1/events",
                           "/api/v1/identify", "/ofrep/v1/evaluate/flags"})
OFREP_FLAG_PREFIX = "/ofrep/v1/evaluate/flags/"  # single-flag evaluation, any flag key
BEACON_ROUTE = "/api/v1/events"
ORIGINS_KEY = "parcours.cors_origins"  # normalised once at start-up, read per request
ALLOWED_METHODS = "POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, If-None-Match"  # OFREP bulk sends the ETag
EXPOSED_HEADERS = "Retry-After, ETag"
PREFLIGHT_MAX_AGE_S = "600"
_CLIENT_KEY = re.compile(r"pk_[A-Za-z0-9_-]{8,200}")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def init_app(app: Flask) -> None:
    """Answer preflights, add CORS headers to the client routes and accept beacons."""
    app.extensions[ORIGINS_KEY] = frozenset(
        origin.rstrip("/").lower() for origin in app.config["PARCOURS"].CORS_ORIGINS)
    app.wsgi_app = BeaconAuth(app.wsgi_app)  # type: ignore[method-assign]
    app.before_request(_preflight)
    app.after_request(_add_cors_headers)


def is_client_route(path: str) -> bool:
    """Routes a browser may call with a client key (the others never answer CORS)."""
    return path in CLIENT_ROUTES or (path.startswith(OFREP_FLAG_PREFIX)
                                     and "/" not in path[len(OFREP_FLAG_PREFIX):])


def allowed_origin(origin: str | None, configured: frozenset[str]) -> str | None:
    """The origin to echo back when it is ``configured``, else None (no CORS headers)."""
    if not origin:
        return None
    if "*" in configured or origin.lower() in configured:
        return origin
    return None


def _preflight() -> Response | None:
    """Answer ``OPTIONS`` from an allowed origin before routing (the route may 405 it)."""
    if request.method != "OPTIONS" or not is_client_route(request.path):
        return None
    if allowed_origin(request.headers.get("Origin"), current_app.extensions[ORIGINS_KEY]) is None:
        return None
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE_S
    return response


def _add_cors_headers(response: Response) -> Response:
    """Echo an allowed origin on every client-route response, errors included."""
    for name, value in cors_headers(request.path, request.headers.get("Origin"),
                                    current_app.extensions[ORIGINS_KEY]):
        if name == "Vary":
            response.vary.add(value)
        else:
            response.headers[name] = value
    return response


def cors_headers(path: str, origin: str | None, configured: frozenset[str]
                 ) -> list[tuple[str, str]]:
    """The CORS headers of a response on ``path`` to a request from ``origin``, given the
    ``configured`` origins (the app's ``ORIGINS_KEY`` extension)."""
    if not is_client_route(path):
        return []
    allowed = allowed_origin(origin, configured)
    if allowed is None:
        return [("Vary", "Origin")]
    return [("Vary", "Origin"), ("Access-Control-Allow-Origin", allowed),
            ("Access-Control-Expose-Headers", EXPOSED_HEADERS)]


def beacon_key(query_string: str) -> str | None:
    """The client key passed as ``?key=`` if it looks like one (never an admin key)."""
    values = parse_qs(query_string).get("key", [])
    if len(values) != 1 or not _CLIENT_KEY.fullmatch(values[0]):
        return None
    return values[0]


class BeaconAuth:
    """WSGI middleware turning a ``sendBeacon`` POST into an ordinary authenticated one."""

    def __init__(self, wsgi_app: WsgiApp) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if (environ.get("REQUEST_METHOD") == "POST"
                and environ.get("PATH_INFO") == BEACON_ROUTE
                and not environ.get("HTTP_AUTHORIZATION")):
            key = beacon_key(environ.get("QUERY_STRING", ""))
            if key is not None:
                environ["HTTP_AUTHORIZATION"] = f"Bearer {key}"
                mimetype, separator, params = environ.get("CONTENT_TYPE", "").partition(";")
                if mimetype.strip().lower() in {"", "text/plain"}:
                    # The charset stays: a beacon declared in anything but UTF-8 is a 415.
                    environ["CONTENT_TYPE"] = "application/json" + separator + params
        return self.wsgi_app(environ, start_response)
