"""Standalone calculators (SPEC §6): the same numbers as statsmodels/scipy, 422 naming fields."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

ANALYZE = "/api/v1/stats/analyze"
POWER = "/api/v1/stats/power"


def conversion_body(**overrides):
    body = {"kind": "conversion", "method": "frequentist", "alpha": 0.05, "correction": "none",
            "variants": [{"key": "control", "is_control": True, "n": 1000, "conversions": 100},
                         {"key": "b", "n": 1000, "conversions": 130}]}
    return {**body, **overrides}


def fields(response):
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["error"]["code"] == "validation_error"
    return [detail["field"] for detail in body["error"]["details"]]


def test_conversion_comparison_is_the_unpooled_wald_z_test(client, client_headers):
    response = client.post(ANALYZE, json=conversion_body(), headers=client_headers)
    assert response.status_code == 200
    comparison = response.get_json()["comparisons"][0]
    p1, p2 = 0.10, 0.13
    se = math.sqrt(p1 * (1 - p1) / 1000 + p2 * (1 - p2) / 1000)
    z = (p2 - p1) / se
    assert comparison["absolute_effect"] == pytest.approx(0.03)
    assert comparison["p_value"] == pytest.approx(2 * sps.norm.sf(z))
    half = sps.norm.ppf(0.975) * se
    assert comparison["absolute_ci"] == pytest.approx([0.03 - half, 0.03 + half])
    assert comparison["relative_effect"] == pytest.approx(0.3)
    assert comparison["verdict"] == "better" and comparison["significant"] is True
    assert response.get_json()["srm"] is None


def test_mean_comparison_is_welchs_t_test(client, client_headers):
    variants = [{"key": "a", "is_control": True, "n": 200, "sum": 1000.0, "sum_squares": 7000.0},
                {"key": "b", "n": 150, "sum": 900.0, "sum_squares": 7200.0}]
    response = client.post(ANALYZE, json={"kind": "mean", "variants": variants},
                           headers=client_headers)
    comparison = response.get_json()["comparisons"][0]

    def moments(n, total, squares):
        mean = total / n
        return mean, math.sqrt((squares - total * total / n) / (n - 1)), n

    expected = sps.ttest_ind_from_stats(*moments(150, 900.0, 7200.0),
                                        *moments(200, 1000.0, 7000.0), equal_var=False)
    assert comparison["p_value"] == pytest.approx(expected.pvalue)
    assert comparison["absolute_effect"] == pytest.approx(1.0)


def test_weights_enable_the_srm_check_and_corrections_apply_across_treatments(
        client, client_headers):
    variants = [{"key": "a", "is_control": True, "n": 5200, "conversions": 520},
                {"key": "b", "n": 4800, "conversions": 560},
                {"key": "c", "n": 5000, "conversions": 600}]
    body = conversion_body(variants=variants, weights=[1, 1, 1], correction="holm")
    result = client.post(ANALYZE, json=body, headers=client_headers).get_json()
    expected = sps.chisquare([5200, 4800, 5000]).pvalue
    assert result["srm"] == {"p_value": pytest.approx(expected), "detected": expected < 0.001}
    raw = sorted(c["p_value"] for c in result["comparisons"])
    adjusted = sorted(c["adjusted_p_value"] for c in result["comparisons"])
    assert adjusted[0] == pytest.approx(min(1.0, 2 * raw[0]))


def test_nps_and_ratio_kinds_are_supported(client, client_headers):
    nps = [{"key": "a", "is_control": True, "n": 400, "promoters": 160, "detractors": 80},
           {"key": "b", "n": 400, "promoters": 200, "detractors": 60}]
    result = client.post(ANALYZE, json={"kind": "nps", "variants": nps},
                         headers=client_headers).get_json()
    assert [v["estimate"] for v in result["variants"]] == pytest.approx([20.0, 35.0])
    ratio = [{"key": "a", "is_control": True, "n": 100, "num_sum": 50.0,
              "num_sum_squares": 60.0, "den_sum": 200.0, "den_sum_squares": 500.0,
              "num_den_sum": 110.0},
             {"key": "b", "n": 100, "num_sum": 60.0, "num_sum_squares": 70.0,
              "den_sum": 200.0, "den_sum_squares": 480.0, "num_den_sum": 125.0}]
    result = client.post(ANALYZE, json={"kind": "ratio", "variants": ratio},
                         headers=client_headers).get_json()
    assert [v["estimate"] for v in result["variants"]] == pytest.approx([0.25, 0.30])


def test_spec_reference_relative_interval_is_fiellers(client, client_headers):
    variants = [{"key": "control", "is_control": True, "n": 1600, "conversions": 10},
                {"key": "b", "n": 1700, "conversions": 54}]
    comparison = client.post(ANALYZE, json=conversion_body(variants=variants),
                             headers=client_headers).get_json()["comparisons"][0]
    assert comparison["relative_effect"] == pytest.approx(4.082353, abs=1e-6)
    assert comparison["relative_ci"] == pytest.approx([1.865612, 12.575347], abs=1e-6)
    assert comparison["chance_to_win"] is None and comparison["expected_loss"] is None


def test_bayesian_calculator_has_no_p_values(client, client_headers):
    body = conversion_body(method="bayesian", correction="holm")
    comparison = client.post(ANALYZE, json=body, headers=client_headers).get_json()[
        "comparisons"][0]
    assert comparison["p_value"] is None and comparison["adjusted_p_value"] is None
    assert comparison["chance_to_win"] > 0.95 and comparison["verdict"] == "better"
    assert comparison["absolute_ci"][0] < 0.03 < comparison["absolute_ci"][1]
    assert comparison["relative_ci"][0] < 0.3 < comparison["relative_ci"][1]


def test_nps_calculator_reports_points_only(client, client_headers):
    nps = [{"key": "a", "is_control": True, "n": 400, "promoters": 160, "detractors": 80},
           {"key": "b", "n": 400, "promoters": 200, "detractors": 60}]
    for method in ("frequentist", "sequential", "bayesian"):
        comparison = client.post(ANALYZE, json={"kind": "nps", "method": method,
                                                "variants": nps},
                                 headers=client_headers).get_json()["comparisons"][0]
        assert comparison["absolute_effect"] == pytest.approx(15.0)
        assert comparison["relative_effect"] is None and comparison["relative_ci"] is None


@pytest.mark.parametrize(("variants", "field"), [
    ([{"key": "control", "is_control": True, "n": 10, "conversions": 1},
      {"key": "b", "n": 10, "conversions": 11}], "variants[1].conversions"),
    ([{"key": "control", "is_control": True, "n": 10, "conversions": 1},
      {"key": "b", "n": -1, "conversions": 0}], "variants[1].n"),
    ([{"key": "control", "is_control": True, "n": 10},
      {"key": "b", "n": 10, "conversions": 1}], "variants[0].conversions"),
    ([{"key": "control", "n": 10, "conversions": 1},
      {"key": "b", "n": 10, "conversions": 1}], "variants"),
    ([{"key": "control", "is_control": True, "n": 10.5, "conversions": 1},
      {"key": "b", "n": 10, "conversions": 1}], "variants[0].n"),
])
def test_bad_statistics_are_a_422_naming_the_field(client, client_headers, variants, field):
    response = client.post(ANALYZE, json=conversion_body(variants=variants),
                           headers=client_headers)
    assert field in fields(response)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"kind": "funnel"}, "kind"), ({"alpha": 1.5}, "alpha"), ({"weights": [1]}, "weights"),
    ({"method": "magic"}, "method"), ({"extra": 1}, "extra"),
])
def test_bad_options_are_a_422_naming_the_option(client, client_headers, overrides, field):
    response = client.post(ANALYZE, json=conversion_body(**overrides), headers=client_headers)
    assert fields(response) == [field]


def test_power_matches_statsmodels(client, client_headers):
    response = client.post(POWER, json={"kind": "conversion", "baseline": 0.10, "mde": 0.05,
                                        "alpha": 0.05, "power": 0.8, "variants": 2,
                                        "daily_units": 2000}, headers=client_headers)
    assert response.status_code == 200
    effect = abs(proportion_effectsize(0.105, 0.10))
    expected = math.ceil(NormalIndPower().solve_power(effect_size=effect, alpha=0.05,
                                                      power=0.8, ratio=1.0))
    assert response.get_json() == {"units_per_variant": expected, "total_units": 2 * expected,
                                   "days": math.ceil(2 * expected / 2000)}


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "mean", "baseline": 10.0, "mde": 0.05}, "baseline_sd"),
    ({"kind": "conversion", "baseline": 1.5, "mde": 0.05}, "baseline"),
    ({"kind": "conversion", "baseline": 0.1, "mde": 0.05, "power": 1.0}, "power"),
    ({"kind": "conversion", "baseline": 0.1}, "mde"),
])
def test_bad_power_input_is_a_422_naming_the_field(client, client_headers, body, field):
    assert fields(client.post(POWER, json=body, headers=client_headers)) == [field]


def test_calculators_need_a_key(client):
    assert client.post(POWER, json={"baseline": 0.1, "mde": 0.05}).status_code == 401
    assert client.post(ANALYZE, json=conversion_body()).status_code == 401
