"""Entry point behaviour: verdicts, corrections, degenerate data, validation, JSON safety."""

from __future__ import annotations

import dataclasses
import json

import pytest

from stats import (
    Comparison,
    CupedStats,
    MeanStats,
    NpsStats,
    ProportionStats,
    RatioStats,
    StatsInputError,
    VariantInput,
    analyze_variants,
    apply_correction,
    compare,
    decide_verdict,
    summarize,
    variant_from_dict,
)
from tests.stats.simulate import two_arms


def _json(result: object) -> str:
    """Serialise like the API does; fails on NaN/inf."""
    return json.dumps(dataclasses.asdict(result), allow_nan=False)  # type: ignore[call-overload]


def test_report_fields_serialise_as_in_the_spec() -> None:
    result = analyze_variants(
        "conversion",
        two_arms(ProportionStats(5012, 506), ProportionStats(4988, 566)),
        weights=[0.5, 0.5],
    )
    body = json.loads(_json(result))
    assert body["variants"][0] == {
        "variant": "control",
        "units": 5012,
        "estimate": pytest.approx(506 / 5012),
        "ci": [pytest.approx(0.0926170044), pytest.approx(0.1092983986)],
    }
    comparison = body["comparisons"][0]
    for key in (
        "variant",
        "absolute_effect",
        "absolute_ci",
        "relative_effect",
        "relative_ci",
        "p_value",
        "adjusted_p_value",
        "chance_to_win",
        "expected_loss",
        "significant",
        "verdict",
    ):
        assert key in comparison
    assert comparison["verdict"] == "better"
    assert body["srm"] == {"p_value": pytest.approx(0.81033, abs=1e-5), "detected": False}


@pytest.mark.parametrize(
    "significant,effect,ci,direction,mde,verdict",
    [
        (True, 0.1, (0.05, 0.15), "increase", None, "better"),
        (True, -0.1, (-0.15, -0.05), "increase", None, "worse"),
        (True, -0.1, (-0.15, -0.05), "decrease", None, "better"),
        (True, 0.1, (0.05, 0.15), "decrease", None, "worse"),
        (False, 0.001, (-0.01, 0.02), "increase", 0.05, "flat"),
        (False, 0.001, (-0.01, 0.06), "increase", 0.05, "inconclusive"),
        (False, 0.001, (-0.01, 0.02), "increase", None, "inconclusive"),
        (False, 0.001, None, "increase", 0.05, "inconclusive"),
        (True, 0.0, (-0.01, 0.01), "increase", 0.05, "inconclusive"),
    ],
)
def test_verdict_rule(
    significant: bool,
    effect: float,
    ci: tuple[float, float] | None,
    direction: str,
    mde: float | None,
    verdict: str,
) -> None:
    assert (
        decide_verdict(
            significant=significant,
            absolute_effect=effect,
            relative_ci=ci,
            direction=direction,  # type: ignore[arg-type]
            mde=mde,
        )
        == verdict
    )


def test_a_tight_null_result_is_flat() -> None:
    (comparison,) = analyze_variants(
        "conversion",
        two_arms(ProportionStats(200_000, 20_000), ProportionStats(200_000, 20_050)),
        mde=0.05,
    ).comparisons
    assert not comparison.significant
    assert comparison.verdict == "flat"


def test_friction_going_up_is_worse_when_lower_is_better() -> None:
    (comparison,) = analyze_variants(
        "friction",
        two_arms(ProportionStats(5000, 200), ProportionStats(5000, 320)),
        direction="decrease",
    ).comparisons
    assert comparison.verdict == "worse"
    assert comparison.chance_to_win is None
    bayesian = analyze_variants(
        "friction",
        two_arms(ProportionStats(5000, 200), ProportionStats(5000, 320)),
        direction="decrease",
        method="bayesian",
    ).comparisons[0]
    assert bayesian.chance_to_win < 0.01 and bayesian.verdict == "worse"


def test_holm_across_treatments_updates_significance() -> None:
    variants = [
        VariantInput("control", True, ProportionStats(4000, 400)),
        VariantInput("a", False, ProportionStats(4000, 455)),
        VariantInput("b", False, ProportionStats(4000, 402)),
        VariantInput("c", False, ProportionStats(4000, 398)),
    ]
    plain = analyze_variants("conversion", variants, correction="none").comparisons
    holm = analyze_variants("conversion", variants, correction="holm").comparisons
    assert plain[0].significant and plain[0].p_value < 0.05
    assert holm[0].adjusted_p_value == pytest.approx(min(1.0, 3 * plain[0].p_value))
    assert not holm[0].significant
    assert holm[0].verdict == "inconclusive"
    assert [c.p_value for c in holm] == [c.p_value for c in plain]


