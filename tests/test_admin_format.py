"""How the admin writes means and durations: 4 significant digits (3 for seconds), never in
scientific notation, and an interval's two bounds with the same decimals."""

from __future__ import annotations

from admin import format as fmt


def test_a_mean_effect_keeps_four_significant_digits_without_scientific_notation() -> None:
    assert fmt.effect("mean", 2.41537) == "+2.415"
    assert fmt.effect("mean", -12345.6) == "−12,346"
    assert fmt.effect("mean", 0.000123456) == "+0.0001235"
    assert fmt.effect("mean", 0.0) == "+0.000"


def test_an_interval_writes_both_bounds_with_the_same_decimals() -> None:
    assert fmt.effect_interval("mean", [0.54218, 4.28931]) == "[+0.542, +4.289]"
    assert fmt.effect_interval("ratio", [-15321.4, 2.6]) == "[−15,321, +3]"
    assert fmt.effect_interval("conversion", [0.001, 0.038]) == "[+0.10, +3.80] pts"
    assert fmt.effect_interval("mean", [float("nan"), 1.0]) == "–"


def test_a_mean_estimate_keeps_its_fourth_digit_beside_the_controls() -> None:
    assert [fmt.estimate("mean", v) for v in (8.84, 6.424, 11.01)] == ["8.840", "6.424", "11.01"]
    assert fmt.estimate("mean", 12345.6) == "12,346"  # was '1.235e+04'
    assert fmt.estimate("mean", -0.00123) == "−0.001230"
    assert fmt.estimate("count", 3.0) == "3"


def test_a_duration_interval_writes_both_bounds_with_the_same_decimals() -> None:
    assert fmt.effect_interval_in("quantile", [-6.78, 7.6], "s") == "[−6.78 s, +7.60 s]"
    assert fmt.effect_interval_in("quantile", [-12.0, -5.0], "s") == "[−12.0 s, −5.0 s]"
    assert fmt.effect_interval_in("quantile", [-0.5, 75.0], "s") == "[−0.5 s, +1 min 15 s]"
    assert fmt.effect_interval_in("quantile", [None, 2.0], "s") == "–"
    assert fmt.duration(42.5) == "42.5 s" and fmt.duration(125) == "2 min 5 s"


def test_a_chance_never_reads_as_certainty() -> None:
    assert [fmt.chance(p) for p in (1.0, 0.99996, 0.973, 0.0004, 0.0)] == [
        ">99.9%", ">99.9%", "97.3%", "<0.1%", "<0.1%"]
    assert [fmt.chance(p, 0) for p in (0.996, 0.3, 0.004)] == [">99%", "30%", "<1%"]
    assert fmt.chance(None) == "–"


def test_whole_numbers_use_one_thousands_separator_everywhere() -> None:
    """The units table said '3 038' beside the metrics' '(316 / 3,038)'."""
    assert fmt.number(3038) == fmt.count(3038) == "3,038"
    assert fmt.number(57756.0) == "57,756"


def test_a_period_weighted_rate_says_its_counts_are_raw() -> None:
    """A bandit's 9.81% is weighted by period; 73 / 716 is 10.20%: shown bare, the counts
    contradicted the rate beside them."""
    entry = {"units": 716, "conversions": 73, "estimate": 0.0981}
    assert fmt.counts("conversion", entry) == "(73 / 716)"
    assert fmt.counts("conversion", {**entry, "period_weighted": True}) == (
        "(weighted; raw 73 / 716)")
    assert fmt.counts("mean", {**entry, "period_weighted": True}) == "(n = 716)"


def test_a_risk_is_a_loss_and_carries_no_plus_sign() -> None:
    assert fmt.risk("conversion", 4.2e-8) == "0.00 pts"
    assert fmt.risk("conversion", 0.009) == "0.90 pts"
    assert fmt.risk("mean", 0.01234) == "0.01234"
    assert fmt.risk("conversion", None) == "–"
