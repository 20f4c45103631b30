"""The experiment form: request.form ⇄ the SPEC §3 dict the lifecycle service validates.

Repeated rows (journey steps, variants, targeting rules, metrics) are posted as
same-named fields in document order, so adding, removing and reordering rows in
the browser needs no renumbering. Numbers are passed on as the strings typed, so
the service's own validation (the API's rules) reports them under the same
field paths (``variants[1].weight``); only what cannot be passed on (broken JSON,
override lines) is checked here.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from werkzeug.datastructures import MultiDict

from admin.messages import human_message
from experiments.schemas import AnalysisSettings, BanditAllocation

VARIANT_FIELDS = ("key", "name", "weight", "role", "payload")
RULE_FIELDS = ("attribute", "op", "value")
METRIC_FIELDS = ("key", "kind", "role", "direction", "event", "numerator", "denominator",
                 "step", "friction_kind", "cap_type", "cap_value", "quantile", "source")
CAP_FIELDS = {"cap_type": "type", "cap_value": "value"}  # form column -> cap key
ANALYSIS_NUMBERS = ("alpha", "power", "mde", "min_units_per_variant", "min_days", "max_days",
                    "conversion_window_hours")
ANALYSIS_CHOICES = ("method", "correction", "warehouse")  # warehouse: blank for Parcours's
ANALYSIS_FLAGS = ("cuped", "auto_decide", "auto_conclude", "time_on_step")
# Segment dimensions are typed as one comma-separated line ("country, device").
ANALYSIS_LISTS = ("dimensions",)
# The allocation (SPEC §13): a type, and a bandit's four settings (blank: the default).
ALLOCATION_NUMBERS = ("burn_in_hours", "update_every_hours", "min_weight", "min_units_per_arm")
TEXT_FIELDS = ("key", "name", "hypothesis", "owner", "layer", "traffic", "learnings")
Errors = dict[str, list[str]]


def blank_state() -> dict[str, Any]:
    """What a new experiment form starts with: a two-arm test of one conversion."""
    defaults = AnalysisSettings().model_dump(mode="json")
    return {
        "key": "", "name": "", "hypothesis": "", "owner": "", "layer": "", "traffic": "1",
        "learnings": "", "journey": ["landing", "checkout", "confirmation"],
        "variants": [
            {"key": "control", "name": "Control", "weight": "0.5", "role": "control",
             "payload": "{}"},
            {"key": "treatment", "name": "Treatment", "weight": "0.5", "role": "treatment",
             "payload": "{}"},
        ],
        "targeting": [], "overrides": "",
        "metrics": [{"key": "purchase", "kind": "conversion", "role": "primary",
                     "direction": "", "event": "purchase", "numerator": "",
                     "denominator": "", "step": "", "friction_kind": "", "cap_type": "",
                     "cap_value": "", "quantile": "", "source": ""}],
        "analysis": {name: _text(value) for name, value in defaults.items()},
        "allocation": _allocation_state({"type": "fixed"}),
    }


def state_from_experiment(data: dict[str, Any]) -> dict[str, Any]:
    """The form state of an existing experiment (its SPEC §3 dict)."""
    return {
        **{name: _text(data.get(name)) for name in TEXT_FIELDS},
        "journey": list(data.get("journey") or []),
        "variants": [{"key": v["key"], "name": v.get("name", ""), "weight": _text(v["weight"]),
                      "role": "control" if v.get("is_control") else "treatment",
                      "payload": json.dumps(v.get("payload") or {})}
                     for v in data.get("variants") or []],
        "targeting": [{"attribute": r["attribute"], "op": r["op"],
                       "value": "" if r.get("value") is None else json.dumps(r["value"])}
                      for r in data.get("targeting") or []],
        "overrides": "\n".join(f"{unit} = {variant}"
                               for unit, variant in (data.get("overrides") or {}).items()),
        "metrics": [{name: _text({**m, **_cap_columns(m.get("cap"))}.get(name))
                     for name in METRIC_FIELDS} for m in data.get("metrics") or []],
        "analysis": {name: _text(value) for name, value in (data.get("analysis") or {}).items()},
        "allocation": _allocation_state(data.get("allocation") or {"type": "fixed"}),
    }


def _allocation_state(allocation: dict[str, Any]) -> dict[str, str]:
    """The allocation's form fields: its type, and a bandit's settings (defaults shown)."""
    defaults = BanditAllocation(type="bandit").model_dump(mode="json")
    shown = {**defaults, **allocation} if allocation.get("type") == "bandit" else defaults
    return {"type": allocation.get("type", "fixed"),
            **{name: _text(shown[name]) for name in ALLOCATION_NUMBERS}}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if isinstance(value, bool):
        return "on" if value else ""
    return str(value)


def parse_form(form: MultiDict[str, str]) -> tuple[dict[str, Any], dict[str, Any], Errors]:
    """Read the posted form into (state to re-render, dict for the service, local errors)."""
    errors: Errors = {}
    state: dict[str, Any] = {name: form.get(name, "").strip() for name in TEXT_FIELDS}
    state["journey"] = [s.strip() for s in form.getlist("journey") if s.strip()]
    state["variants"] = _rows(form, "variant", VARIANT_FIELDS, ("key", "name", "weight"))
    state["targeting"] = _rows(form, "rule", RULE_FIELDS, ("attribute", "value"))
    state["metrics"] = _rows(form, "metric", METRIC_FIELDS, ("key", "event", "step"))
    state["overrides"] = form.get("overrides", "").strip()
    state["analysis"] = {name: form.get(f"analysis_{name}", "").strip()
                         for name in ANALYSIS_NUMBERS + ANALYSIS_CHOICES + ANALYSIS_LISTS}
    state["analysis"].update({name: "on" if form.get(f"analysis_{name}") else ""
                              for name in ANALYSIS_FLAGS})
    state["allocation"] = {name: form.get(f"allocation_{name}", "").strip()
                           for name in ("type", *ALLOCATION_NUMBERS)}
    data = {
        "key": state["key"], "name": state["name"], "hypothesis": state["hypothesis"],
        "owner": state["owner"], "layer": state["layer"] or None,
        "traffic": state["traffic"] or "1", "journey": state["journey"],
        "variants": [_variant(row, index, errors) for index, row in enumerate(state["variants"])],
        "targeting": [_rule(row) for row in state["targeting"]],
        "overrides": _overrides(state["overrides"], errors),
        "metrics": [_metric(row) for row in state["metrics"]],
        "analysis": _analysis(state["analysis"]),
        "allocation": _allocation(state["allocation"]),
    }
    _check_one_control(data["variants"], errors)
    return state, data, errors


def _check_one_control(variants: list[dict[str, Any]], errors: Errors) -> None:
    """Reported with the other errors: the schema's own check only runs once fields parse."""
    controls = sum(bool(v["is_control"]) for v in variants)
    if controls != 1:
        errors.setdefault("variants", []).append(
            f"choose exactly one control variant (found {controls})")