def test_joint_correction_across_metrics_matches_pooled_holm() -> None:
    first = analyze_variants(
        "conversion",
        two_arms(ProportionStats(4000, 400), ProportionStats(4000, 460)),
        correction="none",
    ).comparisons
    second = analyze_variants(
        "mean",
        two_arms(MeanStats(500, 5000.0, 60000.0), MeanStats(500, 5200.0, 64000.0)),
        correction="none",
        direction="decrease",
    ).comparisons
    joint = apply_correction(first + second, "bh")
    assert len(joint) == 2
    assert joint[0].adjusted_p_value >= joint[0].p_value
    assert joint[1].direction == "decrease"
    with pytest.raises(StatsInputError, match=r"^correction:"):
        apply_correction(joint, "sidak")  # type: ignore[arg-type]


def test_sequential_p_value_never_rises_between_looks() -> None:
    variants = two_arms(ProportionStats(3000, 300), ProportionStats(3000, 360))
    first = analyze_variants("conversion", variants, method="sequential").comparisons[0]
    later = analyze_variants(
        "conversion",
        two_arms(ProportionStats(6000, 600), ProportionStats(6000, 610)),
        method="sequential",
        previous_p_values={"treatment": first.p_value},
    ).comparisons[0]
    assert later.p_value == first.p_value
    assert first.absolute_ci[0] < 0.02 < first.absolute_ci[1]


def test_sequential_interval_is_wider_than_fixed_horizon() -> None:
    variants = two_arms(MeanStats(800, 8000.0, 100000.0), MeanStats(800, 8300.0, 110000.0))
    fixed = analyze_variants("mean", variants).comparisons[0]
    seq = analyze_variants("mean", variants, method="sequential", mde=0.05).comparisons[0]
    assert seq.absolute_ci[1] - seq.absolute_ci[0] > fixed.absolute_ci[1] - fixed.absolute_ci[0]
    assert seq.relative_ci[1] - seq.relative_ci[0] > fixed.relative_ci[1] - fixed.relative_ci[0]
    assert seq.p_value > fixed.p_value


def test_sequential_mixing_uses_the_unit_sd_when_control_is_zero() -> None:
    variants = two_arms(MeanStats(400, 0.0, 400.0), MeanStats(400, 60.0, 420.0))
    (comparison,) = analyze_variants("mean", variants, method="sequential").comparisons
    assert comparison.p_value is not None
    assert comparison.relative_ci is None
    assert "control estimate is 0: no relative effect" in comparison.warnings


def test_cuped_on_conversions_with_a_pre_period_conversion() -> None:
    plain = two_arms(ProportionStats(1000, 100), ProportionStats(1000, 130))
    with_pre = [
        VariantInput("control", True, ProportionStats(1000, 100), CupedStats(90.0, 90.0, 60.0)),
        VariantInput("treatment", False, ProportionStats(1000, 130), CupedStats(95.0, 95.0, 70.0)),
    ]
    raw = analyze_variants("conversion", plain).comparisons[0]
    adjusted = analyze_variants("conversion", with_pre).comparisons[0]
    assert (
        adjusted.absolute_ci[1] - adjusted.absolute_ci[0] < raw.absolute_ci[1] - raw.absolute_ci[0]
    )
    assert adjusted.chance_to_win is None
    bayesian = analyze_variants("conversion", with_pre, method="bayesian").comparisons[0]
    assert bayesian.chance_to_win is not None and bayesian.p_value is None


def test_cuped_without_covariate_variance_falls_back_with_a_warning() -> None:
    variants = [
        VariantInput("control", True, MeanStats(10, 10.0, 20.0), CupedStats(10.0, 10.0, 10.0)),
        VariantInput("treatment", False, MeanStats(10, 12.0, 30.0), CupedStats(10.0, 10.0, 12.0)),
    ]
    result = analyze_variants("mean", variants)
    assert result.warnings == ("cuped: covariate has no variance, results are unadjusted",)
    assert result.variants[1].estimate == pytest.approx(1.2)


