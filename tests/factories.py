"""Test data factories: valid payloads with the parts a test cares about overridden."""

from __future__ import annotations

import copy
import http.client
import json
from typing import Any


def experiment_payload(key: str = "checkout-redesign", **overrides: Any) -> dict[str, Any]:
    """A valid experiment body (SPEC §3) with top-level fields replaced by ``overrides``."""
    payload: dict[str, Any] = {
        "key": key,
        "name": "One-page checkout",
        "hypothesis": "Merging address and payment removes the friction at payment",
        "owner": "journey-team@example.com",
        "journey": ["landing", "cart", "checkout", "payment", "confirmation"],
        "variants": [
            {"key": "control", "name": "Current", "weight": 0.5, "is_control": True,
             "payload": {}},
            {"key": "one-page", "name": "One page", "weight": 0.5, "is_control": False,
             "payload": {"layout": "single"}},
        ],
        "traffic": 1.0,
        "targeting": [{"attribute": "country", "op": "in", "value": ["FR", "BE"]}],
        "layer": "checkout",
        "overrides": {"qa-user-1": "one-page"},
        "metrics": [
            {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary",
             "direction": "increase"},
            {"key": "revenue", "kind": "mean", "event": "purchase", "role": "secondary",
             "direction": "increase"},
            {"key": "payment-errors", "kind": "friction", "friction_kind": "error",
             "step": "payment", "role": "guardrail", "direction": "decrease"},
            {"key": "nps", "kind": "nps", "event": "nps", "role": "secondary",
             "direction": "increase"},
        ],
        "analysis": {"method": "sequential", "alpha": 0.05, "power": 0.8, "mde": 0.05,
                     "correction": "holm", "min_units_per_variant": 1000, "min_days": 7,
                     "max_days": 28, "conversion_window_hours": 72, "cuped": True,
                     "auto_decide": True, "auto_conclude": False},
        "iteration_of": None,
    }
    payload.update(copy.deepcopy(overrides))
    return payload


def post_json(port: int, path: str, body: object, key: str, *,
              timeout: float = 10) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to a live server on 127.0.0.1 with a bearer key: (status, JSON answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, json.dumps(body),
                           {"Content-Type": "application/json",
                            "Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw or b"{}")
        except ValueError:
            raise AssertionError(f"{path} answered {response.status} with {raw[:300]!r}, "
                                 "not JSON") from None
    finally:
        connection.close()
