"""The quantile calculator (SPEC §11): raw values in, the SPEC reference case out, 422s."""

from __future__ import annotations

import pytest

ANALYZE = "/api/v1/stats/analyze"
CONTROL = list(range(1, 10_001))


def quantile_body(**overrides):
    body = {"kind": "quantile", "quantile": 0.9, "correction": "none",
            "variants": [{"key": "control", "is_control": True, "values": CONTROL[::-1]},
                         {"key": "faster", "values": [v + 50 for v in CONTROL]}]}
    return {**body, **overrides}


def failing_fields(response):
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["error"]["code"] == "validation_error"
    return [detail["field"] for detail in body["error"]["details"]]


def test_spec_reference_case_through_the_api(client, client_headers):
    response = client.post(ANALYZE, json=quantile_body(), headers=client_headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["variants"][0] == {"variant": "control", "units": 10_000, "estimate": 9000.0,
                                   "ci": [8942.0, 9059.0]}
    assert body["variants"][1]["estimate"] == 9050.0
    comparison = body["comparisons"][0]
    assert comparison["absolute_effect"] == 50.0
    assert comparison["absolute_ci"] == pytest.approx([-32.731493, 132.731493], abs=1e-6)
    assert comparison["p_value"] == pytest.approx(0.236202, abs=1e-6)
    assert comparison["verdict"] == "inconclusive"
    assert body["warnings"] == []


def test_small_samples_give_an_estimate_and_a_warning(client, client_headers):
    body = quantile_body(variants=[{"key": "a", "is_control": True, "values": [3.0, 1.0, 2.0]},
                                   {"key": "b", "values": list(range(500))}])
    response = client.post(ANALYZE, json=body, headers=client_headers)
    assert response.status_code == 200
    result = response.get_json()
    assert result["variants"][0]["estimate"] == 3.0
    assert result["comparisons"][0]["p_value"] is None
    assert any("fewer than 100" in warning for warning in result["warnings"])


def test_more_than_100000_values_is_a_422_naming_the_variant(client, client_headers):
    body = quantile_body(variants=[{"key": "a", "is_control": True, "values": [1.0] * 100_001},
                                   {"key": "b", "values": [1.0]}])
    assert failing_fields(client.post(ANALYZE, json=body, headers=client_headers)) == [
        "variants[0].values"]


def test_non_finite_values_are_a_422(client, client_headers):
    raw = ('{"kind": "quantile", "quantile": 0.5, "variants": [{"key": "a", "is_control": true,'
           ' "values": [1.0, NaN]}, {"key": "b", "values": [1.0, Infinity]}]}')
    response = client.post(ANALYZE, data=raw, content_type="application/json",
                           headers=client_headers)
    assert set(failing_fields(response)) == {"variants[0].values[1]", "variants[1].values[1]"}


@pytest.mark.parametrize(("overrides", "field"), [
    ({"quantile": 0.995}, "quantile"),
    ({"quantile": 0.0}, "quantile"),
    ({"quantile": None}, "quantile"),
    ({"variants": [{"key": "a", "is_control": True, "values": [1.0]}, {"key": "b"}]},
     "variants[1].values"),
])
def test_bad_quantile_input_is_a_422_naming_the_field(client, client_headers, overrides, field):
    response = client.post(ANALYZE, json=quantile_body(**overrides), headers=client_headers)
    assert failing_fields(response) == [field]