def _rows(form: MultiDict[str, str], prefix: str, names: tuple[str, ...],
          meaningful: tuple[str, ...]) -> list[dict[str, str]]:
    """Zip the same-named columns back into rows; rows left blank are dropped."""
    columns = {name: form.getlist(f"{prefix}_{name}") for name in names}
    count = max((len(values) for values in columns.values()), default=0)
    rows = [{name: (columns[name][i] if i < len(columns[name]) else "").strip()
             for name in names} for i in range(count)]
    return [row for row in rows if any(row[name] for name in meaningful)]


def _variant(row: dict[str, str], index: int, errors: Errors) -> dict[str, Any]:
    variant: dict[str, Any] = {"key": row["key"], "name": row["name"],
                               "is_control": row["role"] == "control", "payload": {}}
    if row["weight"]:
        variant["weight"] = row["weight"]
    if row["payload"]:
        try:
            variant["payload"] = json.loads(row["payload"])
        except ValueError as exc:
            errors.setdefault(f"variants[{index}].payload", []).append(
                f"not valid JSON ({getattr(exc, 'msg', exc)}); "
                'write an object such as {"layout": "single"}')
            variant["payload"] = row["payload"]
    return variant


def _rule(row: dict[str, str]) -> dict[str, Any]:
    """A rule's value is JSON when it parses (18, true, ["FR"]), else text; lists split on ','."""
    raw = row["value"]
    value: Any = None
    if raw:
        try:
            value = json.loads(raw)
        except ValueError:
            value = ([part.strip() for part in raw.split(",") if part.strip()]
                     if row["op"] in ("in", "not_in") else raw)
    return {"attribute": row["attribute"], "op": row["op"], "value": value}


