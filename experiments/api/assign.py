"""Assignment and exposures (SPEC §4): thin views over ``services.assignment``, and the
assignment hot path served straight from WSGI (:class:`AssignFastPath`)."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask
from pydantic import ValidationError
from sqlalchemy.orm import Session

from experiments import limits
from experiments.api.routing import JSON_MIMETYPE, api_route, bearer_token, json_text
from experiments.cors import ORIGINS_KEY, cors_headers
from experiments.db import close_session, db_session, get_db
from experiments.errors import ApiError
from experiments.observability import (
    REQUEST_ID_HEADER,
    REQUEST_LOG_CONTEXT,
    observe_request,
    request_id_for,
)
from experiments.schemas.assignment import AssignIn, AssignOut, ExposureIn, ExposureOut
from experiments.security import DEFAULT_HEADERS
from experiments.services import assignment

bp = Blueprint("assign", __name__, url_prefix="/api/v1")
TAGS = ("assignment",)
ASSIGN_ROUTE = "/api/v1/assign"
log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


# Idempotent: the stored first exposure wins (ON CONFLICT), a repeat reads it back.
@api_route(bp, "/assign", "POST", auth="client", body=AssignIn, response=AssignOut, tags=TAGS,
           idempotent=True)
def assign_unit(body: AssignIn) -> dict[str, Any]:
    """Assign a unit to every running (or the named) experiment; stores first exposures."""
    return assigned(db_session(), body)


def assigned(session: Session, body: AssignIn) -> dict[str, Any]:
    """The ``/assign`` answer: the service's assignments in the SPEC §4 shape."""
    results = assignment.assign(session, unit_id=body.unit_id, attributes=body.attributes,
                                experiment_keys=body.experiments, track=body.track,
                                occurred_at=body.occurred_at, sent_at=body.sent_at,
                                user_id=body.user_id)
    return {"unit_id": body.unit_id, "assignments": [result.to_dict() for result in results]}


@api_route(bp, "/exposures", "POST", auth="client", body=ExposureIn, response=ExposureOut,
           errors=(404,), tags=TAGS, idempotent=True)
def record_exposure(body: ExposureIn) -> dict[str, Any]:
    """Record that a unit assigned with ``track: false`` was shown its variant."""
    result = assignment.record_exposure(db_session(), experiment_key=body.experiment,
                                        unit_id=body.unit_id, attributes=body.attributes,
                                        occurred_at=body.occurred_at, sent_at=body.sent_at,
                                        user_id=body.user_id)
    return {"unit_id": body.unit_id, **result.to_dict()}


class AssignFastPath:
    """WSGI middleware answering the ordinary ``POST /api/v1/assign`` without Flask.

    Front ends call this route on every page view. Flask's per-request machinery
    (app and request contexts, routing, five hooks, a ``Response``) cost more CPU than
    the assignment itself, so a request with a known key and a valid JSON body is answered
    here. It goes through the same parts as the Flask route: the rate limits, the key
    cache, ``AssignIn``, :func:`assigned`, the same headers (CORS, security, request id)
    and the same metrics. ``tests/test_assign_fast_path.py`` checks that both give the
    same responses.

    Anything else is handed to Flask untouched: other routes, cookies, other content
    types (a charset too), a NUL in the query string, missing or unknown keys, invalid
    bodies, refused rate limits, errors. Flask answers it exactly as before. A request
    handed over after the service raised is assigned again, which is safe because
    assignment is idempotent (the stored exposure wins). The rate limit counts a request
    once: what Flask would refuse is handed over before the limit is applied, and a hit
    the limit refuses is not recorded. Only a request handed over after the service
    raised counts twice.
    """

    def __init__(self, app: Flask, wsgi_app: WsgiApp) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        limit = app.config.get("MAX_CONTENT_LENGTH")
        self.max_body = int(limit) if limit is not None else None
        self._threads = threading.local()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        if (environ.get("PATH_INFO") == ASSIGN_ROUTE and environ.get("REQUEST_METHOD") == "POST"
                and environ.get("CONTENT_TYPE") == JSON_MIMETYPE
                and "HTTP_COOKIE" not in environ
                and "%00" not in environ.get("QUERY_STRING", "")):  # refuse_nul_in_url's 422
            answer = self._answer(environ)
            if answer is not None:
                headers, body = answer
                start_response("200 OK", headers)
                return [body]
        return self.wsgi_app(environ, start_response)

    def _answer(self, environ: dict[str, Any]) -> tuple[list[tuple[str, str]], bytes] | None:
        """Headers and body of the 200, or None to hand the request to Flask."""
        started = time.perf_counter()
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        token = bearer_token(authorization)
        length = environ.get("CONTENT_LENGTH", "")
        if token is None or not length.isdecimal() or (
                self.max_body is not None and int(length) > self.max_body):
            return None  # Flask answers 401, 411/400 or 413
        data = environ["wsgi.input"].read(int(length))
        environ["wsgi.input"] = io.BytesIO(data)  # readable again by Flask if handed over
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID"))
        log_context = REQUEST_LOG_CONTEXT.set(
            {"request_id": request_id, "method": "POST", "path": ASSIGN_ROUTE})
        session = self._session()
        try:
            document = self._assign(session, environ, authorization, token, data)
        finally:
            if session.in_transaction() or session.identity_map:
                close_session(session)  # as the request's teardown would: ready for the next
            REQUEST_LOG_CONTEXT.reset(log_context)
        if document is None:
            return None
        body = json_text(document).encode()
        cors = cors_headers(ASSIGN_ROUTE, environ.get("HTTP_ORIGIN"),
                            self.app.extensions[ORIGINS_KEY])
        observe_request("POST", ASSIGN_ROUTE, 200, started)
        return [("Content-Type", JSON_MIMETYPE), ("Content-Length", str(len(body))), *cors,
                *DEFAULT_HEADERS, (REQUEST_ID_HEADER, request_id)], body

    def _session(self) -> Session:
        """This thread's (a greenlet's, under gevent) session, kept between requests.

        No app context is pushed here, so nothing opens and closes a session per
        request (with the context, that was a tenth of this path's CPU). A request
        that used the session (a cache refresh: a transaction, loaded objects) closes
        it afterwards; the others leave it as they found it: no connection, no state.
        """
        session: Session | None = getattr(self._threads, "session", None)
        if session is None:
            session = self._threads.session = get_db(self.app).sessionmaker()
        return session

    def _assign(self, session: Session, environ: dict[str, Any], authorization: str,
                token: str, data: bytes) -> dict[str, Any] | None:
        # Everything that can refuse the request comes before the rate limit counts it.
        extensions = self.app.extensions
        rate_limits = extensions.get(limits.EXTENSION_KEY)
        try:
            if extensions["parcours.api_keys"].lookup(session, token) is None:
                return None
            body = AssignIn.model_validate_json(data, strict=True)
            if rate_limits is not None:
                rate_limits.enforce(ASSIGN_ROUTE, authorization, environ.get("REMOTE_ADDR"))
            return assigned(session, body)
        except (ApiError, ValidationError):
            return None  # Flask gives the 4xx with its envelope
        except Exception:
            log.warning("assignment fast path: handing the request to Flask", exc_info=True)
            return None


def install_fast_path(app: Flask) -> None:
    """Serve ordinary assignment requests before Flask sees them (see AssignFastPath)."""
    app.wsgi_app = AssignFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
