"""SRM check, sample sizes and multiple-testing corrections against scipy/statsmodels."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import proportion_effectsize

from stats import StatsInputError, adjust_p_values, sample_size, srm_test


def test_srm_5000_vs_5300_is_suspicious_but_under_the_0001_threshold() -> None:
    # chi2 = 2 * 150^2 / 5150 = 8.74, p = 0.0031: the brief expected p < 0.001, the maths does not.
    result = srm_test([5000, 5300], [0.5, 0.5])
    assert result.p_value == pytest.approx(sps.chisquare([5000, 5300]).pvalue, rel=1e-12)
    assert result.p_value == pytest.approx(0.0031167, abs=1e-6)
    assert not result.detected


def test_srm_flags_5000_vs_5400() -> None:
    result = srm_test([5000, 5400], [0.5, 0.5])
    assert result.p_value < 0.001
    assert result.detected


def test_srm_accepts_5000_vs_5060() -> None:
    result = srm_test([5000, 5060], [50, 50])
    assert result.p_value == pytest.approx(sps.chisquare([5000, 5060]).pvalue)
    assert not result.detected


def test_srm_normalises_uneven_weights() -> None:
    result = srm_test([2000, 1000, 1000], [2, 1, 1])
    assert result.p_value == pytest.approx(1.0)


def test_srm_without_units_is_undecided() -> None:
    assert srm_test([0, 0], [0.5, 0.5]) == srm_test([10], [1.0])
    assert srm_test([0, 0], [0.5, 0.5]).p_value is None
    assert not srm_test([0, 0], [0.5, 0.5]).detected


def test_srm_units_in_a_zero_weight_variant_is_a_mismatch() -> None:
    result = srm_test([100, 3, 100], [0.5, 0.0, 0.5])
    assert result.p_value == 0.0 and result.detected


@pytest.mark.parametrize(
    "units,weights,field",
    [
        ([1, 2], [1.0], "weights"),
        ([1, 2], [1.0, -1.0], "weights[1]"),
        ([1, 2], [1.0, float("nan")], "weights[1]"),
        ([1, 2], [0, 0], "weights"),
        ([1, -2], [1, 1], "units[1]"),
    ],
)
def test_srm_rejects_bad_input(units: list[int], weights: list[float], field: str) -> None:
    with pytest.raises(StatsInputError) as error:
        srm_test(units, weights)
    assert error.value.field == field


@pytest.fixture
def no_gc_collect(monkeypatch: pytest.MonkeyPatch) -> None:
    """multipletests runs gc.collect() on every call; skip it to keep the suite fast."""
    monkeypatch.setattr(gc, "collect", lambda *args: 0)


def _random_p_values(seed: int) -> list[float]:
    """Varied p-values with ties and tiny values."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, int(rng.integers(1, 25))) ** 3
    if seed % 3 == 0:
        p[: len(p) // 2] = p[0]
    return [float(x) for x in p]


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("method,name", [("holm", "holm"), ("bh", "fdr_bh")])
@pytest.mark.usefixtures("no_gc_collect")
def test_corrections_equal_multipletests(seed: int, method: str, name: str) -> None:
    p = _random_p_values(seed)
    expected = multipletests(p, method=name)[1]
    assert adjust_p_values(p, method) == pytest.approx(tuple(expected), abs=1e-15)  # type: ignore[arg-type]


@pytest.mark.usefixtures("no_gc_collect")
def test_corrections_skip_missing_p_values() -> None:
    p = [0.01, None, 0.04, 0.03, None]
    holm = adjust_p_values(p, "holm")
    assert holm[1] is None and holm[4] is None
    assert [holm[i] for i in (0, 2, 3)] == pytest.approx(
        list(multipletests([0.01, 0.04, 0.03], method="holm")[1])
    )
    assert adjust_p_values(p, "none") == tuple(p)
    assert adjust_p_values([None], "bh") == (None,)


def test_unknown_correction_is_rejected() -> None:
    with pytest.raises(StatsInputError, match=r"^correction:"):
        adjust_p_values([0.1], "bonferroni")  # type: ignore[arg-type]


def test_conversion_sample_size_matches_statsmodels() -> None:
    result = sample_size(
        "conversion", baseline=0.10, mde=0.05, alpha=0.05, power=0.8, daily_units=2000
    )
    effect = proportion_effectsize(0.105, 0.10)
    expected = NormalIndPower().solve_power(effect_size=effect, alpha=0.05, power=0.8, ratio=1.0)
    assert result.units_per_variant == math.ceil(expected)
    assert result.total_units == 2 * math.ceil(expected)
    assert result.days == math.ceil(result.total_units / 2000)
    assert result.units_per_variant == 57756


@pytest.mark.parametrize(
    "baseline,mde,alpha,power,variants",
    [
        (0.02, 0.1, 0.05, 0.8, 2),
        (0.3, -0.05, 0.01, 0.9, 3),
        (0.5, 0.02, 0.1, 0.8, 4),
    ],
)
def test_conversion_sample_sizes_follow_statsmodels(
    baseline: float, mde: float, alpha: float, power: float, variants: int
) -> None:
    result = sample_size(
        "conversion", baseline=baseline, mde=mde, alpha=alpha, power=power, variants=variants
    )
    effect = abs(proportion_effectsize(baseline * (1 + mde), baseline))
    expected = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power)
    assert result.units_per_variant == math.ceil(expected)
    assert result.total_units == variants * result.units_per_variant
    assert result.days is None


