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


def msprt_rejects(effect: float, variance: float, tau2: float, alpha: float,
                  rng: np.random.Generator, draws: int = 20_000) -> float:
    """Share of simulated estimates (N(effect, variance): the difference of two arms'
    means) whose always-valid p-value is below alpha — the sequential test read once."""
    estimates = rng.normal(effect, math.sqrt(variance), draws)
    total = variance + tau2
    log_p = 0.5 * math.log(total / variance) - estimates**2 * tau2 / (2 * variance * total)
    return float(np.mean(log_p < math.log(alpha)))


@pytest.mark.parametrize(("kind", "options", "variances"), [
    ("conversion", {"baseline": 0.10, "mde": 0.05}, (0.10 * 0.90, 0.105 * 0.895)),
    ("conversion", {"baseline": 0.02, "mde": 0.10}, (0.02 * 0.98, 0.022 * 0.978)),
    ("mean", {"baseline": 6.4, "mde": 0.05, "baseline_sd": 14.0}, (196.0, 196.0)),
    ("count", {"baseline": 2.0, "mde": 0.05}, (2.0, 2.1)),
])
def test_a_sequential_plan_gives_its_test_the_power_at_the_end(kind, options, variances):
    """The mixture SPRT at the fixed-horizon sample has far less than 80 % power (its
    intervals are wider: valid at every look); the sequential plan's sample gives it 80 %,
    read once at the end (simulated estimates), and one unit fewer per variant does not
    (the plan is the smallest, found here by scanning)."""
    from stats.sequential import mixing_variance

    fixed = sample_size(kind, **options).units_per_variant
    planned = sample_size(kind, design="sequential", **options).units_per_variant
    assert 1.9 < planned / fixed < 2.4
    effect = abs(options["baseline"] * options["mde"])
    tau2 = mixing_variance(options["baseline"], max(variances), options["mde"])
    rng = np.random.default_rng(20261205)
    at_fixed = msprt_rejects(effect, sum(variances) / fixed, tau2, 0.05, rng)
    at_planned = msprt_rejects(effect, sum(variances) / planned, tau2, 0.05, rng)
    assert at_fixed < 0.45
    assert at_planned == pytest.approx(0.80, abs=0.012)  # 20,000 draws: sd 0.003

    def power_at(units: int) -> float:  # the normal approximation, directly
        variance = sum(variances) / units
        total = variance + tau2
        multiplier = math.sqrt(total / tau2 * (2 * math.log(20) + math.log(total / variance)))
        return float(sps.norm.cdf(effect / math.sqrt(variance) - multiplier))

    assert power_at(planned) >= 0.8 > power_at(planned - 1)


def test_the_sequential_design_is_checked_and_stays_within_bounds() -> None:
    with pytest.raises(StatsInputError) as error:
        sample_size("conversion", baseline=0.1, mde=0.1, design="bayesian")  # type: ignore[arg-type]
    assert error.value.field == "design"
    with pytest.raises(StatsInputError) as error:  # fixed horizon: 9.4e9, sequential: more
        sample_size("conversion", baseline=0.1, mde=0.00017, design="sequential")
    assert error.value.field == "mde" and "sequential" in str(error.value)


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
