"""OpenFeature Remote Evaluation Protocol (SPEC §4): any OpenFeature SDK with the OFREP
provider evaluates experiments as flags. A single-flag evaluation is an exposure; a bulk
evaluation is not (web and mobile providers call it on every start and context change,
which would enrol every visitor everywhere): the flag read records the exposure through
an OpenFeature hook (docs/developers/openfeature.md).

Errors keep the OFREP shapes (``{"key", "errorCode", "errorDetails"}``) so that
providers map them to OpenFeature error codes; 401/403/429 keep the SPEC envelope.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, get_args

from flask import Blueprint, Response, jsonify, request

from experiments.api.routing import api_route
from experiments.db import db_session
from experiments.errors import ApiError, error_response
from experiments.schemas.assignment import (
    OfrepBulk,
    OfrepBulkInvalid,
    OfrepErrorCode,
    OfrepEvaluation,
    OfrepFlagInvalid,
    OfrepFlagNotFound,
    OfrepRequest,
    attributes_problem,
    text_problem,
)
from experiments.services import assignment

bp = Blueprint("ofrep", __name__, url_prefix="/ofrep/v1")
TAGS = ("openfeature",)
OFREP_ERROR_CODES = frozenset(get_args(OfrepErrorCode))
_OFREP_REASONS = {
    "assigned": "SPLIT", "override": "TARGETING_MATCH", "traffic": "DEFAULT",
    "targeting": "DEFAULT", "layer": "DEFAULT", "holdout": "DEFAULT", "not_running": "DISABLED",
    "concluded": "DISABLED",
}


@bp.errorhandler(ApiError)
def _ofrep_error(exc: ApiError) -> Response:
    """Input errors become OFREP 400s and a key that names no flag an OFREP 404 (a NUL in
    it included); auth, size (413), media type (415) and rate limits keep the SPEC
    envelope. The routes' OpenAPI responses say so."""
    if exc.code in OFREP_ERROR_CODES:
        return _failure(exc.status, exc.code, exc.message)
    if exc.status == 404:
        return _failure(404, "FLAG_NOT_FOUND", exc.message)
    if exc.status in (400, 422):
        code = "INVALID_CONTEXT" if exc.status == 422 else "PARSE_ERROR"
        details = "; ".join(f"{d.get('field', 'body')}: {d.get('message')}" for d in exc.details)
        return _failure(400, code, f"{exc.message}{': ' + details if details else ''}")
    return error_response(exc.status, exc.message, code=exc.code, details=exc.details,
                          headers=exc.headers)


def _failure(status: int, code: str, details: str) -> Response:
    body: dict[str, Any] = {"errorCode": code, "errorDetails": details}
    key = (request.view_args or {}).get("key")
    if key is not None:
        body = {"key": key, **body}
    response = jsonify(body)
    response.status_code = status
    return response


@api_route(bp, "/evaluate/flags/<key>", "POST", auth="client", body=OfrepRequest,
           response=OfrepEvaluation, responses={400: OfrepFlagInvalid, 404: OfrepFlagNotFound},
           invalid_status=400, tags=TAGS)
def evaluate_flag(key: str, body: OfrepRequest) -> dict[str, Any]:
    """Evaluate one experiment as a flag for ``context.targetingKey`` (records the exposure)."""
    unit_id, user_id, attributes = _unit_and_attributes(body)
    result = assignment.assign(db_session(), unit_id=unit_id, attributes=attributes,
                               experiment_keys=[key], user_id=user_id)[0]
    if result.reason == "not_found":
        raise ApiError(404, f"flag {key!r} was not found", code="FLAG_NOT_FOUND")
    return _evaluation(result)


@api_route(bp, "/evaluate/flags", "POST", auth="client", body=OfrepRequest, response=OfrepBulk,
           responses={304: None, 400: OfrepBulkInvalid}, invalid_status=400, tags=TAGS)
def evaluate_flags(body: OfrepRequest) -> Response:
    """Evaluate every running experiment without recording exposures; ``If-None-Match``
    with the last ETag gives 304."""
    unit_id, user_id, attributes = _unit_and_attributes(body)
    results = assignment.assign(db_session(), unit_id=unit_id, attributes=attributes,
                                track=False, user_id=user_id)
    payload = json.dumps({"flags": [_evaluation(result) for result in results]},
                         separators=(",", ":"), default=str)
    etag = hashlib.sha256(payload.encode()).hexdigest()[:32]
    if request.if_none_match.contains(etag):
        response = Response(status=304)
    else:
        response = Response(payload, mimetype="application/json")
    response.set_etag(etag)
    return response


def _unit_and_attributes(body: OfrepRequest) -> tuple[str, str | None, dict[str, Any]]:
    """Split the evaluation context into the unit id, the logged-in customer's ``user_id``
    (SPEC §14, as ``/assign`` takes it: the same customer keeps its variant on every
    device) and the targeting attributes."""
    context = dict(body.context or {})
    unit_id = context.pop("targetingKey", None)
    if unit_id is None or unit_id == "":
        raise ApiError(400, "context.targetingKey is required: it is the unit being assigned",
                       code="TARGETING_KEY_MISSING")
    _check_id("targetingKey", unit_id)
    user_id = context.pop("user_id", None)
    if user_id is not None:
        _check_id("user_id", user_id)
    problem = attributes_problem(context)
    if problem:
        raise ApiError(400, f"context: {problem}", code="INVALID_CONTEXT")
    return unit_id, user_id or None, context


def _check_id(field: str, value: Any) -> None:
    """An id of the context: a string of at most 200 characters, no control characters."""
    if not isinstance(value, str) or len(value) > 200:
        raise ApiError(400, f"context.{field} must be a string of at most 200 characters",
                       code="INVALID_CONTEXT")
    problem = text_problem(value)
    if problem:
        raise ApiError(400, f"context.{field} {problem}", code="INVALID_CONTEXT")


def _evaluation(result: assignment.Assignment) -> dict[str, Any]:
    value = result.payload.get("value", result.variant)
    return {"key": result.experiment, "value": value, "reason": _OFREP_REASONS[result.reason],
            "variant": result.variant, "metadata": {}}