_OVERRIDE_LINE = re.compile(r"^\s*(?P<unit>[^=:]+?)\s*[=:]\s*(?P<variant>\S+)\s*$")


def _overrides(text: str, errors: Errors) -> dict[str, str]:
    """One ``unit_id = variant`` per line."""
    overrides = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _OVERRIDE_LINE.match(line)
        if match is None:
            errors.setdefault("overrides", []).append(
                f"line {number}: write 'unit_id = variant_key'")
            continue
        overrides[match["unit"]] = match["variant"]
    return overrides


def _cap_columns(cap: dict[str, Any] | None) -> dict[str, Any]:
    """A metric's cap as the form's two columns (type, value)."""
    return {column: (cap or {}).get(key) for column, key in CAP_FIELDS.items()}


def _metric(row: dict[str, str]) -> dict[str, Any]:
    """A metric row for the service; a cap type makes the two cap columns one ``cap``
    (a value that is not a number is left as text for the schema to name)."""
    metric = {name: row[name] for name in METRIC_FIELDS if row[name] and name not in CAP_FIELDS}
    metric.setdefault("key", "")
    if row.get("cap_type"):
        value: Any = row.get("cap_value", "")
        with contextlib.suppress(ValueError):
            value = float(value)
        metric["cap"] = {"type": row["cap_type"], "value": value}
    return metric


def _analysis(values: dict[str, str]) -> dict[str, Any]:
    settings: dict[str, Any] = {name: values[name] for name in ANALYSIS_NUMBERS + ANALYSIS_CHOICES
                                if values.get(name)}
    settings.update({name: bool(values.get(name)) for name in ANALYSIS_FLAGS})
    settings.update({name: [part.strip() for part in values.get(name, "").split(",")
                            if part.strip()] for name in ANALYSIS_LISTS})
    return settings


def _allocation(values: dict[str, str]) -> dict[str, Any]:
    """``{"type": "fixed"}``, or a bandit with the settings typed (numbers left as text for
    the schema to check and name, e.g. ``allocation.min_weight``)."""
    kind = values.get("type") or "fixed"
    if kind == "fixed":
        return {"type": "fixed"}
    return {"type": kind, **{name: values[name] for name in ALLOCATION_NUMBERS
                             if values.get(name)}}


def merge_errors(local: Errors, details: list[dict[str, Any]]) -> Errors:
    """Local messages first, then the service's, one list per field path."""
    merged = {path: list(messages) for path, messages in local.items()}
    for detail in details:
        # The API names a bandit setting under its union tag (allocation.bandit.min_weight).
        path = str(detail.get("field") or "form").replace("allocation.bandit.", "allocation.")
        message = human_message(path, str(detail.get("message", "invalid")))
        if path not in local and message not in merged.get(path, []):
            merged.setdefault(path, []).append(message)
    return merged


def field_id(path: str) -> str:
    """``variants[1].weight`` → ``f-variants-1-weight``: the id of the input that shows it."""
    return "f-" + re.sub(r"[^A-Za-z0-9_]+", "-", path).strip("-")
