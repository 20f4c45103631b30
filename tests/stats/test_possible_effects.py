"""Intervals cut to the effects a metric can take (``stats.compare._within_possible_effects``).

A confidence sequence on a day's few units is wider than any difference two rates can
have; the admin's effects-over-time chart read ±300 points for a conversion rate. The
true effect always lies within the possible range, so the cut keeps the coverage, and 0
is always inside it, so the p-value and the verdict are those of the uncut test.
"""

from __future__ import annotations

import math

import pytest

from stats import ArmSummary, MeanStats, NpsStats, ProportionStats, compare, sequential, summarize


def proportion(n: int, successes: int) -> ArmSummary:
    return summarize(ProportionStats(n=n, successes=successes))


def uncut_half_width(control: ArmSummary, treatment: ArmSummary) -> float:
    """The sequential interval's half width as the test computes it, before the cut."""
    v = control.variance / control.n + treatment.variance / treatment.n
    tau2 = sequential.mixing_variance(control.mean, max(control.variance, treatment.variance),
                                      None)
    return sequential.confidence_sequence_multiplier(v, tau2, 0.05) * math.sqrt(v)


@pytest.mark.parametrize("kind", ["conversion", "friction"])
def test_a_rate_difference_stays_within_plus_or_minus_one(kind):
    control, treatment = proportion(10, 9), proportion(10, 3)
    half = uncut_half_width(control, treatment)
    assert -0.6 - half < -1.0  # the uncut sequence goes below -1
    result = compare(kind, control, treatment, method="sequential")
    assert result.absolute_ci == (-1.0, pytest.approx(-0.6 + half, rel=1e-12))
    assert result.relative_ci is not None and result.relative_ci[0] == -1.0
    assert result.relative_ci[1] > -2 / 3  # the upper bound is the test's own


def test_an_nps_difference_stays_within_plus_or_minus_200_points():
    control = summarize(NpsStats(n=4, promoters=2, detractors=1))
    treatment = summarize(NpsStats(n=3, promoters=1, detractors=2))
    result = compare("nps", control, treatment, method="sequential")
    assert result.absolute_ci == (-200.0, 200.0)


def test_a_count_cannot_fall_by_more_than_all_of_it_but_a_mean_can():
    control = summarize(MeanStats(n=20, sum=40.0, sum_squares=240.0))
    treatment = summarize(MeanStats(n=20, sum=8.0, sum_squares=32.0))
    count = compare("count", control, treatment)
    mean = compare("mean", control, treatment)
    assert mean.relative_ci is not None and mean.relative_ci[0] < -1.0  # values may be < 0
    assert count.relative_ci == (-1.0, mean.relative_ci[1])
    assert count.absolute_ci == mean.absolute_ci  # no bound on a difference of means


def test_the_cut_changes_no_p_value_or_verdict_and_leaves_narrow_intervals_alone():
    control, treatment = proportion(3000, 300), proportion(3000, 360)
    result = compare("conversion", control, treatment, method="frequentist")
    half = 1.959963984540054 * math.sqrt(0.1 * 0.9 / 3000 + 0.12 * 0.88 / 3000)
    assert result.absolute_ci == pytest.approx((0.02 - half, 0.02 + half), rel=1e-9)
    tiny = compare("conversion", proportion(6, 2), proportion(5, 3), method="sequential")
    assert tiny.p_value is not None and tiny.p_value > 0.05 and tiny.verdict == "inconclusive"
