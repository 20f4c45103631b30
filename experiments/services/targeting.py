"""Targeting conditions (SPEC §3), compiled once per configuration into fast predicates.

Semantics: a missing (or null) attribute fails every op except ``exists: false``;
values compare only within one family — strings, numbers (bools are not numbers) or
bools — and a type mismatch makes the condition false, never an error. ``in``/``not_in``
compare a scalar attribute to the list's elements; ``contains`` is a substring test on
strings or a membership test on list attributes; ``gt``… compare numbers with numbers
and strings with strings (lexicographically); ``regex`` searches string attributes.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import regex

Predicate = Callable[[Any], bool]
_FAMILIES: dict[type, str] = {bool: "bool", int: "number", float: "number", str: "string"}


@dataclass(frozen=True, slots=True)
class Condition:
    """A targeting rule and its compiled predicate over the attribute's value (None if absent)."""

    attribute: str
    op: str
    value: Any
    test: Predicate


def family(value: Any) -> str:
    """Comparison family of a JSON value; lists, objects and null are ``other``."""
    return _FAMILIES.get(type(value), "other")


def compile_condition(rule: Mapping[str, Any]) -> Condition:
    """Turn a stored rule into a :class:`Condition`; an unusable rule never matches."""
    op = str(rule.get("op", ""))
    value = rule.get("value")
    builder = _BUILDERS.get(op)
    test = builder(value) if builder is not None else _never
    return Condition(str(rule.get("attribute", "")), op, value, test)


def matches(conditions: Sequence[Condition], attributes: Mapping[str, Any]) -> bool:
    """Every condition must hold."""
    for condition in conditions:  # noqa: SIM110 - a plain loop is the fastest form here
        if not condition.test(attributes.get(condition.attribute)):
            return False
    return True


def _never(_actual: Any) -> bool:
    return False


def _eq(value: Any) -> Predicate:
    kind = family(value)
    return lambda actual: actual == value and family(actual) == kind


def _neq(value: Any) -> Predicate:
    kind = family(value)
    return lambda actual: actual is not None and family(actual) == kind and actual != value


def _members(value: Any) -> frozenset[tuple[str, Any]]:
    items = value if isinstance(value, list) else []
    return frozenset((family(item), item) for item in items if family(item) != "other")


def _in(value: Any) -> Predicate:
    members = _members(value)
    return lambda actual: family(actual) != "other" and (family(actual), actual) in members


def _not_in(value: Any) -> Predicate:
    members = _members(value)
    families = {kind for kind, _ in members}
    empty = isinstance(value, list) and not value

    def test(actual: Any) -> bool:
        kind = family(actual)
        if kind == "other" or not (empty or kind in families):
            return False  # absent, or a list of another type: a mismatch, not a pass
        return (kind, actual) not in members
    return test


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any], Predicate]:
    def build(value: Any) -> Predicate:
        kind = family(value)
        if kind not in ("number", "string"):
            return _never
        return lambda actual: family(actual) == kind and compare(actual, value)
    return build


def _contains(value: Any) -> Predicate:
    kind = family(value)

    def test(actual: Any) -> bool:
        if isinstance(actual, str):
            return kind == "string" and value in actual
        if isinstance(actual, list):
            return any(item == value and family(item) == kind for item in actual)
        return False
    return test


REGEX_TIMEOUT_S = 0.02  # a pattern that backtracks catastrophically must not stall assignment
log = logging.getLogger(__name__)


def _regex(value: Any) -> Predicate:
    """Search string attributes; a search that exceeds REGEX_TIMEOUT_S counts as no match."""
    try:
        pattern = regex.compile(value) if isinstance(value, str) else None
    except regex.error:
        pattern = None  # validated on write; an unusable pattern simply never matches
    if pattern is None:
        return _never
    search = pattern.search

    def test(actual: Any) -> bool:
        if not isinstance(actual, str):
            return False
        try:
            return search(actual, timeout=REGEX_TIMEOUT_S) is not None
        except TimeoutError:
            log.warning("targeting regex %r timed out; treated as no match", value)
            return False
    return test


def _exists(value: Any) -> Predicate:
    expected = True if value is None else bool(value)
    return lambda actual: (actual is not None) == expected


_BUILDERS: dict[str, Callable[[Any], Predicate]] = {
    "eq": _eq, "neq": _neq, "in": _in, "not_in": _not_in,
    "gt": _ordered(operator.gt), "gte": _ordered(operator.ge),
    "lt": _ordered(operator.lt), "lte": _ordered(operator.le),
    "contains": _contains, "regex": _regex, "exists": _exists,
}
