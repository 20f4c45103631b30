"""Validation messages in the words of the form, not of the schema (SPEC §8, STYLE "Words on
screen"): a field path becomes the label people see, a pydantic message says what to type."""

from __future__ import annotations

import re
from collections.abc import Callable

LABELS = {
    "key": "Key", "name": "Name", "hypothesis": "Hypothesis", "owner": "Owner",
    "layer": "Layer", "traffic": "Traffic", "journey": "Journey", "variants": "Variants",
    "targeting": "Targeting", "overrides": "Overrides", "metrics": "Metrics",
    "learnings": "Learnings", "winner": "Winner", "outcome": "Outcome", "units": "Visitors",
    "email": "Email", "password": "Password", "role": "Role", "url": "URL",
    "events": "Events", "description": "Description", "iteration_of": "Iterates",
    "baseline": "Baseline", "baseline_sd": "Baseline standard deviation",
    "mde": "Minimum detectable effect", "alpha": "Alpha", "power": "Power",
    "daily_units": "Daily units", "new_key": "New key", "new_name": "New name",
    "dimensions": "Segment dimensions",
    "percent": "Share held out", "scope": "Scope",
}
ROWS = {"variants": "Variant", "metrics": "Metric", "targeting": "Rule", "journey": "Step"}
KEY_RULE = "lowercase letters, digits, - and _ only (start with a letter or digit, at most 64)"
_ROW = re.compile(r"^(?P<list>\w+)\[(?P<index>\d+)\](?:\.(?P<field>\w+))?$")


def field_label(path: str | None) -> str:
    """``variants[1].weight`` → "Variant 2 weight"; ``analysis.min_days`` → "Min days"."""
    if not path or path in ("form", "body"):
        return ""
    match = _ROW.match(path)
    if match:
        row = f"{ROWS.get(match['list'], match['list'].capitalize())} {int(match['index']) + 1}"
        return f"{row} {_words(match['field'])}" if match["field"] else row
    if path.startswith("overrides."):
        return f"Override for {path[len('overrides.'):]}"
    last = path.rsplit(".", 1)[-1]
    return LABELS.get(last, _words(last).capitalize())


def _words(name: str) -> str:
    return name.replace("_", " ")


def _number(text: str) -> str:
    return text[:-2] if text.endswith(".0") else text


_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str], str], str]]] = [
    (re.compile(r"^String should match pattern"),
     lambda m, path: KEY_RULE if path.endswith("key") or path in ("layer", "iteration_of")
     else "use only the allowed characters"),
    (re.compile(r"^(Field required|String should have at least 1 character)"),
     lambda m, path: "required"),
    (re.compile(r"^String should have at most (\d+) characters?"),
     lambda m, path: f"at most {m[1]} characters"),
    (re.compile(r"^Input should be greater than or equal to (\S+)"),
     lambda m, path: f"must be {_number(m[1])} or more"),
    (re.compile(r"^Input should be greater than (\S+)"),
     lambda m, path: f"must be more than {_number(m[1])}"),
    (re.compile(r"^Input should be less than or equal to (\S+)"),
     lambda m, path: f"must be {_number(m[1])} or less"),
    (re.compile(r"^Input should be less than (\S+)"),
     lambda m, path: f"must be less than {_number(m[1])}"),
    (re.compile(r"^Input should be a valid integer"),
     lambda m, path: "type a whole number, e.g. 7"),
    (re.compile(r"^Input should be a valid number"),
     lambda m, path: "type a number, e.g. 0.5"),
    (re.compile(r"^Input should be a valid (boolean|dictionary|list|string)"),
     lambda m, path: f"this needs a {'yes/no value' if m[1] == 'boolean' else m[1]}"),
    (re.compile(r"^Input should be (('[^']*'(, | or )?)+)$"),
     lambda m, path: "choose one of " + ", ".join(re.findall(r"'([^']*)'", m[1]))),
    (re.compile(r"^Extra inputs are not permitted"),
     lambda m, path: "not a field of this form"),
    (re.compile(r"^List should have at least (\d+) items?"),
     lambda m, path: f"add at least {m[1]}"),
    (re.compile(r"^List should have at most (\d+) items?"),
     lambda m, path: f"at most {m[1]} allowed"),
    (re.compile(r"^exactly one variant must have is_control=true \(found (\d+)\)"),
     lambda m, path: f"choose exactly one control variant (found {m[1]})"),
    (re.compile(r"^exactly one metric must have role=primary \(found (\d+)\)"),
     lambda m, path: f"choose exactly one primary metric (found {m[1]})"),
    (re.compile(r"^must be at least analysis\.min_days"),
     lambda m, path: "must be at least Min days"),
]


def human_message(path: str | None, message: str) -> str:
    """The schema's message as an instruction; messages already written for people pass."""
    for pattern, render in _RULES:
        match = pattern.match(message)
        if match:
            return render(match, path or "")
    return message


def summary_line(path: str | None, message: str) -> str:
    """"Key: lowercase letters, …" — the label (when the field has one) and the message."""
    label = field_label(path)
    text = human_message(path, message)
    return f"{label}: {text}" if label else text[:1].upper() + text[1:]