def test_cuped_with_an_empty_or_single_unit_arm() -> None:
    variants = [
        VariantInput("control", True, MeanStats(0, 0.0, 0.0), CupedStats(0.0, 0.0, 0.0)),
        VariantInput("one", False, MeanStats(1, 3.0, 9.0), CupedStats(1.0, 1.0, 3.0)),
        VariantInput("many", False, MeanStats(3, 6.0, 14.0), CupedStats(3.0, 5.0, 8.0)),
    ]
    result = analyze_variants("mean", variants)
    assert result.variants[0].estimate is None
    assert result.comparisons[0].warnings == ("control has no units: no test",)


@pytest.mark.parametrize(
    "kind,control,treatment,warning",
    [
        (
            "conversion",
            ProportionStats(0, 0),
            ProportionStats(10, 1),
            "control has no units: no test",
        ),
        (
            "conversion",
            ProportionStats(10, 0),
            ProportionStats(10, 0),
            "control estimate is 0: no relative effect",
        ),
        (
            "mean",
            MeanStats(5, 10.0, 20.0),
            MeanStats(0, 0.0, 0.0),
            "treatment has no units: no test",
        ),
        (
            "mean",
            MeanStats(1, 10.0, 100.0),
            MeanStats(5, 10.0, 30.0),
            "control has fewer than 2 units: no test",
        ),
        (
            "mean",
            MeanStats(4, 8.0, 16.0),
            MeanStats(4, 12.0, 36.0),
            "zero variance in both variants: no test",
        ),
        (
            "ratio",
            RatioStats(3, 1.0, 1.0, 0.0, 0.0, 0.0),
            RatioStats(3, 3.0, 5.0, 3.0, 5.0, 5.0),
            "control estimate is undefined (zero denominator or overflow): no test",
        ),
        (
            "ratio",
            RatioStats(3, 3.0, 5.0, 3.0, 5.0, 5.0),
            RatioStats(1, 3.0, 9.0, 1.0, 1.0, 3.0),
            "treatment has fewer than 2 units: no test",
        ),
        ("nps", NpsStats(0, 0, 0), NpsStats(10, 5, 2), "control has no units: no test"),
    ],
)
@pytest.mark.parametrize("method", ["frequentist", "bayesian", "sequential"])
def test_degenerate_inputs_give_warnings_and_no_tests(
    kind: str, control: object, treatment: object, warning: str, method: str
) -> None:
    result = analyze_variants(kind, two_arms(control, treatment), method=method)  # type: ignore[arg-type]
    (comparison,) = result.comparisons
    assert warning in comparison.warnings
    assert comparison.absolute_ci is None or "relative" in warning
    assert not comparison.significant
    _json(result)


@pytest.mark.parametrize("method", ["frequentist", "bayesian", "sequential"])
def test_nps_in_points_never_warns_of_an_unbounded_ratio(method: str) -> None:
    """A negative NPS near 0 has a control interval through 0, but NPS has no ratio to bound."""
    (comparison,) = analyze_variants(
        "nps", two_arms(NpsStats(610, 150, 203), NpsStats(583, 150, 179)), method=method
    ).comparisons
    assert comparison.relative_effect is None and comparison.relative_ci is None
    assert comparison.absolute_ci is not None
    assert not any("unbounded" in warning for warning in comparison.warnings)


@pytest.mark.parametrize("method", ["frequentist", "sequential"])
def test_all_converted_arms_have_no_test(method: str) -> None:
    (comparison,) = analyze_variants(
        "conversion", two_arms(ProportionStats(10, 10), ProportionStats(10, 10)), method=method
    ).comparisons
    assert "zero variance in both variants: no test" in comparison.warnings
    assert comparison.absolute_ci is None and comparison.p_value is None


def test_all_converted_arms_still_get_a_bayesian_summary() -> None:
    (comparison,) = analyze_variants(
        "conversion", two_arms(ProportionStats(10, 10), ProportionStats(10, 10)), method="bayesian"
    ).comparisons
    assert comparison.p_value is None
    assert comparison.chance_to_win == pytest.approx(0.5)
    low, high = comparison.absolute_ci  # the Beta(11, 1) posteriors still have a spread
    assert low == pytest.approx(-high, rel=1e-3) and 0.0 < high < 0.3


