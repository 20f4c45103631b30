"""How the admin writes effects of means: 4 significant digits, never in scientific
notation, and an interval's two bounds with the same decimals."""

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
