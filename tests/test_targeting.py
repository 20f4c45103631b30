"""Targeting predicates that must stay cheap whatever an experiment's author writes."""

from __future__ import annotations

import logging

from experiments.services.assignment import condition_holds
from experiments.services.targeting import compile_condition


def test_a_catastrophically_backtracking_regex_counts_as_no_match(caplog):
    condition = compile_condition({"attribute": "email", "op": "regex", "value": r"(a|aa)+$"})
    with caplog.at_level(logging.WARNING, logger="experiments.services.targeting"):
        assert condition_holds(condition, {"email": "a" * 60 + "!"}) is False
    assert "timed out" in caplog.text
    assert condition_holds(condition, {"email": "aaaa"}) is True   # ordinary inputs still match


def test_regex_targeting_keeps_python_re_syntax():
    condition = compile_condition({"attribute": "email", "op": "regex",
                                   "value": r"(?i)@SHOP\.(?:fr|be)$"})
    assert condition_holds(condition, {"email": "ana@shop.fr"}) is True
    assert condition_holds(condition, {"email": "ana@shop.de"}) is False
