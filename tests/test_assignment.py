"""The pure assignment decision: hashing, split accuracy, traffic, layers, overrides, targeting."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from scipy.stats import chisquare

from experiments.services import config_cache
from experiments.services.assignment import (
    Decision,
    condition_holds,
    decide,
    unit_hash,
)
from experiments.services.config_cache import ExperimentConfig, VariantConfig, experiment_config
from experiments.services.targeting import compile_condition

UNITS = [f"visitor-{index}" for index in range(100_000)]


def config(weights: tuple[float, ...] = (0.5, 0.5), **fields: Any) -> ExperimentConfig:
    """An experiment whose first variant is the control; ``fields`` override the rest."""
    variants = [VariantConfig(f"v{index}", weight, index == 0, {"value": f"payload-{index}"})
                for index, weight in enumerate(weights)]
    values: dict[str, Any] = {"id": 1, "key": "exp", "salt": "5eed", "variants": variants}
    values.update(fields)
    return experiment_config(**values)


def test_unit_hash_is_murmur3_x86_32_so_every_host_agrees():
    # Published MurmurHash3_x86_32 vectors: a different library or platform must match them.
    assert unit_hash("The quick brown fox jumps over the lazy dog", 0) == 0x2E4FF723 / 2**32
    assert unit_hash("hello", 0) == 0x248BFA47 / 2**32
    assert unit_hash("Hello, world!", 1234) == 0xFAF6CDB3 / 2**32


def test_the_same_unit_gets_the_same_variant_on_every_call():
    experiment = config((0.2, 0.3, 0.5))
    first = [decide(experiment, unit, {}).variant.key for unit in UNITS[:1000]]
    again = [decide(experiment, unit, {}).variant.key for unit in UNITS[:1000]]
    assert first == again
    # Pinned: a change to the hashing scheme would reshuffle every running experiment.
    assert first[:6] == ["v0", "v2", "v0", "v0", "v2", "v0"]


def test_split_lands_within_one_point_of_the_weights():
    weights = (0.2, 0.3, 0.5)
    experiment = config(weights)
    counts = Counter(decide(experiment, unit, {}).variant.key for unit in UNITS)
    observed = [counts[f"v{index}"] for index in range(3)]
    for seen, weight in zip(observed, weights, strict=True):
        assert abs(seen / len(UNITS) - weight) < 0.01
    assert chisquare(observed, [weight * len(UNITS) for weight in weights]).pvalue > 0.001


def test_inclusion_and_split_are_independent():
    experiment = config((0.2, 0.3, 0.5), traffic=0.5)
    included = [d for d in (decide(experiment, unit, {}) for unit in UNITS) if d.in_experiment]
    assert abs(len(included) / len(UNITS) - 0.5) < 0.01
    counts = Counter(decision.variant.key for decision in included)
    observed = [counts[f"v{index}"] for index in range(3)]
    expected = [weight * len(included) for weight in (0.2, 0.3, 0.5)]
    assert chisquare(observed, expected).pvalue > 0.001


def test_raising_traffic_keeps_every_included_unit_in_its_variant():
    before = {unit: decide(config(traffic=0.2), unit, {}) for unit in UNITS[:20_000]}
    after = {unit: decide(config(traffic=0.6), unit, {}) for unit in UNITS[:20_000]}
    included_before = {unit for unit, d in before.items() if d.in_experiment}
    included_after = {unit for unit, d in after.items() if d.in_experiment}
    assert included_before < included_after
    assert all(after[unit].variant == before[unit].variant for unit in included_before)
    assert abs(len(included_after) / 20_000 - 0.6) < 0.02
    excluded = next(d for d in before.values() if not d.in_experiment)
    assert (excluded.variant.key, excluded.reason) == ("v0", "traffic")


def test_two_experiments_of_a_layer_never_share_a_unit():
    first = config(id=1, key="a", salt="s1", layer="checkout", layer_slot=(0, 2))
    second = config(id=2, key="b", salt="s2", layer="checkout", layer_slot=(1, 2))
    in_first = {u for u in UNITS[:20_000] if decide(first, u, {}).in_experiment}
    in_second = {u for u in UNITS[:20_000] if decide(second, u, {}).in_experiment}
    assert not in_first & in_second
    assert len(in_first | in_second) == 20_000
    assert abs(len(in_first) / 20_000 - 0.5) < 0.02
    outsider = next(u for u in UNITS if u not in in_first)
    assert decide(first, outsider, {}) == Decision(first.control, False, "layer")


def test_overrides_win_over_targeting_traffic_and_layer():
    experiment = config(traffic=0.0, layer="l", layer_slot=(1, 2), overrides={"qa": "v1"},
                        targeting=[{"attribute": "country", "op": "eq", "value": "FR"}])
    decision = decide(experiment, "qa", {"country": "US"})
    assert (decision.variant.key, decision.in_experiment, decision.reason) == (
        "v1", True, "override")


def test_an_override_naming_no_variant_is_ignored():
    experiment = config(traffic=0.0, overrides={"qa": "gone"})
    assert decide(experiment, "qa", {}).reason == "traffic"


@pytest.mark.parametrize(("status", "outcome", "winner", "variant", "reason"), [
    ("draft", None, None, "v0", "not_running"),
    ("paused", None, None, "v0", "not_running"),
    ("concluded", "ship", "v1", "v1", "concluded"),
    ("concluded", "rollback", None, "v0", "concluded"),
    ("concluded", "no_difference", None, "v0", "concluded"),
])
def test_units_outside_a_running_experiment_get_control_or_the_shipped_winner(
        status, outcome, winner, variant, reason):
    decision = decide(config(status=status, outcome=outcome, winner=winner), "u1", {})
    assert (decision.variant.key, decision.in_experiment, decision.reason) == (
        variant, False, reason)


def test_excluded_units_get_the_control_payload():
    experiment = config(targeting=[{"attribute": "plan", "op": "exists"}])
    decision = decide(experiment, "u1", {})
    assert (decision.variant.key, decision.variant.payload, decision.reason) == (
        "v0", {"value": "payload-0"}, "targeting")


ATTRIBUTES = {"country": "FR", "age": 30, "score": 2.5, "premium": True, "email": "a@shop.fr",
              "tags": ["vip", "beta"], "nested": {"a": 1}, "nothing": None, "version": "1.10"}


@pytest.mark.parametrize(("attribute", "op", "value", "expected"), [
    ("country", "eq", "FR", True), ("country", "eq", "BE", False),
    ("age", "eq", 30, True), ("age", "eq", "30", False), ("premium", "eq", 1, False),
    ("premium", "eq", True, True), ("age", "eq", True, False),
    ("country", "neq", "BE", True), ("country", "neq", "FR", False),
    ("country", "neq", 3, False), ("missing", "neq", "FR", False),
    ("country", "in", ["FR", "BE"], True), ("country", "in", ["DE"], False),
    ("age", "in", ["30"], False), ("tags", "in", ["vip"], False), ("premium", "in", [1], False),
    ("country", "not_in", ["DE"], True), ("country", "not_in", ["FR"], False),
    ("age", "not_in", ["30"], False), ("tags", "not_in", ["x"], False),
    ("missing", "not_in", ["FR"], False), ("country", "not_in", [], True),
    ("age", "gt", 18, True), ("age", "gt", 30, False), ("age", "gte", 30, True),
    ("age", "lt", 31.5, True), ("age", "lte", 29, False), ("score", "gt", 2, True),
    ("age", "gt", "18", False), ("country", "gt", 1, False), ("premium", "gt", 0, False),
    ("version", "gte", "1.0", True), ("tags", "lt", 3, False), ("nested", "gt", 0, False),
    ("email", "contains", "@shop", True), ("email", "contains", "@other", False),
    ("tags", "contains", "vip", True), ("tags", "contains", "gold", False),
    ("age", "contains", "3", False), ("email", "contains", 3, False),
    ("email", "regex", r"@shop\.(fr|be)$", True), ("email", "regex", r"^b", False),
    ("age", "regex", r"\d+", False), ("tags", "regex", "vip", False),
    ("country", "exists", None, True), ("missing", "exists", None, False),
    ("nothing", "exists", True, False), ("missing", "exists", False, True),
    ("country", "exists", False, False),
    ("missing", "eq", "FR", False), ("missing", "gt", 1, False),
    ("missing", "regex", ".*", False), ("country", "unknown-op", "FR", False),
])
def test_each_targeting_op_including_type_mismatches(attribute, op, value, expected):
    condition = compile_condition({"attribute": attribute, "op": op, "value": value})
    assert condition_holds(condition, ATTRIBUTES) is expected


def test_every_condition_must_hold():
    rules = [{"attribute": "country", "op": "in", "value": ["FR", "BE"]},
             {"attribute": "age", "op": "gte", "value": 18}]
    experiment = config(targeting=rules)
    assert decide(experiment, "u1", {"country": "FR", "age": 40}).in_experiment
    assert decide(experiment, "u1", {"country": "FR", "age": 12}).reason == "targeting"
    assert decide(experiment, "u1", {"country": "FR", "age": "40"}).reason == "targeting"


def test_zero_weight_variants_are_never_assigned():
    experiment = config((0.5, 0.0, 0.5))
    keys = {decide(experiment, unit, {}).variant.key for unit in UNITS[:5000]}
    assert keys == {"v0", "v2"}


def test_a_due_refresh_is_made_once_while_the_other_threads_wait_for_its_result(
        monkeypatch):
    cache = config_cache.ConfigCache(refresh_s=60)
    started = threading.Event()
    calls: list[int] = []

    def slow_fingerprint(_session: Any) -> tuple[int]:
        calls.append(1)
        started.set()
        time.sleep(0.2)  # the other threads arrive while this one re-validates
        return (1,)

    snapshot = config_cache.ConfigSnapshot()
    monkeypatch.setattr(config_cache, "_fingerprint", slow_fingerprint)
    monkeypatch.setattr(config_cache, "load_snapshot", lambda _session: snapshot)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(cache.snapshot, None)
        started.wait(5)
        others = [pool.submit(cache.snapshot, None) for _ in range(7)]
        results = [first.result(), *(future.result() for future in others)]
    assert calls == [1] and all(result is snapshot for result in results)
