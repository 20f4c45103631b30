"""One level against the rest of its dimension, Bonferroni over the family (SPEC §11)."""

from __future__ import annotations

import pytest

from stats.heterogeneity import bonferroni, level_vs_rest


def _effect_and_variance(n: int, control: float, treatment: float) -> tuple[float, float]:
    return treatment - control, control * (1 - control) / n + treatment * (1 - treatment) / n


def test_spec_reference_case_to_1e_6() -> None:
    effect, variance = _effect_and_variance(5_000, 0.10, 0.13)
    rest, rest_variance = _effect_and_variance(20_000, 0.10, 0.105)
    test = level_vs_rest(effect=effect, variance=variance, rest_effect=rest,
                         rest_variance=rest_variance)
    assert test.statistic == pytest.approx(3.54196, abs=1e-5)
    assert test.p_value == pytest.approx(3.97166e-4, abs=1e-6)
    assert test.p_value == pytest.approx(3.97166e-4, rel=1e-5)
    adjusted, detected = bonferroni([test.p_value, 0.5, 0.9, None, 0.02, 0.3, 0.01])
    assert adjusted[0] == pytest.approx(2.38300e-3, rel=1e-5)
    assert adjusted[3] is None and adjusted[2] == 1.0
    assert detected == (True, False, False, False, False, False, False)


def test_no_variance_gives_no_test() -> None:
    test = level_vs_rest(effect=0.1, variance=0.0, rest_effect=0.0, rest_variance=0.0)
    assert (test.statistic, test.p_value) == (None, None)
