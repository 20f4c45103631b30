"""A draft's launch checklist: what a manager checks before pressing Start (SPEC §8)."""

from __future__ import annotations

import json
from typing import Any

from experiments.errors import ValidationFailed
from experiments.services.analysis import calculate_power, power_design

ASSUMED_BASELINE = 0.10  # the power calculator's default, used when nothing was observed yet
OP_WORDS = {"eq": "is", "neq": "is not", "in": "is one of", "not_in": "is none of",
            "gt": "is above", "gte": "is at least", "lt": "is below", "lte": "is at most",
            "contains": "contains", "regex": "matches", "exists": "is set"}


def targeting_lines(data: dict[str, Any]) -> list[str]:
    """Who enters, in words: the rules, the share of traffic, the layer and the overrides."""
    lines = []
    for rule in data.get("targeting") or []:
        value = rule.get("value")
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        words = OP_WORDS.get(str(rule.get("op")), str(rule.get("op")))
        lines.append(f"{rule.get('attribute')} {words}"
                     + ("" if rule.get("op") == "exists" else f" {shown}"))
    if not lines:
        lines.append("Everyone (no targeting rules)")
    lines.append(f"{float(data.get('traffic') or 0) * 100:g}% of the matching units enter")
    if data.get("layer"):
        lines.append(f"Shares layer {data['layer']!r}: "
                     "at most one experiment of the layer per unit")
    if data.get("overrides"):
        lines.append(f"{len(data['overrides'])} forced unit(s) (overrides, excluded from analysis)")
    return lines


def power_estimate(data: dict[str, Any], baseline: float | None) -> dict[str, Any] | None:
    """Units per variant the primary metric needs (the power calculator, for the test the
    experiment runs: a sequential one needs about twice the fixed-horizon sample), or None
    if unknown.

    Only proportions have a default baseline; means need their standard deviation.
    """
    primary = next((m for m in data.get("metrics") or [] if m.get("role") == "primary"), None)
    if primary is None or primary.get("kind") not in ("conversion", "friction"):
        return None
    settings = data.get("analysis") or {}
    design = power_design(settings)
    observed = baseline is not None and 0 < baseline < 1
    options = {"baseline": baseline if observed else ASSUMED_BASELINE,
               "mde": settings.get("mde", 0.05), "alpha": settings.get("alpha", 0.05),
               "power": settings.get("power", 0.8),
               "variants": max(2, len(data.get("variants") or []))}
    try:
        result = calculate_power(primary["kind"], **options, design=design)
    except ValidationFailed:
        return None
    return {**options, **result, "observed": observed, "metric": primary.get("key"),
            "kind": primary["kind"], "design": design}


def checklist(data: dict[str, Any], power: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each launch check with its state ('ok', 'warn', 'missing') and a plain detail."""
    metrics = data.get("metrics") or []
    primary = [m["key"] for m in metrics if m.get("role") == "primary"]
    guardrails = [m["key"] for m in metrics if m.get("role") == "guardrail"]
    settings = data.get("analysis") or {}
    return [
        {"state": "ok" if len(primary) == 1 else "missing", "label": "Primary metric set",
         "detail": primary[0] if len(primary) == 1 else "Add exactly one primary metric"},
        {"state": "ok" if guardrails else "warn", "label": "Guardrails present",
         "detail": ", ".join(guardrails) if guardrails
         else "No guardrail: nothing stops a harmful change early"},
        {"state": power_state(power, settings), "label": "Power estimate",
         "detail": _power_text(power, settings)},
        {"state": "ok" if len(data.get("variants") or []) >= 2 else "missing",
         "label": "Variants", "detail": f"{len(data.get('variants') or [])} variants"},
        {"state": "ok" if data.get("journey") else "warn", "label": "Journey steps",
         "detail": " → ".join(data.get("journey") or []) or "No journey: no funnel or heatmap"},
    ]


def power_state(power: dict[str, Any] | None, settings: dict[str, Any]) -> str:
    """'ok' when the planned minimum sample reaches the power the settings ask for."""
    if power is None:
        return "warn"
    return "ok" if power["units_per_variant"] <= settings.get("min_units_per_variant", 0) \
        else "warn"


def _power_text(power: dict[str, Any] | None, settings: dict[str, Any]) -> str:
    if power is None:
        return "Open the power calculator with the primary metric's baseline"
    basis = ("observed in the previous iteration" if power["observed"]
             else "assumed, nothing observed yet")
    text = (f"{power['units_per_variant']:,} units per variant to detect a "
            f"{power['mde'] * 100:g}% relative change of {power['metric']} on a "
            f"{power['baseline'] * 100:.1f}% baseline ({basis}; power "
            f"{power['power'] * 100:g}%, α {power['alpha']:g}"
            f"{', the sequential test' if power['design'] == 'sequential' else ''})")
    minimum = settings.get("min_units_per_variant", 0)
    if power_state(power, settings) == "ok":
        return text
    return (f"{text}. The minimum of {minimum:,} units per variant is lower: an early "
            "decision would have less power than planned")


def sdk_snippet(data: dict[str, Any], endpoint: str) -> str:
    """What a front end pastes: init with a client key placeholder, the key, each payload."""
    payloads = "\n".join(f"  //   {v['key']}: {json.dumps(v.get('payload') or {}, sort_keys=True)}"
                         for v in data.get("variants") or [])
    first_step = (data.get("journey") or [None])[0]
    lines = [
        f'<script src="{endpoint}/sdk/parcours.js"></script>',
        '<script type="module">',
        f"  const p = Parcours.init({{endpoint: {json.dumps(endpoint)}, "
        'clientKey: "<CLIENT_KEY>",',
        "                           unitId: visitorId, autoFriction: true});",
        f"  const v = await p.variant({json.dumps(data.get('key'))});"
        "  // {variant, payload, inExperiment}",
        "  // v.payload per variant:",
        payloads,
        *([f"  p.step({json.dumps(first_step)});"] if first_step else []),
        "</script>",
    ]
    return "\n".join(lines)
