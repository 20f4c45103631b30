"""Build the OpenAPI 3.1 document from the routes declared with ``api_route``."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from experiments import __version__
from experiments.api.routing import ROUTES, ResponseModel, RouteSpec
from experiments.limits import ASSIGN_PATHS, INGEST_PATHS
from experiments.schemas import ErrorEnvelope

_PATH_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
_ERROR_TEXT = {
    304: "Not modified: the ETag sent in If-None-Match is current",
    400: "Malformed JSON", 401: "Missing or invalid API key", 403: "Key lacks the role",
    404: "Not found", 409: "Conflict", 413: "Payload too large",
    415: "Unsupported media type", 422: "Validation error", 429: "Rate limited",
}


RATE_LIMITED_PATHS = INGEST_PATHS + ASSIGN_PATHS


def build_openapi() -> dict[str, Any]:
    """The document: every declared route, its body, responses and errors."""
    models = _collect_models()
    _, definitions = models_json_schema(
        [(model, mode) for model, mode in models], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for spec in ROUTES:
        path, parameters = _openapi_path(spec.rule)
        paths.setdefault(path, {})[spec.method] = _operation(spec, parameters)
    _add_links(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Parcours API", "version": __version__,
                 "description": "Journey experiments: assignment, events, analysis, webhooks."},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "API key (client or admin)"}},
        },
    }


def _add_links(paths: dict[str, dict[str, Any]]) -> None:
    """Link each create (201) to the operations on the created resource (stateful testing)."""
    for path, operations in paths.items():
        created = operations.get("post", {}).get("responses", {}).get("201")
        if created is None:
            continue
        links = {}
        for other_path, other_operations in paths.items():
            match = re.fullmatch(re.escape(path) + r"/\{(\w+)\}(/.*)?", other_path)
            if not match:
                continue
            parameter = match.group(1)
            for operation in other_operations.values():
                links[operation["operationId"]] = {
                    "operationId": operation["operationId"],
                    "parameters": {parameter: f"$response.body#/{parameter}"},
                }
        if links:
            created["links"] = links


def _collect_models() -> list[tuple[type[BaseModel], Any]]:
    seen: dict[tuple[type[BaseModel], str], None] = {(ErrorEnvelope, "serialization"): None}
    for spec in ROUTES:
        for model in (spec.body, spec.query):
            if model is not None:
                seen[(model, "validation")] = None
        for model in spec.responses.values():
            if model is not None:
                seen[(model, "serialization")] = None
    return list(seen)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    parameters = []
    for converter, name in _PATH_PARAM.findall(rule):
        schema = {"type": "integer"} if converter == "int" else {"type": "string"}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return _PATH_PARAM.sub(r"{\2}", rule), parameters


def _operation(spec: RouteSpec, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": spec.endpoint.replace(".", "_"), "summary": spec.summary,
        "tags": list(spec.tags), "parameters": parameters + _query_parameters(spec),
        "responses": _responses(spec, bool(parameters)),
    }
    if spec.auth is not None:
        operation["security"] = [{"bearer": []}]
    if spec.body is not None:
        operation["requestBody"] = {"required": spec.body_required,
                                    "content": {"application/json": {"schema": _ref(spec.body)}}}
    return operation


def _query_parameters(spec: RouteSpec) -> list[dict[str, Any]]:
    if spec.query is None:
        return []
    schema = spec.query.model_json_schema()
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()]


def _responses(spec: RouteSpec, has_path_params: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, model in spec.responses.items():
        entry: dict[str, Any] = {"description": _description(status, model)}
        if model is not None:
            entry["content"] = {"application/json": {"schema": _ref(model)}}
        if status < 300:
            for media_type in spec.alternate_media:
                entry.setdefault("content", {})[media_type] = {"schema": {"type": "string"}}
        responses[str(status)] = entry
    errors = set(spec.errors)
    if spec.auth is not None:
        errors |= {401, 403} if spec.auth == "admin" else {401}
    if spec.body is not None:
        errors |= {400, 413, 415, spec.invalid_status}
    if spec.query is not None:
        errors.add(spec.invalid_status)
    if has_path_params:
        errors.add(404)
    if spec.rule.startswith(RATE_LIMITED_PATHS):  # when PARCOURS_RATE_LIMIT_* sets a limit
        errors.add(429)
    for status in sorted(errors):
        responses.setdefault(str(status), {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": _ref(ErrorEnvelope)}},
        })
    return responses


def _description(status: int, model: ResponseModel) -> str:
    """A declared response's description: an error model's docstring says which errors it
    carries (OFREP's codes), else the status's usual text."""
    if status < 300:
        return "Success"
    if model is not None and model.__doc__:
        return " ".join(model.__doc__.split())
    return _ERROR_TEXT.get(status, "Response")
