"""Chance to win and expected loss: symmetry, strong evidence, Monte Carlo references."""

from __future__ import annotations

import numpy as np
import pytest

from stats import MeanStats, ProportionStats, analyze_variants, compare, summarize
from stats.bayesian import beta_comparison, normal_chance_to_win, normal_expected_loss
from tests.stats.simulate import two_arms


def _conversion(control: tuple[int, int], treatment: tuple[int, int], **options):  # type: ignore[no-untyped-def]
    """The Bayesian comparison of two (n, successes) arms."""
    options.setdefault("method", "bayesian")
    return compare(
        "conversion",
        summarize(ProportionStats(*control)),
        summarize(ProportionStats(*treatment)),
        **options,
    )


def test_identical_arms_have_even_chance() -> None:
    comparison = _conversion((5000, 500), (5000, 500))
    assert comparison.chance_to_win == pytest.approx(0.5, abs=0.01)


def test_clear_winner_has_high_chance_to_win() -> None:
    comparison = _conversion((5000, 500), (5000, 650))
    assert comparison.chance_to_win > 0.99
    assert comparison.expected_loss < 1e-6


def test_decrease_direction_flips_chance_to_win() -> None:
    up = _conversion((5000, 500), (5000, 650), direction="increase")
    down = _conversion((5000, 500), (5000, 650), direction="decrease")
    assert down.chance_to_win == pytest.approx(1 - up.chance_to_win, abs=1e-12)
    assert down.expected_loss == pytest.approx(0.03, abs=0.002)


@pytest.mark.parametrize(
    "control,treatment",
    [((50, 5), (50, 3)), ((2000, 200), (2000, 215)), ((300, 0), (280, 2)), ((40, 39), (45, 45))],
)
@pytest.mark.parametrize("direction", ["increase", "decrease"])
def test_beta_quadrature_matches_monte_carlo(
    control: tuple[int, int], treatment: tuple[int, int], direction: str
) -> None:
    rng = np.random.default_rng(9)
    draws = 2_000_000
    c = rng.beta(1 + control[1], 1 + control[0] - control[1], draws)
    t = rng.beta(1 + treatment[1], 1 + treatment[0] - treatment[1], draws)
    good = t - c if direction == "increase" else c - t
    ctw, loss = beta_comparison(
        (control[1], control[0]),
        (treatment[1], treatment[0]),
        direction,  # type: ignore[arg-type]
    )
    assert ctw == pytest.approx(np.mean(good > 0), abs=0.002)
    assert loss == pytest.approx(np.mean(np.maximum(-good, 0)), rel=0.02, abs=1e-6)


def test_normal_loss_matches_monte_carlo() -> None:
    rng = np.random.default_rng(10)
    draws = rng.normal(0.3, 0.5, 2_000_000)
    assert normal_chance_to_win(0.3, 0.5, "increase") == pytest.approx(
        np.mean(draws > 0), abs=0.002
    )
    assert normal_expected_loss(0.3, 0.5, "increase") == pytest.approx(
        np.mean(np.maximum(-draws, 0)), rel=0.01
    )
    assert normal_expected_loss(0.3, 0.5, "decrease") == pytest.approx(
        np.mean(np.maximum(draws, 0)), rel=0.01
    )


def test_bayesian_method_reports_posterior_tail_probability_and_credible_interval() -> None:
    result = analyze_variants(
        "conversion",
        two_arms(ProportionStats(5000, 500), ProportionStats(5000, 650)),
        method="bayesian",
    )
    (comparison,) = result.comparisons
    assert comparison.p_value is None and comparison.adjusted_p_value is None
    assert comparison.chance_to_win > 0.95
    assert comparison.significant and comparison.verdict == "better"
    low, high = comparison.absolute_ci
    assert low < 0.03 < high


def test_bayesian_method_for_means_uses_the_normal_posterior() -> None:
    result = analyze_variants(
        "mean",
        two_arms(MeanStats(100, 1000.0, 10400.0), MeanStats(100, 1100.0, 12500.0)),
        method="bayesian",
    )
    (comparison,) = result.comparisons
    se = np.sqrt(4 / 99 * 100 / 100 + 400 / 99 / 100 * 100 / 100)
    assert comparison.chance_to_win == pytest.approx(normal_chance_to_win(1.0, se, "increase"))
    assert comparison.p_value is None
    assert comparison.absolute_ci == pytest.approx((1.0 - 1.959964 * se, 1.0 + 1.959964 * se))


def test_results_are_deterministic() -> None:
    first = _conversion((1234, 117), (1250, 140), method="bayesian")
    second = _conversion((1234, 117), (1250, 140), method="bayesian")
    assert first == second