def test_a_single_variant_has_no_comparisons() -> None:
    result = analyze_variants(
        "mean", [VariantInput("control", True, MeanStats(3, 3.0, 5.0))], weights=[1.0]
    )
    assert result.comparisons == ()
    assert result.warnings == ("only one variant: no comparisons",)
    assert result.srm is not None and result.srm.p_value is None


def test_srm_detection_is_reported_as_a_warning() -> None:
    result = analyze_variants(
        "conversion",
        two_arms(ProportionStats(5000, 500), ProportionStats(5600, 560)),
        weights=[0.5, 0.5],
    )
    assert result.srm.detected
    assert result.warnings[0].startswith("srm: sample ratio mismatch detected")


@pytest.mark.parametrize(
    "kind,control,treatment,warning",
    [
        (
            "mean",
            MeanStats(2, 1e200, 1e308),
            MeanStats(2, -1e200, 1e308),
            "control variance is undefined (overflow): no test",
        ),
        (
            "mean",
            MeanStats(2, 1e-300, 1e-300),
            MeanStats(2, 2e-300, 3e-300),
            "numeric overflow: no test",
        ),
        (
            "ratio",
            RatioStats(2, 1e154, 1e308, 1e-300, 1e-300, 1e-150),
            RatioStats(2, 1e154, 1e308, 2e-300, 3e-300, 1e-150),
            "control estimate is undefined (zero denominator or overflow): no test",
        ),
    ],
)
@pytest.mark.parametrize("method", ["frequentist", "bayesian", "sequential"])
def test_absurd_magnitudes_never_raise_or_leak_nan(
    kind: str, control: object, treatment: object, warning: str, method: str
) -> None:
    result = analyze_variants(kind, two_arms(control, treatment), method=method)  # type: ignore[arg-type]
    # Normal posteriors never divide by the vanishing standard error, so no overflow there.
    tiny = method == "bayesian" and warning == "numeric overflow: no test"
    assert tiny or warning in result.comparisons[0].warnings
    _json(result)


@pytest.mark.parametrize(
    "build,field",
    [
        (lambda: ProportionStats(10, 11), "successes"),
        (lambda: ProportionStats(-1, 0), "n"),
        (lambda: ProportionStats(10.5, 1), "n"),
        (lambda: ProportionStats(True, 1), "n"),
        (lambda: MeanStats(10, 10.0, 5.0), "sum_squares"),
        (lambda: MeanStats(10, float("nan"), 5.0), "sum"),
        (lambda: MeanStats(10, "1", 5.0), "sum"),
        (lambda: NpsStats(10, 11, 0), "promoters"),
        (lambda: NpsStats(10, 6, 5), "detractors"),
        (lambda: NpsStats(10, 6, -1), "detractors"),
        (lambda: RatioStats(4, 10.0, 10.0, 8.0, 18.0, 22.0), "num_sum_squares"),
        (lambda: RatioStats(4, 10.0, 30.0, 8.0, 10.0, 22.0), "den_sum_squares"),
        (lambda: RatioStats(4, 10.0, 30.0, 8.0, 18.0, 40.0), "num_den_sum"),
        (lambda: CupedStats(1.0, float("inf"), 1.0), "pre_sum_squares"),
        (lambda: VariantInput("", True, MeanStats(1, 1.0, 1.0)), "key"),
        (
            lambda: VariantInput("a", True, MeanStats(4, 4.0, 4.0), CupedStats(8.0, 4.0, 4.0)),
            "pre_sum_squares",
        ),
        (
            lambda: VariantInput("a", True, MeanStats(4, 4.0, 6.0), CupedStats(4.0, 6.0, 50.0)),
            "cross_sum",
        ),
        (lambda: VariantInput("a", True, NpsStats(4, 1, 1), CupedStats(4.0, 6.0, 5.0)), "cuped"),
    ],
)
def test_invalid_records_name_the_field(build, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StatsInputError) as error:
        build()
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")
    assert isinstance(error.value, ValueError)


def _ok_variants() -> list[VariantInput]:
    return two_arms(MeanStats(3, 3.0, 5.0), MeanStats(3, 3.0, 5.0))


