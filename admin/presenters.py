"""Report (SPEC §6) → what the experiment page draws: no statistics here, only layout."""

from __future__ import annotations

import math
from typing import Any

from experiments.schemas import FRICTION_KINDS

_VERDICT_RANK = {"worse": 0, "better": 1, "inconclusive": 2, "flat": 3}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def primary_metric(body: dict[str, Any]) -> dict[str, Any] | None:
    """The report's primary metric entry, if any."""
    for metric in _list(body.get("metrics")):
        if _dict(metric).get("role") == "primary":
            return metric
    return None


def primary_verdict(body: dict[str, Any] | None) -> str | None:
    """The headline verdict of the primary metric: any 'worse' or 'better' beats flat/unknown."""
    metric = primary_metric(body or {})
    if metric is None:
        return None
    verdicts = [c.get("verdict") for c in _list(metric.get("comparisons")) if isinstance(c, dict)]
    verdicts = [v for v in verdicts if v in _VERDICT_RANK]
    return min(verdicts, key=_VERDICT_RANK.__getitem__) if verdicts else None


def total_units(body: dict[str, Any] | None) -> int:
    """Units in the experiment according to the report."""
    units = _dict((body or {}).get("units"))
    return int(sum(v for v in units.values() if _float(v) is not None))


def srm_detected(body: dict[str, Any] | None) -> bool:
    return bool(_dict((body or {}).get("srm")).get("detected"))


def unit_split(body: dict[str, Any], weights: dict[str, float]) -> list[dict[str, Any]]:
    """Observed vs expected share of units per variant (what SRM compares)."""
    units = _dict(body.get("units"))
    total = sum(v for v in units.values() if _float(v) is not None) or 0
    weight_sum = sum(weights.values()) or 1.0
    return [{"variant": key, "units": units.get(key, 0),
             "observed": (units.get(key, 0) / total) if total else None,
             "expected": weight / weight_sum} for key, weight in weights.items()]


def metric_rows(body: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per metric with the control estimate and one row per treatment comparison."""
    rows = []
    for metric in _list(body.get("metrics")):
        metric = _dict(metric)
        estimates = {v.get("variant"): v for v in _list(metric.get("variants"))
                     if isinstance(v, dict)}
        comparisons = [c for c in _list(metric.get("comparisons")) if isinstance(c, dict)]
        compared = {c.get("variant") for c in comparisons}
        control = next((k for k in estimates if k not in compared), None)
        rows.append({
            "key": metric.get("key"), "kind": metric.get("kind"), "role": metric.get("role"),
            "control": estimates.get(control) if control else None,
            "comparisons": [{**c, "estimate": _dict(estimates.get(c.get("variant")))
                             .get("estimate")} for c in comparisons],
            "warnings": _list(metric.get("warnings")),
        })
    order = {"primary": 0, "guardrail": 1, "secondary": 2}
    return sorted(rows, key=lambda row: order.get(str(row["role"]), 3))


def lift_chart(body: dict[str, Any]) -> dict[str, Any]:
    """Cumulative relative lift of the primary metric per treatment, with its CI band."""
    points = [p for p in _list(body.get("timeline")) if isinstance(p, dict)]
    dates = sorted({str(p.get("date")) for p in points if p.get("date")})
    series: dict[str, dict[str, list[float | None]]] = {}
    for point in points:
        name = str(point.get("variant"))
        line = series.setdefault(name, {key: [None] * len(dates)
                                        for key in ("effect", "lower", "upper")})
        index = dates.index(str(point.get("date")))
        ci = [*_list(point.get("relative_ci")), None, None]
        line["effect"][index] = _float(point.get("relative_effect"))
        line["lower"][index] = _float(ci[0])
        line["upper"][index] = _float(ci[1])
    return {"labels": dates,
            "series": [{"variant": name, **values} for name, values in series.items()]}


def funnel(body: dict[str, Any], variants: list[str]) -> dict[str, Any]:
    """Rates per step and variant for the funnel chart and its table."""
    steps = [s for s in _list(body.get("funnel")) if isinstance(s, dict)]
    rows = []
    for step in steps:
        cells = _dict(step.get("variants"))
        rows.append({"step": step.get("step"), "largest_drop_off": bool(step.get(
            "largest_drop_off")), "cells": [_dict(cells.get(v)) for v in variants]})
    return {"variants": variants, "rows": rows,
            "chart": {"labels": [str(r["step"]) for r in rows], "series": [
                {"variant": v, "rates": [_float(r["cells"][i].get("rate")) for r in rows]}
                for i, v in enumerate(variants)]}}


def friction_heatmaps(body: dict[str, Any], journey: list[str],
                      treatments: list[str]) -> list[dict[str, Any]]:
    """One journey-step × friction-kind grid per treatment, coloured by effect vs control.

    Uses the report's full cell list (``friction_matrix``/``friction``) when present,
    else the significant ``friction_points`` only; empty cells show 'no data'.
    """
    cells = _friction_cells(body)
    steps = list(journey) or sorted({str(c.get("step")) for c in cells})
    grids = []
    for treatment in treatments:
        by_key = {(c.get("step"), c.get("friction_kind")): c for c in cells
                  if c.get("variant") == treatment}
        rows = [{"step": step, "cells": [_heat_cell(by_key.get((step, kind)), kind)
                                         for kind in FRICTION_KINDS]} for step in steps]
        grids.append({"variant": treatment, "kinds": FRICTION_KINDS, "rows": rows})
    return grids


def _friction_cells(body: dict[str, Any]) -> list[dict[str, Any]]:
    significant = {(p.get("step"), p.get("friction_kind"), p.get("variant"))
                   for p in _list(body.get("friction_points")) if isinstance(p, dict)}
    full = _list(body.get("friction_matrix")) or _list(body.get("friction"))
    source = full or _list(body.get("friction_points"))
    cells = []
    for cell in source:
        if not isinstance(cell, dict):
            continue
        key = (cell.get("step"), cell.get("friction_kind"), cell.get("variant"))
        flagged = cell.get("significant")
        cells.append({**cell, "significant": bool(flagged) if flagged is not None
                      else key in significant})
    return cells


def _heat_cell(cell: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """Colour scale: friction going down is good (green), up is bad (red); alpha by size."""
    if cell is None:
        return {"kind": kind, "empty": True}
    effect = _float(cell.get("relative_effect"))
    strength = min(abs(effect), 0.5) / 0.5 if effect is not None else 0.0
    tone = "neutral" if effect is None or effect == 0 else ("good" if effect < 0 else "bad")
    return {"kind": kind, "empty": False, "effect": effect, "tone": tone,
            "alpha": round(0.15 + 0.75 * strength, 2), "rate": cell.get("rate"),
            "control_rate": cell.get("control_rate"),
            "p": cell.get("adjusted_p_value", cell.get("p_value")),
            "significant": bool(cell.get("significant"))}


def decision_of(status: str, experiment_decision: Any,
                body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The decision to headline: the conclusion once concluded, else the latest report's."""
    stored = _dict(experiment_decision) or None
    latest = _dict((body or {}).get("decision")) or None
    return (stored or latest) if status == "concluded" else (latest or stored)
