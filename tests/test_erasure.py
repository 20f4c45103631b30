"""DELETE /api/v1/units/{unit_id} (SPEC §3): a unit erased everywhere, audited by digest."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import func, select

from experiments.models import Event, Exposure, unit_rollups
from tests.test_aggregation import event, expose, hours, make_experiment

WHALE = "customer/981@example.com"  # a slash and an @: ids are not always URL-friendly


def seed(db) -> None:
    """Two experiments; the whale is in the treatment of both, with a huge purchase."""
    for key in ("checkout", "search"):
        experiment = make_experiment(db, key)
        for unit, variant in (("c1", "control"), ("c2", "control"), ("t1", "one-page"),
                              (WHALE, "one-page")):
            expose(db, experiment, unit, variant)
    for unit, value in (("c1", 10.0), ("c2", 20.0), ("t1", 30.0), (WHALE, 5000.0)):
        event(db, unit, "purchase", hours(1), value=value)
    event(db, WHALE, "view", hours(0.5), type="step", step="cart")
    db.commit()


def revenue(client, headers, key: str = "checkout") -> dict[str, float]:
    report = client.post(f"/api/v1/experiments/{key}/analyze", headers=headers).get_json()
    metric = next(m for m in report["metrics"] if m["key"] == "revenue")
    return {v["variant"]: (v["units"], v["estimate"]) for v in metric["variants"]}


def test_erasure_removes_the_unit_from_the_next_report(client, admin_headers, db):
    seed(db)
    assert revenue(client, admin_headers)["one-page"] == (2, 2515.0)
    assert revenue(client, admin_headers)["one-page"] == (2, 2515.0)  # a rollup may fold it
    response = client.delete(f"/api/v1/units/{WHALE}", headers=admin_headers)
    assert response.status_code == 200
    assert response.get_json() == {"unit_id": WHALE, "events": 2, "exposures": 2}
    assert revenue(client, admin_headers) == {"control": (2, 15.0), "one-page": (1, 30.0)}
    assert revenue(client, admin_headers, "search")["one-page"] == (1, 30.0)
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(Event).where(Event.unit_id == WHALE)) == 0
    assert db.scalar(select(func.count()).select_from(Exposure)
                     .where(Exposure.unit_id == WHALE)) == 0
    orphans = select(func.count()).select_from(unit_rollups).where(
        unit_rollups.c.exposure_id.not_in(select(Exposure.id)))
    assert db.scalar(orphans) == 0


def test_the_audit_keeps_a_digest_of_the_id_not_the_id(client, admin_headers, db):
    seed(db)
    client.delete(f"/api/v1/units/{WHALE}", headers=admin_headers)
    entries = client.get("/api/v1/audit", headers=admin_headers).get_json()["items"]
    erased = [entry for entry in entries if entry["action"] == "unit.erased"]
    digest = hashlib.sha256(WHALE.encode()).hexdigest()
    assert [entry["target_id"] for entry in erased] == [digest]
    assert erased[0]["after"] == {"sha256": digest, "events": 2, "exposures": 2,
                                  "holdout_exposures": 0, "links": 0}
    assert WHALE not in json.dumps(entries)


def test_erasing_an_unknown_unit_deletes_nothing(client, admin_headers, db):
    seed(db)
    response = client.delete("/api/v1/units/nobody", headers=admin_headers)
    assert response.get_json() == {"unit_id": "nobody", "events": 0, "exposures": 0}
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(Event)) == 5


def test_an_id_longer_than_any_stored_one_is_422(client, admin_headers):
    response = client.delete("/api/v1/units/" + "x" * 201, headers=admin_headers)
    assert response.status_code == 422
    assert response.get_json()["error"]["details"][0]["field"] == "unit_id"


def test_client_keys_cannot_erase(client, client_headers, db):
    seed(db)
    response = client.delete(f"/api/v1/units/{WHALE}", headers=client_headers)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(Event).where(Event.unit_id == WHALE)) == 2


def test_openapi_lists_the_erasure_route(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    operation = paths["/api/v1/units/{unit_id}"]["delete"]
    assert operation["parameters"][0]["name"] == "unit_id"
    assert "200" in operation["responses"]