@pytest.mark.parametrize(
    "kind,variants,options,field",
    [
        ("mean", [], {}, "variants"),
        ("mean", "ab", {}, "variants"),
        ("mean", [object()], {}, "variants[0]"),
        ("conversion", _ok_variants(), {}, "variants[0]"),
        ("mean", [VariantInput("a", True, MeanStats(1, 1.0, 1.0))] * 2, {}, "variants[1].key"),
        ("mean", [VariantInput("a", False, MeanStats(1, 1.0, 1.0))], {}, "variants"),
        ("mean", _ok_variants(), {"alpha": 0}, "alpha"),
        ("mean", _ok_variants(), {"alpha": True}, "alpha"),
        ("mean", _ok_variants(), {"method": "magic"}, "method"),
        ("mean", _ok_variants(), {"direction": "up"}, "direction"),
        ("mean", _ok_variants(), {"mde": -0.1}, "mde"),
        ("mean", _ok_variants(), {"correction": "bonferroni"}, "correction"),
        ("median", _ok_variants(), {}, "kind"),
        ("mean", _ok_variants(), {"weights": [1.0]}, "weights"),
        (
            "mean",
            [
                VariantInput("a", True, MeanStats(3, 3.0, 5.0), CupedStats(3.0, 5.0, 5.0)),
                VariantInput("b", False, MeanStats(3, 3.0, 5.0)),
            ],
            {},
            "variants[1].cuped",
        ),
    ],
)
def test_invalid_analysis_input_names_the_field(
    kind: str, variants: object, options: dict[str, object], field: str
) -> None:
    with pytest.raises(StatsInputError) as error:
        analyze_variants(kind, variants, **options)  # type: ignore[arg-type]
    assert error.value.field == field


def test_variant_from_dict_reads_the_calculator_body() -> None:
    variant = variant_from_dict(
        "conversion", {"key": "control", "is_control": True, "n": 1000, "conversions": 100}, index=0
    )
    assert variant == VariantInput("control", True, ProportionStats(1000, 100))
    ratio = variant_from_dict(
        "ratio",
        {
            "key": "b",
            "n": 4,
            "num_sum": 10.0,
            "num_sum_squares": 30.0,
            "den_sum": 8.0,
            "den_sum_squares": 18.0,
            "num_den_sum": 23.0,
        },
        index=1,
    )
    assert not ratio.is_control
    cuped = variant_from_dict(
        "mean",
        {
            "key": "b",
            "n": 4,
            "sum": 4.0,
            "sum_squares": 6.0,
            "pre_sum": 4.0,
            "pre_sum_squares": 6.0,
            "cross_sum": 5.0,
        },
        index=1,
    )
    assert cuped.cuped == CupedStats(4.0, 6.0, 5.0)


@pytest.mark.parametrize(
    "kind,data,field",
    [
        ("conversion", {"key": "a", "n": 10, "conversions": 11}, "variants[2].conversions"),
        ("conversion", {"key": "a", "n": 10}, "variants[2].conversions"),
        ("conversion", {"n": 10, "conversions": 1}, "variants[2].key"),
        ("nps", {"key": "a", "n": 10, "promoters": 8, "detractors": 8}, "variants[2].detractors"),
        (
            "mean",
            {"key": "a", "n": 2, "sum": 2.0, "sum_squares": 2.0, "pre_sum": 1.0},
            "variants[2].pre_sum_squares",
        ),
        ("mean", [1, 2], "variants[2]"),
        ("median", {}, "kind"),
    ],
)
def test_variant_from_dict_names_the_json_field(kind: str, data: object, field: str) -> None:
    with pytest.raises(StatsInputError) as error:
        variant_from_dict(kind, data, index=2)  # type: ignore[arg-type]
    assert error.value.field == field


def test_comparison_is_frozen() -> None:
    comparison = compare(
        "mean", summarize(MeanStats(3, 3.0, 5.0)), summarize(MeanStats(3, 4.0, 8.0))
    )
    assert isinstance(comparison, Comparison)
    with pytest.raises(dataclasses.FrozenInstanceError):
        comparison.verdict = "better"  # type: ignore[misc]


def test_intervals_with_a_non_finite_end_become_none() -> None:
    from stats._numeric import finite, finite_pair

    assert finite_pair(float("nan"), 1.0) is None
    assert finite_pair(0.0, float("inf")) is None
    assert finite_pair(0.0, 1.0) == (0.0, 1.0)
    assert finite(None) is None
