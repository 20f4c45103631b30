"""Quantile metrics and segment dimensions in the experiment API (SPEC §11): 422s name fields."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import experiment_payload

PURCHASE = {"key": "purchase", "kind": "conversion", "event": "purchase", "role": "primary"}
PAYMENT_P90 = {"key": "payment-time-p90", "kind": "quantile", "quantile": 0.9,
               "source": "step_duration", "step": "payment"}
ORDER_P50 = {"key": "order-p50", "kind": "quantile", "quantile": 0.5, "event": "purchase",
             "source": "unit_value"}


def create(client, headers, **overrides: Any):
    return client.post("/api/v1/experiments", json=experiment_payload(**overrides),
                       headers=headers)


def failing(response) -> list[str]:
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["code"] == "validation_error"
    return [detail["field"] for detail in response.get_json()["error"]["details"]]


def test_quantile_metrics_and_dimensions_are_stored_and_read_back(client, admin_headers):
    response = create(client, admin_headers, metrics=[PURCHASE, PAYMENT_P90, ORDER_P50],
                      analysis={"dimensions": ["country", "device"]})
    assert response.status_code == 201, response.get_json()
    body = client.get("/api/v1/experiments/checkout-redesign", headers=admin_headers).get_json()
    p90, p50 = body["metrics"][1], body["metrics"][2]
    assert (p90["quantile"], p90["source"], p90["step"], p90["direction"]) == (
        0.9, "step_duration", "payment", "decrease")
    assert (p50["quantile"], p50["source"], p50["event"], p50["direction"]) == (
        0.5, "unit_value", "purchase", "increase")
    assert body["metrics"][0]["quantile"] is None and body["metrics"][0]["source"] is None
    assert body["analysis"]["dimensions"] == ["country", "device"]


@pytest.mark.parametrize(("metric", "field"), [
    ({**PAYMENT_P90, "quantile": 0.995}, "metrics[1].quantile"),
    ({**PAYMENT_P90, "quantile": 0.001}, "metrics[1].quantile"),
    ({k: v for k, v in PAYMENT_P90.items() if k != "quantile"}, "metrics[1].quantile"),
    ({k: v for k, v in PAYMENT_P90.items() if k != "source"}, "metrics[1].source"),
    ({**PAYMENT_P90, "source": "step_time"}, "metrics[1].source"),
    ({k: v for k, v in PAYMENT_P90.items() if k != "step"}, "metrics[1].step"),
    ({**PAYMENT_P90, "step": "basket"}, "metrics[1].step"),
    ({k: v for k, v in ORDER_P50.items() if k != "event"}, "metrics[1].event"),
    ({**ORDER_P50, "source": "event_value", "event": None}, "metrics[1].event"),
    ({**ORDER_P50, "cap": {"type": "percentile", "value": 0.99}}, "metrics[1]"),
    ({**PURCHASE, "key": "p2", "role": "secondary", "quantile": 0.5}, "metrics[1].quantile"),
    ({**PURCHASE, "key": "p2", "role": "secondary", "source": "unit_value"},
     "metrics[1].source"),
])
def test_bad_quantile_metric_is_a_422_naming_the_field(client, admin_headers, metric, field):
    assert failing(create(client, admin_headers, metrics=[PURCHASE, metric])) == [field]
    assert client.get("/api/v1/experiments", headers=admin_headers).get_json()["items"] == []


@pytest.mark.parametrize(("dimensions", "field"), [
    (["a", "b", "c", "d"], "analysis.dimensions"),
    ([""], "analysis.dimensions[0]"),
    (["x" * 201], "analysis.dimensions[0]"),
    (["bad\u0000name"], "analysis.dimensions[0]"),
    (["country", "country"], "analysis.dimensions[1]"),
    ("country", "analysis.dimensions"),
])
def test_bad_dimensions_are_a_422_naming_the_field(client, admin_headers, dimensions, field):
    response = create(client, admin_headers, analysis={"dimensions": dimensions})
    assert failing(response) == [field]


def test_a_patch_with_bad_dimensions_changes_nothing(client, admin_headers):
    create(client, admin_headers, analysis={"dimensions": ["country"]})
    response = client.patch("/api/v1/experiments/checkout-redesign", headers=admin_headers,
                            json={"analysis": {"dimensions": ["a", "b", "c", "d"]}})
    assert failing(response) == ["analysis.dimensions"]
    body = client.get("/api/v1/experiments/checkout-redesign", headers=admin_headers).get_json()
    assert body["analysis"]["dimensions"] == ["country"]


def test_ad_hoc_dimensions_are_validated_and_computed(client, admin_headers, started):
    url = "/api/v1/experiments/checkout-redesign/analyze"
    assert failing(client.post(url, json={"dimensions": ["a", "b", "c", "d"]},
                               headers=admin_headers)) == ["dimensions"]
    assert failing(client.post(url, json={"dimensions": [""]},
                               headers=admin_headers)) == ["dimensions[0]"]
    assert failing(client.post(url, json={"segments": ["x"]},
                               headers=admin_headers)) == ["segments"]
    assert client.get("/api/v1/experiments/checkout-redesign/reports",
                      headers=admin_headers).get_json()["items"] == []
    plain = client.post(url, headers=admin_headers)
    assert plain.status_code == 200, plain.get_json()
    ad_hoc = client.post(url, json={"dimensions": ["browser"]}, headers=admin_headers)
    assert ad_hoc.status_code == 200, ad_hoc.get_json()
    assert [segment["dimension"] for segment in ad_hoc.get_json()["segments"]] == ["browser"]
    assert not any("browser" in warning for warning in ad_hoc.get_json()["warnings"])


def test_a_quantile_metric_is_computed_not_reported_as_a_mean(client, admin_headers):
    """One purchase of 10.0: the order p50 is 10.0 in the unit's variant (estimate only,
    fewer than 100 values), nothing elsewhere; no step events, so no payment time."""
    create(client, admin_headers, layer=None, targeting=[], overrides={},
           metrics=[PURCHASE, PAYMENT_P90, ORDER_P50])
    client.post("/api/v1/experiments/checkout-redesign/start", headers=admin_headers)
    client.post("/api/v1/assign", headers=admin_headers,
                json={"unit_id": "u1", "experiments": ["checkout-redesign"]})
    client.post("/api/v1/events", headers=admin_headers, json={"events": [
        {"unit_id": "u1", "type": "conversion", "name": "purchase", "value": 10.0}]})
    response = client.post("/api/v1/experiments/checkout-redesign/analyze",
                           headers=admin_headers)
    assert response.status_code == 200, response.get_json()
    report = response.get_json()
    assert "error" not in report
    quantile_metrics = [m for m in report["metrics"] if m["kind"] == "quantile"]
    assert [m["key"] for m in quantile_metrics] == ["payment-time-p90", "order-p50"]
    payment, order = quantile_metrics
    assert [v["estimate"] for v in payment["variants"]] == [None, None]
    assert sorted(v["estimate"] for v in order["variants"] if v["estimate"] is not None) == [10.0]
    for metric in quantile_metrics:
        (comparison,) = metric["comparisons"]
        assert comparison["p_value"] is None and comparison["absolute_ci"] is None
        assert not any("not computed" in warning for warning in metric["warnings"])
    assert any("fewer than 100" in warning for warning in order["warnings"])


def test_openapi_documents_the_optional_analyze_body(client):
    document = client.get("/openapi.json").get_json()
    operation = document["paths"]["/api/v1/experiments/{key}/analyze"]["post"]
    assert operation["requestBody"]["required"] is False
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/AnalyzeIn")
    assert "422" in operation["responses"]
    assert document["components"]["schemas"]["AnalyzeIn"]["properties"]["dimensions"][
        "maxItems"] == 3
