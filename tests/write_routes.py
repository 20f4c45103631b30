"""Every JSON write route with a valid body, and where a NUL character can hide in it.

``tests/test_input_edges.py`` posts each body once as it is (it must succeed) and once
per :class:`NulSpot` with a NUL written there (it must be refused, naming the field, on
SQLite and PostgreSQL). A new write route gets a :class:`WriteRoute` here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.factories import experiment_payload

NUL = "\x00"
Path = tuple[str | int, ...]
KEY = "<key>"  # a path ending in KEY puts the NUL into that dict key, not its value


@dataclass(frozen=True)
class NulSpot:
    """A place in a body (``path``) and the field the refusal must name."""

    path: Path
    field: str


@dataclass(frozen=True)
class WriteRoute:
    """One write route: its method and URL, the key role, what must exist first, a body."""

    name: str
    method: str
    url: str
    role: str
    body: Callable[[], dict[str, Any]]
    spots: tuple[NulSpot, ...]
    needs: str | None = None  # "draft", "running", "webhook" or "holdout"
    # Where the refusal names its fields: the SPEC envelope unless the route has its own.
    refused: int = 422
    fields_of: Callable[[Any], list[str]] = field(default=lambda body: [
        detail["field"] for detail in body["error"]["details"]])


def with_nul(body: dict[str, Any], path: Path) -> dict[str, Any]:
    """A copy of ``body`` whose string (or dict key) at ``path`` carries a NUL."""
    copied = copy.deepcopy(body)
    parent: Any = copied
    *steps, last = path
    if last == KEY:
        *steps, last = steps
    for step in steps:
        parent = parent[step]
    if path[-1] == KEY:
        parent[f"{last}{NUL}x"] = parent.pop(last)
    else:
        parent[last] = f"{parent[last]}{NUL}x"
    return copied


def _spots(*pairs: tuple[Path, str]) -> tuple[NulSpot, ...]:
    return tuple(NulSpot(path, name) for path, name in pairs)


def _experiment() -> dict[str, Any]:
    return experiment_payload()


def _nested_payload_experiment() -> dict[str, Any]:
    body = experiment_payload()
    body["variants"][1]["payload"] = {"layout": "single", "blocks": [{"title": "Pay"}]}
    return body


EXPERIMENT_SPOTS = _spots(
    (("name",), "name"), (("hypothesis",), "hypothesis"), (("owner",), "owner"),
    (("journey", 1), "journey[1]"), (("variants", 0, "name"), "variants[0].name"),
    (("variants", 1, "key"), "variants[1].key"),
    (("variants", 1, "payload", "layout"), "variants[1].payload"),
    (("variants", 1, "payload", "blocks", 0, "title"), "variants[1].payload"),
    (("variants", 1, "payload", "layout", KEY), "variants[1].payload"),
    (("targeting", 0, "attribute"), "targeting[0].attribute"),
    (("targeting", 0, "value", 0), "targeting[0].value"),
    (("overrides", "qa-user-1", KEY), "overrides"),
    (("overrides", "qa-user-1"), "overrides"),
    (("metrics", 0, "event"), "metrics[0].event"),
    (("metrics", 2, "step"), "metrics[2].step"),
    (("layer",), "layer"), (("key",), "key"),
)


def holdout_body() -> dict[str, Any]:
    return {"key": "h2027", "name": "2027 holdout", "percent": 0.05,
            "scope": {"experiments": ["checkout-redesign"]},
            "metrics": [{"key": "purchase", "kind": "conversion", "event": "purchase",
                         "role": "primary"}]}


HOLDOUT_SPOTS = _spots((("name",), "name"), (("scope", "experiments", 0), "scope.experiments"),
                       (("metrics", 0, "event"), "metrics[0].event"))


def _patch() -> dict[str, Any]:
    body = _nested_payload_experiment()
    return {name: body[name] for name in ("name", "hypothesis", "owner", "journey",
                                          "variants", "targeting", "overrides", "metrics")}


def _event(**fields: Any) -> dict[str, Any]:
    return {"events": [{"event_id": "e-1", "unit_id": "visitor-1", "type": "step",
                        "name": "payment", "step": "payment",
                        "properties": {"device": "mobile"}, **fields}]}


def _rejected_fields(body: Any) -> list[str]:
    return [detail["field"] for item in body["rejected"] for detail in item["error"]["details"]]


def _ofrep_details(body: Any) -> list[str]:
    return [body["errorCode"], body["errorDetails"]]


WRITE_ROUTES: tuple[WriteRoute, ...] = (
    WriteRoute("create experiment", "POST", "/api/v1/experiments", "admin",
               _nested_payload_experiment, EXPERIMENT_SPOTS),
    WriteRoute("patch experiment", "PATCH", "/api/v1/experiments/checkout-redesign", "admin",
               _patch, EXPERIMENT_SPOTS[:-2], needs="draft"),
    WriteRoute("conclude", "POST", "/api/v1/experiments/checkout-redesign/conclude", "admin",
               lambda: {"outcome": "ship", "winner": "one-page", "learnings": "It works"},
               _spots((("learnings",), "learnings"), (("winner",), "winner")),
               needs="running"),
    WriteRoute("iterate", "POST", "/api/v1/experiments/checkout-redesign/iterate", "admin",
               lambda: {"key": "checkout-2", "name": "Second", "hypothesis": "Again"},
               _spots((("key",), "key"), (("name",), "name"),
                      (("hypothesis",), "hypothesis")),
               needs="draft"),
    WriteRoute("create webhook", "POST", "/api/v1/webhooks", "admin",
               lambda: {"url": "http://127.0.0.1:9/hook", "events": ["experiment.decided"],
                        "description": "CRM"},
               _spots((("url",), "url"), (("description",), "description"),
                      (("events", 0), "events[0]"))),
    WriteRoute("patch webhook", "PATCH", "/api/v1/webhooks/1", "admin",
               lambda: {"url": "http://127.0.0.1:9/other", "description": "BI"},
               _spots((("url",), "url"), (("description",), "description")),
               needs="webhook"),
    WriteRoute("create holdout", "POST", "/api/v1/holdouts", "admin", holdout_body,
               (*HOLDOUT_SPOTS, NulSpot(("key",), "key"))),
    WriteRoute("patch holdout", "PATCH", "/api/v1/holdouts/h2027", "admin",
               lambda: {name: value for name, value in holdout_body().items() if name != "key"},
               HOLDOUT_SPOTS, needs="holdout"),
    WriteRoute("assign", "POST", "/api/v1/assign", "client",
               lambda: {"unit_id": "visitor-1", "attributes": {"country": "FR"},
                        "experiments": ["checkout-redesign"]},
               _spots((("unit_id",), "unit_id"), (("attributes", "country"), "attributes"),
                      (("attributes", "country", KEY), "attributes"),
                      (("experiments", 0), "experiments[0]")),
               needs="running"),
    WriteRoute("exposure", "POST", "/api/v1/exposures", "client",
               lambda: {"experiment": "checkout-redesign", "unit_id": "visitor-1",
                        "attributes": {"country": "FR"}},
               _spots((("unit_id",), "unit_id"), (("experiment",), "experiment"),
                      (("attributes", "country"), "attributes")),
               needs="running"),
    # A bad event is refused on its own, inside a 200 (SPEC §5).
    WriteRoute("events", "POST", "/api/v1/events", "client", _event,
               _spots((("events", 0, "unit_id"), "events[0].unit_id"),
                      (("events", 0, "event_id"), "events[0].event_id"),
                      (("events", 0, "name"), "events[0].name"),
                      (("events", 0, "step"), "events[0].step"),
                      (("events", 0, "properties", "device"), "events[0].properties"),
                      (("events", 0, "properties", "device", KEY), "events[0].properties")),
               refused=200, fields_of=_rejected_fields),
    # OFREP refuses with its own shape: 400 INVALID_CONTEXT.
    WriteRoute("ofrep evaluate", "POST", "/ofrep/v1/evaluate/flags/checkout-redesign",
               "client", lambda: {"context": {"targetingKey": "visitor-1", "country": "FR"}},
               _spots((("context", "targetingKey"), "INVALID_CONTEXT"),
                      (("context", "country"), "INVALID_CONTEXT")),
               needs="running", refused=400, fields_of=_ofrep_details),
)


def nul_cases() -> list[tuple[WriteRoute, NulSpot]]:
    """Every (route, spot) pair, for ``pytest.mark.parametrize``."""
    return [(route, spot) for route in WRITE_ROUTES for spot in route.spots]
