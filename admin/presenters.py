"""Report (SPEC §6) → what the experiment page draws: no statistics here, only layout."""

from __future__ import annotations

import math
from typing import Any

from experiments.schemas import FRICTION_KINDS
from experiments.services.segments import SLICE_WARNING

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


def identity_line(body: dict[str, Any] | None) -> dict[str, int] | None:
    """The report's identity clusters (SPEC §14) when any unit was linked, else None."""
    found = _dict((body or {}).get("identity"))
    counts = {name: int(found.get(name) or 0) for name in ("clusters", "linked_units",
                                                           "conflicts")}
    return counts if counts["linked_units"] or counts["conflicts"] else None


def unit_split(body: dict[str, Any], weights: dict[str, float]) -> list[dict[str, Any]]:
    """Observed vs expected share of units per variant (what SRM compares). A bandit's
    expectation is its periods' weights applied to their traffic (``expected_units``, SPEC
    §13), never the configured weights, which only held for period 0."""
    expected = {key: _float(value) for key, value in _dict(body.get("expected_units")).items()}
    if expected and all(value is not None for value in expected.values()):
        weights = {key: expected.get(key) or 0.0 for key in weights}
    units = _dict(body.get("units"))
    total = sum(v for v in units.values() if _float(v) is not None) or 0
    weight_sum = sum(weights.values()) or 1.0
    return [{"variant": key, "units": units.get(key, 0),
             "observed": (units.get(key, 0) / total) if total else None,
             "expected": weight / weight_sum} for key, weight in weights.items()]


