"""Bandit statistics (SPEC §13): reference values, reproducibility and a seeded simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from stats import MeanStats, StatsInputError, srm_test
from stats.bandit import (
    Period,
    analyze_bandit,
    bandit_srm,
    floored_weights,
    period_weighted,
    probability_best,
)


def conversions(n: int, k: int) -> MeanStats:
    """0/1 outcomes: sum = sum of squares = conversions."""
    return MeanStats(n, float(k), float(k))


SPEC_PERIODS = [
    Period({"A": 0.5, "B": 0.5}, {"A": conversions(1000, 100), "B": conversions(1000, 120)}),
    Period({"A": 0.2, "B": 0.8}, {"A": conversions(400, 20), "B": conversions(1600, 96)}),
]


def test_spec_check_period_weighted_means_and_variances() -> None:
    estimates, warnings = period_weighted(SPEC_PERIODS)
    assert warnings == []
    assert estimates["A"].mean == pytest.approx(0.075, abs=1e-12)
    assert estimates["B"].mean == pytest.approx(0.09, abs=1e-12)
    assert estimates["A"].variance == pytest.approx(5.228443e-5, abs=1e-6 * 5.228443e-5)
    assert estimates["B"].variance == pytest.approx(3.524444e-5, abs=1e-6 * 3.524444e-5)
    assert (estimates["A"].n, estimates["B"].n) == (1400, 2600)


def test_spec_check_p_best_and_floored_weights() -> None:
    result = analyze_bandit(SPEC_PERIODS, min_weight=0.01, seed=1)
    z = 0.015 / np.sqrt(5.228443e-5 + 3.524444e-5)
    assert z == pytest.approx(1.603303, abs=1e-6)
    assert result.p_best is not None and result.weights is not None
    assert result.p_best["B"] == pytest.approx(sps.norm.cdf(z), abs=0.01)
    assert result.p_best["A"] + result.p_best["B"] == pytest.approx(1.0)
    assert result.weights["A"] == pytest.approx(0.01 + 0.98 * result.p_best["A"], abs=1e-12)
    assert result.weights["A"] == pytest.approx(0.0633, abs=0.01)
    assert result.weights["B"] == pytest.approx(0.9367, abs=0.01)
    exact = floored_weights({"A": 1 - sps.norm.cdf(z), "B": sps.norm.cdf(z)}, min_weight=0.01)
    assert exact["A"] == pytest.approx(0.0633, abs=5e-5)
    assert exact["B"] == pytest.approx(0.9367, abs=5e-5)


def test_p_best_is_exactly_reproducible_with_its_seed() -> None:
    estimates, _ = period_weighted(SPEC_PERIODS)
    first = probability_best(estimates, seed=42)
    assert first == probability_best(estimates, seed=42)
    assert first != probability_best(estimates, seed=43)


def test_decrease_direction_prefers_the_lower_arm() -> None:
    estimates, _ = period_weighted(SPEC_PERIODS)
    down = probability_best(estimates, seed=1, direction="decrease")
    assert down is not None and down["A"] == pytest.approx(sps.norm.cdf(1.603303), abs=0.01)


def test_spec_check_bandit_srm_against_expected_counts() -> None:
    srm, expected = bandit_srm(SPEC_PERIODS)
    assert expected == pytest.approx({"A": 1400.0, "B": 2600.0})
    result = srm_test([1430, 2570], list(expected.values()))
    assert sps.chisquare([1430, 2570], [1400, 2600]).statistic == pytest.approx(0.989011, abs=1e-6)
    assert result.p_value == pytest.approx(0.319984, abs=1e-6)
    assert srm.p_value == pytest.approx(1.0) and not srm.detected  # observed == expected here


def test_weights_are_uniform_when_the_floor_covers_everything() -> None:
    assert floored_weights({"A": 0.9, "B": 0.1, "C": 0.0}, min_weight=0.34) == pytest.approx(
        {"A": 1 / 3, "B": 1 / 3, "C": 1 / 3})
    assert floored_weights({"A": 1.0, "B": 0.0}, min_weight=0.0) == {"A": 1.0, "B": 0.0}


def test_an_arm_without_units_gets_no_p_best_and_no_weights() -> None:
    periods = [Period({"A": 0.5, "B": 0.5}, {"A": conversions(10, 1), "B": conversions(0, 0)})]
    result = analyze_bandit(periods, min_weight=0.01, seed=1)
    assert result.p_best is None and result.weights is None
    assert result.estimates["B"].mean is None
    assert result.warnings


@pytest.mark.parametrize("kwargs,field", [
    ({"min_weight": 1.5, "seed": 1}, "min_weight"),
    ({"min_weight": 0.01, "seed": -1}, "seed"),
    ({"min_weight": 0.01, "seed": 1, "direction": "up"}, "direction"),
])
def test_bad_options_name_their_argument(kwargs: dict, field: str) -> None:
    with pytest.raises(StatsInputError) as error:
        analyze_bandit(SPEC_PERIODS, **kwargs)
    assert error.value.field == field


def test_period_weights_must_name_the_period_arms() -> None:
    with pytest.raises(StatsInputError) as error:
        Period({"A": 1.0}, {"A": conversions(1, 0), "B": conversions(1, 0)})
    assert error.value.field == "weights"


def simulate_bandit(seed: int, rates: np.ndarray, *, periods: int = 8,
                    units_per_period: int = 2_000, min_weight: float = 0.01
                    ) -> tuple[list[Period], dict[str, float]]:
    """A bandit run at the level of sufficient statistics: multinomial split, binomial sums."""
    rng = np.random.default_rng(seed)
    keys = [f"arm{i}" for i in range(len(rates))]
    weights = dict.fromkeys(keys, 1.0 / len(keys))
    history: list[Period] = []
    for p in range(periods):
        n = rng.multinomial(units_per_period, list(weights.values()))
        k = rng.binomial(n, rates)
        history.append(Period(dict(weights), {key: conversions(int(a), int(b))
                                              for key, a, b in zip(keys, n, k, strict=True)}))
        result = analyze_bandit(history, min_weight=min_weight, seed=seed * 100 + p)
        assert result.weights is not None
        weights = result.weights
    return history, weights


def test_a_three_arm_bandit_moves_traffic_to_the_clearly_better_arm() -> None:
    _, weights = simulate_bandit(7, np.array([0.05, 0.05, 0.08]))
    assert weights["arm2"] >= 0.80


def test_period_weighted_interval_covers_the_true_rate_in_200_simulations() -> None:
    rates = np.array([0.05, 0.05, 0.08])
    covered = 0
    for seed in range(200):
        history, _ = simulate_bandit(seed, rates, periods=4)
        estimates, _ = period_weighted(history)
        best = estimates["arm2"]
        assert best.mean is not None and best.variance is not None
        half = 1.959964 * np.sqrt(best.variance)
        covered += best.mean - half <= rates[2] <= best.mean + half
    assert covered >= 0.93 * 200