def test_mean_sample_size_uses_the_t_test() -> None:
    result = sample_size("mean", baseline=50.0, mde=0.04, baseline_sd=20.0, daily_units=300)
    expected = TTestIndPower().solve_power(effect_size=50 * 0.04 / 20, alpha=0.05, power=0.8)
    assert result.units_per_variant == math.ceil(expected)
    assert result.days == math.ceil(2 * math.ceil(expected) / 300)


def test_count_sample_size_defaults_to_poisson_sd() -> None:
    result = sample_size("count", baseline=4.0, mde=0.1)
    expected = TTestIndPower().solve_power(effect_size=0.4 / 2.0, alpha=0.05, power=0.8)
    assert result.units_per_variant == math.ceil(expected)


@pytest.mark.parametrize(
    "kind,options,field",
    [
        ("conversion", {"baseline": 1.2, "mde": 0.1}, "baseline"),
        ("conversion", {"baseline": 0.95, "mde": 0.1}, "mde"),
        ("conversion", {"baseline": 0.1, "mde": 0}, "mde"),
        ("conversion", {"baseline": 0.1, "mde": 0.1, "alpha": 1.5}, "alpha"),
        ("conversion", {"baseline": 0.1, "mde": 0.1, "power": 0}, "power"),
        ("conversion", {"baseline": 0.1, "mde": 0.1, "variants": 1}, "variants"),
        ("conversion", {"baseline": 0.1, "mde": 0.1, "daily_units": 0}, "daily_units"),
        ("mean", {"baseline": 10.0, "mde": 0.1}, "baseline_sd"),
        ("mean", {"baseline": 10.0, "mde": 0.1, "baseline_sd": -1}, "baseline_sd"),
        ("mean", {"baseline": 0.0, "mde": 0.1, "baseline_sd": 1}, "baseline"),
        ("mean", {"baseline": float("inf"), "mde": 0.1, "baseline_sd": 1}, "baseline"),
        ("revenue", {"baseline": 0.1, "mde": 0.1}, "kind"),
    ],
)
def test_sample_size_rejects_bad_input(kind: str, options: dict[str, float], field: str) -> None:
    with pytest.raises(StatsInputError) as error:
        sample_size(kind, **options)  # type: ignore[arg-type]
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")