def metric_rows(body: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per metric: a row per variant (control first), treatments with their comparison."""
    rows = []
    for metric in _list(body.get("metrics")):
        metric = _dict(metric)
        estimates = [v for v in _list(metric.get("variants")) if isinstance(v, dict)]
        comparisons = {c.get("variant"): c for c in _list(metric.get("comparisons"))
                       if isinstance(c, dict)}
        control = next((v for v in estimates if v.get("variant") not in comparisons), None)
        variants = [{**v, "comparison": _with_reading(comparisons.get(v.get("variant")), body)}
                    for v in estimates]
        variants.sort(key=lambda v: v["comparison"] is not None)  # control first, stable
        rows.append({
            "key": metric.get("key"), "kind": metric.get("kind"), "role": metric.get("role"),
            "control": control, "variants": variants, "has_comparisons": bool(comparisons),
            "warnings": [_in_its_row(str(w), metric.get("key")) for w in
                         _list(metric.get("warnings"))], **quantile_label(metric),
        })
    order = {"primary": 0, "guardrail": 1, "secondary": 2}
    return sorted(rows, key=lambda row: order.get(str(row["role"]), 3))


def metric_notes(body: dict[str, Any]) -> set[str]:
    """Every note a metric of the report carries, as the report's own list writes it (the
    metric table says each in the metric's row)."""
    return {str(w) for metric in _list(body.get("metrics")) for w in
            _list(_dict(metric).get("warnings"))}


def _in_its_row(warning: str, key: Any) -> str:
    """A metric's note without the ``key: `` (or ``key, ``, before a variant) the report's
    list needs: its row names it."""
    return warning.removeprefix(f"{key}: ").removeprefix(f"{key}, ")


def _with_reading(comparison: dict[str, Any] | None, body: dict[str, Any]
                  ) -> dict[str, Any] | None:
    """A report's comparison (a copy) with its :func:`interval_reading` (its p-values are
    adjusted over the report's metrics and variants, guardrails apart); segment levels,
    which have no ``method`` of their own, get theirs from :func:`segment_views`."""
    if comparison is None or "method" not in body:
        return comparison
    return {**comparison, "reading": interval_reading(
        comparison, bayesian=body.get("method") == "bayesian",
        level=interval_level(body.get("alpha")),
        adjusted_for="the several metrics and variants of the report")}


QUANTILE_SOURCES = {"event_value": "of event values", "unit_value": "of per-visitor totals",
                    "step_duration": "of time on step"}


def quantile_label(metric: dict[str, Any]) -> dict[str, str]:
    """A quantile metric's 'p90 of time on payment' and its unit (seconds for time on a step)."""
    level = _float(metric.get("quantile"))
    if metric.get("kind") != "quantile" or level is None:
        return {"label": "", "unit": ""}
    source = str(metric.get("source"))
    of = QUANTILE_SOURCES.get(source, "")
    if source == "step_duration" and metric.get("step"):
        of = f"of time on {metric['step']}"
    return {"label": f"p{level * 100:g} {of}".strip(),
            "unit": "s" if source == "step_duration" else ""}


def segment_views(body: dict[str, Any], wanted: str | None,
                  alpha: Any = None) -> dict[str, Any]:
    """The segments picker and the chosen dimension's levels, each with its metric rows,
    what its table's columns mean (the p-values' family, the intervals' level) and the
    dimension's notes (the slice warning is the page's own notice)."""
    segments = [_dict(s) for s in _list(body.get("segments")) if _dict(s).get("dimension")]
    names = [str(s["dimension"]) for s in segments]
    chosen = next((s for s in segments if s["dimension"] == wanted),
                  segments[0] if segments else None)
    if chosen is None:
        return {"dimensions": names, "chosen": None, "levels": [], "merged_levels": 0}
    bayesian = body.get("method") == "bayesian"
    levels = []
    for level in _list(chosen.get("levels")):
        level = _dict(level)
        flags = {(h.get("metric"), h.get("variant")): h
                 for h in _list(level.get("heterogeneity")) if isinstance(h, dict)}
        rows = metric_rows({"metrics": level.get("metrics")})
        for row in rows:
            for variant in row["variants"]:
                variant["heterogeneity"] = flags.get((row["key"], variant.get("variant")))
        levels.append({"level": level.get("level"), "units": _dict(level.get("units")),
                       "srm": bool(_dict(level.get("srm")).get("detected")), "metrics": rows,
                       "warnings": _list(level.get("warnings")),
                       "heterogeneous": any(h.get("detected") for h in flags.values())})
    compared = [v for level in levels for row in level["metrics"] for v in row["variants"]
                if v["comparison"] is not None]
    family = sum(_float(v["comparison"].get("p_value")) is not None for v in compared)
    level_text = interval_level(alpha)
    for variant in compared:  # a copy: the report's own dicts stay as stored
        variant["comparison"] = {**variant["comparison"], "reading": interval_reading(
            variant["comparison"], bayesian=bayesian, level=level_text,
            adjusted_for=f"the {family} comparisons of {chosen['dimension']}")}
    return {"dimensions": names, "chosen": chosen["dimension"], "levels": levels,
            "merged_levels": chosen.get("merged_levels") or 0, "bayesian": bayesian,
            "family": family, "interval_level": level_text,
            "notes": [w for w in _list(chosen.get("warnings")) if w != SLICE_WARNING]}


def _excludes_zero(bounds: Any) -> bool | None:
    """Whether an interval lies wholly on one side of 0 (None without two finite bounds)."""
    values = [_float(bound) for bound in _list(bounds)]
    if len(values) != 2 or values[0] is None or values[1] is None:
        return None
    return values[0] > 0 or values[1] < 0


def interval_reading(comparison: dict[str, Any], *, bayesian: bool, adjusted_for: str,
                     level: str = "95%") -> str | None:
    """Why a row's interval and its verdict seem to disagree, in words; None when they
    agree. The verdict follows the adjusted p-value (``adjusted_for`` says over what), the
    interval is the row's own: alone it can exclude 0 while the adjusted p is not
    significant. A Bayesian verdict needs a 95 % chance to win, one-sided, which a
    two-sided 95 % interval can still straddle."""
    excludes = _excludes_zero(comparison.get("absolute_ci"))
    significant = bool(comparison.get("significant"))
    if excludes and not significant and not bayesian:
        return (f"Its interval alone excludes 0, but not significant once adjusted for "
                f"{adjusted_for}.")
    if excludes is False and significant and bayesian:
        return (f"Its chance to win passes {level} (one side); its {level} interval covers "
                f"both sides and still includes 0.")
    return None


def interval_level(alpha: Any) -> str:
    """'95%' for an alpha of 0.05 (95% when the alpha is missing or out of range)."""
    level = _float(alpha)
    return f"{(1 - level) * 100:g}%" if level is not None and 0 < level < 1 else "95%"


METHOD_LINES = {
    "sequential": "Sequential test: valid however often you look. Intervals are {level} "
                  "confidence sequences; p-values stay valid at every check.",
    "bayesian": "Bayesian: chance to beat control. Intervals are {level} credible intervals; "
                "“better” needs a 95% chance to win.",
    "frequentist": "Fixed-horizon test: look once at the planned sample. Intervals are {level} "
                   "confidence intervals.",
}


def method_line(method: Any, alpha: Any) -> str:
    """One plain sentence that says what the report's framework means for the reader."""
    return METHOD_LINES.get(str(method), METHOD_LINES["frequentist"]).format(
        level=interval_level(alpha))


def lift_chart(body: dict[str, Any]) -> dict[str, Any]:
    """Cumulative relative lift of the primary metric per treatment, with its CI band.

    A day whose relative interval is null (SPEC §6: the control's own interval includes 0,
    so the ratio's is unbounded) is marked ``unbounded``: the chart leaves its point out
    (a +60 % lift drawn without a band read as a measured one), the data table says so."""
    points = [p for p in _list(body.get("timeline")) if isinstance(p, dict)]
    dates = sorted({str(p.get("date")) for p in points if p.get("date")})
    series: dict[str, dict[str, list[Any]]] = {}
    for point in points:
        name = str(point.get("variant"))
        line = series.setdefault(name, {**{key: [None] * len(dates)
                                           for key in ("effect", "lower", "upper")},
                                        "unbounded": [False] * len(dates)})
        index = dates.index(str(point.get("date")))
        ci = [*_list(point.get("relative_ci")), None, None]
        line["effect"][index] = _float(point.get("relative_effect"))
        line["lower"][index] = _float(ci[0])
        line["upper"][index] = _float(ci[1])
        line["unbounded"][index] = (line["effect"][index] is not None
                                    and point.get("relative_ci") is None)
    if not any(value is not None for line in series.values() for value in line["effect"]):
        return {"labels": [], "series": []}  # e.g. NPS, in points: no relative lift to chart
    return {"labels": dates,
            "series": [{"variant": name, **values} for name, values in series.items()],
            "unbounded_days": sum(any(line["unbounded"][i] for line in series.values())
                                  for i in range(len(dates)))}


RATE_KINDS = ("conversion", "friction")


def effect_unit(kind: Any) -> tuple[float, str]:
    """How an absolute effect reads: rates in percentage points, NPS in points, else as is."""
    if kind in RATE_KINDS:
        return 100.0, "pts"
    if kind == "nps":
        return 1.0, "points"
    return 1.0, ""


def metric_timelines(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Per metric, the daily and cumulative absolute effect per treatment, ready to chart."""
    charts = []
    for entry in _list(body.get("metric_timeline")):
        entry = _dict(entry)
        points = [_dict(p) for p in _list(entry.get("points"))]
        dates = sorted({str(p.get("date")) for p in points if p.get("date")})
        scale, unit = effect_unit(entry.get("kind"))
        series: dict[str, dict[str, Any]] = {}
        for point in points:
            line = series.setdefault(str(point.get("variant")), {
                view: {key: [None] * len(dates) for key in ("effect", "lower", "upper")}
                for view in ("daily", "cumulative")})
            index = dates.index(str(point.get("date")))
            for view in ("daily", "cumulative"):
                _put(line[view], index, _dict(point.get(view)), scale)
        charts.append({"metric": entry.get("metric"), "kind": entry.get("kind"), "unit": unit,
                       "labels": dates,
                       "series": [{"variant": k, **v} for k, v in series.items()]})
    return charts


def _put(line: dict[str, list[float | None]], index: int, effect: dict[str, Any],
         scale: float) -> None:
    value = _float(effect.get("absolute_effect"))
    ci = [*_list(effect.get("absolute_ci")), None, None]
    for key, raw in (("effect", value), ("lower", _float(ci[0])), ("upper", _float(ci[1]))):
        line[key][index] = None if raw is None else raw * scale


def funnel(body: dict[str, Any], variants: list[str]) -> dict[str, Any]:
    """Rates per step and variant for the funnel chart and its table (with the p50/p90 time
    on each step when the report has it), and the worst transition."""
    steps = [s for s in _list(body.get("funnel")) if isinstance(s, dict)]
    rows = []
    for step in steps:
        cells = _dict(step.get("variants"))
        rows.append({"step": step.get("step"), "largest_drop_off": bool(step.get(
            "largest_drop_off")), "cells": [_dict(cells.get(v)) for v in variants]})
    timed = any("time_on_step" in cell for row in rows for cell in row["cells"])
    return {"variants": variants, "rows": rows, "drop": largest_drop(body, rows, variants),
            "time_on_step": timed,
            "chart": {"labels": [str(r["step"]) for r in rows], "series": [
                {"variant": v, "rates": [_float(r["cells"][i].get("rate")) for r in rows]}
                for i, v in enumerate(variants)]}}


def largest_drop(body: dict[str, Any], rows: list[dict[str, Any]],
                 variants: list[str]) -> dict[str, Any] | None:
    """The transition into the report's largest-drop-off step: 'payment → confirmation: −60.9%'.

    The loss happens between two steps, so the UI names both; the change is the pooled share
    of units lost (and per variant, from each one's ``from_previous``).
    """
    index = next((i for i, row in enumerate(rows) if row["largest_drop_off"]), None)
    if index is None:
        return None
    units = _dict(body.get("units"))

    def reached(i: int) -> float:
        if i < 0:
            return float(sum(_float(units.get(v)) or 0 for v in variants))
        return float(sum(_float(c.get("units")) or 0 for c in rows[i]["cells"]))
    before, after = reached(index - 1), reached(index)
    kept = [_float(cell.get("from_previous")) for cell in rows[index]["cells"]]
    return {"from": rows[index - 1]["step"] if index else "exposure", "to": rows[index]["step"],
            "change": (after / before - 1) if before else None,
            "per_variant": [{"variant": v, "change": None if share is None else share - 1}
                            for v, share in zip(variants, kept, strict=True)]}


def friction_heatmaps(body: dict[str, Any], journey: list[str],
                      treatments: list[str]) -> list[dict[str, Any]]:
    """One journey-step × friction-kind grid per treatment, with its plain top-friction list.

    Uses the report's full cell list (``friction_matrix``/``friction``) when present, else
    the significant ``friction_points`` only; empty cells show 'no data'. Only the report's
    ``friction_points`` (significant after BH) are coloured: the others are noise.
    """
    cells = _friction_cells(body)
    steps = list(journey) or sorted({str(c.get("step")) for c in cells})
    steps += sorted({str(c.get("step")) for c in cells} - set(steps))
    points = [_dict(p) for p in _list(body.get("friction_points"))]
    grids = []
    for treatment in treatments:
        by_key = {(c.get("step"), c.get("friction_kind")): c for c in cells
                  if c.get("variant") == treatment}
        rows = [{"step": step, "cells": [_heat_cell(by_key.get((step, kind)), kind)
                                         for kind in FRICTION_KINDS]} for step in steps]
        grids.append({"variant": treatment, "kinds": FRICTION_KINDS, "rows": rows,
                      "cells": [c for c in cells if c.get("variant") == treatment],
                      "top": [p for p in points if p.get("variant") == treatment][:5]})
    return grids


def _point_key(cell: dict[str, Any]) -> tuple[Any, Any, Any]:
    return cell.get("step"), cell.get("friction_kind"), cell.get("variant")


def _friction_cells(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cell to draw; ``significant`` means listed in the report's friction points."""
    points = [p for p in _list(body.get("friction_points")) if isinstance(p, dict)]
    significant = {_point_key(p) for p in points}
    full = [c for c in _list(body.get("friction_matrix")) or _list(body.get("friction"))
            if isinstance(c, dict)]
    seen = {_point_key(c) for c in full}
    return [{**cell, "significant": _point_key(cell) in significant}
            for cell in [*full, *(p for p in points if _point_key(p) not in seen)]]


def _heat_cell(cell: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """Significant cells get colour (green: less friction, red: more), alpha by size; the
    rest stay grey with their numbers."""
    if cell is None:
        return {"kind": kind, "empty": True}
    effect = _float(cell.get("relative_effect"))
    strength = min(abs(effect), 0.5) / 0.5 if effect is not None else 0.0
    significant = bool(cell.get("significant"))
    tone = "grey"
    if significant and effect:
        tone = "good" if effect < 0 else "bad"
    return {"kind": kind, "empty": False, "effect": effect, "tone": tone,
            "alpha": round(0.35 + 0.55 * strength, 2), "rate": cell.get("rate"),
            "control_rate": cell.get("control_rate"), "count": cell.get("count"),
            "units": cell.get("units"), "control_count": cell.get("control_count"),
            "control_units": cell.get("control_units"),
            "p": cell.get("adjusted_p_value", cell.get("p_value")),
            "significant": significant}


def decision_of(status: str, experiment_decision: Any,
                body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The decision to headline: the conclusion once concluded, else the latest report's."""
    stored = _dict(experiment_decision) or None
    latest = _dict((body or {}).get("decision")) or None
    return (stored or latest) if status == "concluded" else (latest or stored)
