"""Analysis on identity clusters (SPEC §14), end to end through the API, on both databases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from experiments.db import utcnow
from experiments.models import Experiment
from experiments.services import identity
from experiments.services.pipeline import MetricSpec, aggregate_experiment, own_sources
from experiments.services.pipeline.rollup import OwnRollup
from tests.test_admin_support import logged_in
from tests.test_identity import KEY, assign, identify, ids_with


def analyze(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    response = client.post(f"/api/v1/experiments/{KEY}/analyze", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def send(client: Any, headers: dict[str, str], *events: dict[str, Any]) -> None:
    response = client.post("/api/v1/events", json={"events": list(events)}, headers=headers)
    assert response.status_code == 200 and response.get_json()["accepted"] == len(events)


def variant_of(report: dict[str, Any], metric: str, variant: str) -> dict[str, Any]:
    [found] = [entry for m in report["metrics"] if m["key"] == metric
               for entry in m["variants"] if entry["variant"] == variant]
    return found


def test_a_customer_on_two_devices_is_one_unit_and_back_office_events_count_from_exposure(
        client, admin_headers, client_headers, started):
    phone_a, phone_b = ids_with(client, client_headers, "phone", "one-page", 2)
    [laptop] = ids_with(client, client_headers, "laptop", "control")
    for phone, customer in ((phone_a, "customer-a"), (phone_b, "customer-b")):
        assert assign(client, client_headers, phone)["variant"] == "one-page"
        assert identify(client, client_headers,
                        {"anonymous_id": phone, "user_id": customer}).status_code == 200
    # Customer a logs in on a laptop the hash alone would put in control: one-page, no unit.
    second = assign(client, client_headers, laptop, user_id="customer-a")
    assert (second["variant"], second["reason"]) == ("one-page", "assigned")
    # The SDK's identify() on the laptop links it too: its events join a's journey.
    assert identify(client, client_headers,
                    {"anonymous_id": laptop, "user_id": "customer-a"}).status_code == 200
    send(client, client_headers, {"unit_id": laptop, "type": "step", "name": "cart",
                                  "step": "cart"})
    # Server-side purchases under the customer ids (admin key): a's after the web exposure,
    # b's an hour before its first exposure.
    before = (utcnow() - timedelta(hours=1)).isoformat()
    send(client, admin_headers,
         {"unit_id": "customer-a", "type": "conversion", "name": "purchase", "value": 50.0},
         {"unit_id": "customer-b", "type": "conversion", "name": "purchase", "value": 20.0,
          "occurred_at": before})
    report = analyze(client, admin_headers)
    assert report["units"] == {"control": 0, "one-page": 2}
    assert report["identity"] == {"clusters": 2, "linked_units": 2, "conflicts": 0}
    purchase = variant_of(report, "purchase", "one-page")
    assert (purchase["units"], purchase["estimate"]) == (2, 0.5)
    assert variant_of(report, "revenue", "one-page")["estimate"] == 25.0  # 50 over 2 units
    cart = next(step for step in report["funnel"] if step["step"] == "cart")
    assert cart["variants"]["one-page"]["units"] == 1  # the laptop's step, in a's journey
    fetched = client.get(f"/api/v1/experiments/{KEY}/report", headers=admin_headers)
    assert fetched.get_json()["identity"] == report["identity"]
    exported = client.get(f"/api/v1/experiments/{KEY}/export", headers=admin_headers)
    assert exported.get_json()["identity"] == report["identity"]


def test_two_devices_in_two_variants_then_linked_are_left_out_and_counted(
        app, client, admin_headers, client_headers, started):
    [phone] = ids_with(client, client_headers, "phone", "control")
    [laptop] = ids_with(client, client_headers, "laptop", "one-page")
    [bystander] = ids_with(client, client_headers, "bystander", "one-page")
    for unit in (phone, laptop, bystander):
        assign(client, client_headers, unit)
    links = [{"anonymous_id": phone, "user_id": "customer-3"},
             {"anonymous_id": laptop, "user_id": "customer-3"}]
    assert identify(client, client_headers, {"links": links}).status_code == 200
    send(client, client_headers,
         {"unit_id": "customer-3", "type": "conversion", "name": "purchase"},
         {"unit_id": bystander, "type": "conversion", "name": "purchase"})
    report = analyze(client, admin_headers)
    assert report["units"] == {"control": 0, "one-page": 1}
    assert report["identity"] == {"clusters": 2, "linked_units": 2, "conflicts": 1}
    assert variant_of(report, "purchase", "one-page")["estimate"] == 1.0
    [conflict] = client.get(f"/api/v1/experiments/{KEY}/conflicts",
                            headers=admin_headers).get_json()["items"]
    assert conflict["cluster"] == "customer-3"
    assert sorted(unit["unit_id"] for unit in conflict["units"]) == sorted([phone, laptop])
    # The admin report says so in one line, linking to the same list.
    viewer = logged_in(app, "viewer")
    page = viewer.get(f"/admin/experiments/{KEY}").get_data(as_text=True)
    assert ("2 customers, 2 devices linked, <a href=\"/admin/experiments/checkout-redesign/"
            "conflicts.json\">1 conflicting customers left out</a>") in page
    listed = viewer.get(f"/admin/experiments/{KEY}/conflicts.json").get_json()
    assert listed["items"] == [{**conflict}]
    assert viewer.get("/admin/experiments/nope/conflicts.json").status_code == 404


def test_without_links_on_its_units_the_analysis_keeps_the_plain_sources(
        client, admin_headers, client_headers, started, db):
    units = [f"visitor-{index}" for index in range(6)]
    for unit in units:
        assign(client, client_headers, unit)
    # A link that names none of the experiment's units changes nothing.
    assert identify(client, client_headers, {"anonymous_id": "elsewhere",
                                             "user_id": "customer-9"}).status_code == 200
    send(client, client_headers,
         *({"unit_id": unit, "type": "conversion", "name": "purchase", "value": 10.0 * i}
           for i, unit in enumerate(units[:3])),
         {"unit_id": "customer-9", "type": "conversion", "name": "purchase"})
    experiment_id = db.scalar(select(Experiment.id).where(Experiment.key == KEY))
    units = identity.analysis_sources(db, experiment_id)
    assert units.clusters is None and units.summary(db) is None
    assert units.sources.unit_store == OwnRollup(experiment_id)  # rollup-eligible
    report = analyze(client, admin_headers)
    assert report["identity"] == {"clusters": 6, "linked_units": 0, "conflicts": 0}
    # The cluster sources give the same sufficient statistics as the plain ones.
    specs = [MetricSpec("purchase", "conversion", event="purchase"),
             MetricSpec("revenue", "mean", event="purchase")]
    journey = list(started["journey"])
    plain = aggregate_experiment(db, experiment_id, specs, hours=72, cuped=True,
                                 journey=journey, rollup=False, sources=own_sources(experiment_id))
    clustered = aggregate_experiment(db, experiment_id, specs, hours=72, cuped=True,
                                     journey=journey,
                                     sources=identity.cluster_sources(experiment_id))
    assert clustered.units.rows == plain.units.rows
    assert {k: d.rows for k, d in clustered.metrics.items()} == {
        k: d.rows for k, d in plain.metrics.items()}
    assert plain.metrics["revenue"].totals()  # something was measured
    assert sum(s["sum"] for s in plain.metrics["revenue"].totals().values()) == 30.0
