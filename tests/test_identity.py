"""Identity across devices (SPEC §14): links, sticky variants after login, conflicts, clusters."""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import AuditEntry, Experiment, Exposure, IdentityLink
from experiments.schemas.identity import MAX_LINKS
from experiments.services import assignment, identity
from experiments.services.accounts import create_api_key
from experiments.services.exposures import _execute
from experiments.services.identity import _cluster_sql
from tests.conftest import make_test_app
from tests.factories import experiment_payload

KEY = "checkout-redesign"
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def assign(client: Any, headers: dict[str, str], unit_id: str, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/assign", json={"unit_id": unit_id, **body}, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["assignments"][0]


def identify(client: Any, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return client.post("/api/v1/identify", json=body, headers=headers)


def hashed_variant(client: Any, headers: dict[str, str], unit_id: str) -> str:
    """The variant the hash alone gives ``unit_id`` (nothing stored)."""
    return assign(client, headers, unit_id, track=False)["variant"]


def ids_with(client: Any, headers: dict[str, str], prefix: str, variant: str,
             count: int = 1) -> list[str]:
    """``count`` fresh ids that the hash puts in ``variant``."""
    found = []
    for index in range(200):
        unit = f"{prefix}-{index}"
        if hashed_variant(client, headers, unit) == variant:
            found.append(unit)
            if len(found) == count:
                return found
    raise AssertionError("no such ids")


def exposure_rows(db: Any) -> dict[str, str]:
    db.expire_all()
    return dict(db.execute(select(Exposure.unit_id, Exposure.variant_key)).all())


def test_identify_stores_single_and_batched_links_once_with_one_audit_entry_per_request(
        client, client_headers, db):
    single = identify(client, client_headers, {"anonymous_id": "visitor-42",
                                               "user_id": "customer-981",
                                               "occurred_at": "2026-11-24T10:00:00Z"})
    assert single.status_code == 200
    assert single.get_json() == {"linked": 1, "duplicates": 0}
    links = [{"anonymous_id": f"visitor-{index}", "user_id": "customer-981"}
             for index in range(40, 45)]
    batch = identify(client, client_headers, {"links": links})
    assert batch.get_json() == {"linked": 4, "duplicates": 1}  # visitor-42 was linked
    again = identify(client, client_headers, {"links": links})
    assert again.get_json() == {"linked": 0, "duplicates": 5}
    stored = db.execute(select(IdentityLink.anonymous_id, IdentityLink.user_id,
                               IdentityLink.occurred_at)
                        .order_by(IdentityLink.anonymous_id)).all()
    assert [row.anonymous_id for row in stored] == [f"visitor-{i}" for i in range(40, 45)]
    assert {row.user_id for row in stored} == {"customer-981"}
    assert stored[2].occurred_at == T0
    audits = db.scalars(select(AuditEntry).where(AuditEntry.action == "identity.linked")
                        .order_by(AuditEntry.id)).all()
    assert [entry.after for entry in audits] == [
        {"links": 1, "linked": 1, "duplicates": 0},
        {"links": 5, "linked": 4, "duplicates": 1},
        {"links": 5, "linked": 0, "duplicates": 5}]



def test_a_full_batch_of_links_counts_each_new_one_once(client, client_headers, db):
    """The largest batch (MAX_LINKS) is written in several statements by the driver (SQLite
    binds at most 999 values in one): every new link is counted, every stored one is a
    duplicate, across statement boundaries."""
    first = [{"anonymous_id": f"device-{index}", "user_id": f"customer-{index % 7}"}
             for index in range(0, MAX_LINKS, 5)]
    assert identify(client, client_headers, {"links": first}).get_json() == {
        "linked": MAX_LINKS // 5, "duplicates": 0}
    batch = [{"anonymous_id": f"device-{index}", "user_id": f"customer-{index % 7}"}
             for index in range(MAX_LINKS)]
    assert identify(client, client_headers, {"links": batch}).get_json() == {
        "linked": MAX_LINKS - MAX_LINKS // 5, "duplicates": MAX_LINKS // 5}
    assert db.scalar(select(func.count()).select_from(IdentityLink)) == MAX_LINKS

def test_bad_identify_bodies_are_422_naming_the_field_and_store_nothing(
        client, client_headers, db):
    links = [{"anonymous_id": f"v-{index}", "user_id": "c-1"} for index in range(4)]
    links[3]["user_id"] = ""
    cases = [
        ({"links": links}, "links[3].user_id"),
        ({"anonymous_id": "v-1"}, "user_id"),
        ({"user_id": "c-1"}, "anonymous_id"),
        ({"anonymous_id": "v\x00", "user_id": "c-1"}, "anonymous_id"),
        ({"links": links[:1], "user_id": "c-1"}, "user_id"),
        ({"links": [{"anonymous_id": "v", "user_id": "c"}] * 1001}, "links"),
        ({"links": []}, "links"),
        ({"anonymous_id": "v", "user_id": "c", "occurred_at": "yesterday"}, "occurred_at"),
    ]
    for body, field in cases:
        response = identify(client, client_headers, body)
        assert response.status_code == 422, body
        assert response.get_json()["error"]["details"][0]["field"] == field
    assert db.scalar(select(func.count()).select_from(IdentityLink)) == 0
    assert client.delete("/api/v1/identify", headers=client_headers).status_code == 405


def test_after_login_a_second_device_keeps_the_variant_without_a_new_unit(
        client, admin_headers, client_headers, started, db):
    first = assign(client, client_headers, "phone-1")
    variant = first["variant"]
    other = next(v["key"] for v in started["variants"] if v["key"] != variant)
    # A customer id (and a laptop id) that the hash alone would put in the other variant.
    [customer] = ids_with(client, client_headers, "customer", other)
    [laptop] = ids_with(client, client_headers, "laptop", other)
    assert identify(client, client_headers,
                    {"anonymous_id": "phone-1", "user_id": customer}).status_code == 200
    second = assign(client, client_headers, laptop, user_id=customer)
    assert (second["variant"], second["reason"]) == (variant, "assigned")
    exposed = client.post("/api/v1/exposures", json={"experiment": KEY, "unit_id": laptop,
                                                      "user_id": customer},
                          headers=client_headers)
    assert exposed.status_code == 200
    assert (exposed.get_json()["variant"], exposed.get_json()["reason"]) == (variant, "assigned")
    assert exposure_rows(db) == {"phone-1": variant}
    # The logged-in phone itself keeps it too.
    assert assign(client, client_headers, "phone-1", user_id=customer)["variant"] == variant


def test_a_customer_seen_first_logged_in_is_stored_once_under_the_customer_id(
        client, client_headers, started, db):
    one = assign(client, client_headers, "tablet-1", user_id="customer-7")
    two = assign(client, client_headers, "tablet-2", user_id="customer-7")
    assert one["variant"] == two["variant"] == hashed_variant(client, client_headers,
                                                             "customer-7")
    assert two["reason"] == "assigned"
    assert exposure_rows(db) == {"customer-7": one["variant"]}


def test_anonymous_assignment_never_reads_the_identity_tables(
        client, client_headers, started, monkeypatch):
    def refuse(*args: Any) -> None:
        raise AssertionError("cluster lookup without a user id")

    monkeypatch.setattr(assignment, "cluster_exposures", refuse)
    assert assign(client, client_headers, "visitor-1")["reason"] == "assigned"
    assert assign(client, client_headers, "visitor-1")["reason"] == "assigned"


def test_two_devices_exposed_to_different_variants_then_linked_are_a_conflict(
        app, client, admin_headers, client_headers, started, db):
    [phone] = ids_with(client, client_headers, "phone", "control")
    [laptop] = ids_with(client, client_headers, "laptop", "one-page")
    for unit in (phone, laptop, "bystander"):
        assign(client, client_headers, unit)
    links = [{"anonymous_id": phone, "user_id": "customer-3"},
             {"anonymous_id": laptop, "user_id": "customer-3"}]
    assert identify(client, client_headers, {"links": links}).status_code == 200
    response = client.get(f"/api/v1/experiments/{KEY}/conflicts", headers=admin_headers)
    assert response.status_code == 200
    [conflict] = response.get_json()["items"]
    assert conflict["cluster"] == "customer-3"
    assert [(unit["unit_id"], unit["variant"]) for unit in conflict["units"]] == [
        (phone, "control"), (laptop, "one-page")]
    experiment_id = db.scalar(select(Experiment.id).where(Experiment.key == KEY))
    assert identity.identity_summary(db, experiment_id) == identity.IdentitySummary(
        clusters=2, linked_units=2, conflicts=1)
    assert client.get("/api/v1/experiments/nope/conflicts",
                      headers=admin_headers).status_code == 404
    assert client.get(f"/api/v1/experiments/{KEY}/conflicts",
                      headers=client_headers).status_code == 403


def test_clusters_resolve_every_id_to_one_key_with_the_first_exposure_and_variant(
        client, started, db):
    experiment_id = db.scalar(select(Experiment.id).where(Experiment.key == KEY))
    exposures = [("a-1", "control", 0), ("a-2", "control", 5), ("c-1", "control", 9),
                 ("b-1", "one-page", 2), ("b-2", "control", 1), ("lone", "one-page", 3),
                 ("shared", "one-page", 7), ("qa", "control", 0)]
    db.execute(insert(Exposure), [
        {"experiment_id": experiment_id, "unit_id": unit, "variant_key": variant,
         "exposed_at": T0 + timedelta(hours=hours), "attributes": {},
         "is_override": unit == "qa"} for unit, variant, hours in exposures])
    links = [("a-1", "c-1", 0), ("a-2", "c-1", 1), ("b-1", "c-2", 0), ("b-2", "c-2", 0),
             ("shared", "c-1", 2), ("shared", "c-2", 5)]  # shared: its earliest link wins
    db.execute(insert(IdentityLink), [
        {"anonymous_id": anonymous, "user_id": user, "occurred_at": T0 + timedelta(hours=h),
         "created_at": T0} for anonymous, user, h in links])
    db.commit()
    mapping = identity.cluster_map()
    assert dict(db.execute(select(mapping.c.unit_id, mapping.c.cluster_key)).all()) == {
        "a-1": "c-1", "a-2": "c-1", "shared": "c-1", "c-1": "c-1",
        "b-1": "c-2", "b-2": "c-2", "c-2": "c-2"}
    clusters = identity.exposed_clusters(experiment_id)
    rows = db.execute(select(clusters).order_by(clusters.c.cluster_key)).all()
    assert [(row.cluster_key, row.exposed_at, row.variant_key, row.units, bool(row.conflict))
            for row in rows] == [
        ("c-1", T0, "control", 4, True),          # a-1 first; shared saw one-page
        ("c-2", T0 + timedelta(hours=1), "control", 2, True),
        ("lone", T0 + timedelta(hours=3), "one-page", 1, False)]
    assert identity.identity_summary(db, experiment_id) == identity.IdentitySummary(
        clusters=3, linked_units=6, conflicts=2)


def test_erasing_a_unit_removes_its_links_on_either_side(client, admin_headers,
                                                        client_headers, db):
    links = [{"anonymous_id": "v-1", "user_id": "c-1"}, {"anonymous_id": "v-2", "user_id": "c-1"},
             {"anonymous_id": "v-1", "user_id": "c-2"}]
    identify(client, client_headers, {"links": links})
    erased = client.delete("/api/v1/units/v-1", headers=admin_headers)
    assert erased.status_code == 200
    assert db.execute(select(IdentityLink.anonymous_id, IdentityLink.user_id)).all() == [
        ("v-2", "c-1")]
    client.delete("/api/v1/units/c-1", headers=admin_headers)
    assert db.scalar(select(func.count()).select_from(IdentityLink)) == 0


def test_one_customer_on_many_devices_at_once_gets_one_variant(postgres_database_url, tmp_path):
    """16 threads on two workers; each customer arrives on 8 devices at the same time."""
    setup = make_test_app(postgres_database_url, tmp_path / "setup")
    with get_db(setup).session() as session:
        key = create_api_key(session, name="k", role="admin", principal=SYSTEM)[1]
    headers = {"Authorization": f"Bearer {key}"}
    admin = setup.test_client()
    assert admin.post("/api/v1/experiments", json=experiment_payload(
        layer=None, targeting=[], overrides={}), headers=headers).status_code == 201
    assert admin.post(f"/api/v1/experiments/{KEY}/start", headers=headers).status_code == 200
    # customer-0 was seen anonymously before (on the other variant than its id's hash).
    own = assign(admin, headers, "customer-0", track=False)["variant"]
    [earlier] = ids_with(admin, headers, "earlier", "control" if own == "one-page" else "one-page")
    assert assign(admin, headers, earlier)["reason"] == "assigned"
    assert identify(admin, headers, {"anonymous_id": earlier,
                                     "user_id": "customer-0"}).status_code == 200
    workers = [make_test_app(postgres_database_url, tmp_path / name) for name in ("w1", "w2")]
    customers = [f"customer-{index}" for index in range(20)]
    seen: dict[str, set[str]] = defaultdict(set)
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def device(index: int) -> None:
        app = workers[index % 2]
        with app.app_context(), get_db(app).sessionmaker() as session:
            barrier.wait()
            for customer in customers:
                [result] = assignment.assign(session, unit_id=f"{customer}-device-{index}",
                                             user_id=customer)
                with lock:
                    seen[customer].add(result.variant)

    threads = [threading.Thread(target=device, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with get_db(setup).sessionmaker() as session:
        stored = dict(session.execute(select(Exposure.unit_id, Exposure.variant_key)).all())
    assert set(stored) == {earlier, *customers[1:]}
    assert seen["customer-0"] == {stored[earlier]} != {own}
    assert all(seen[customer] == {stored[customer]} for customer in customers[1:])
    for app in (setup, *workers):
        get_db(app).engine.dispose()



def test_the_cluster_lookup_uses_the_indexes_never_a_scan(postgres_database_url, tmp_path):
    """SPEC §14's cost: one indexed lookup, whatever the number of exposures."""
    app = make_test_app(postgres_database_url, tmp_path)
    engine = get_db(app).engine
    with engine.begin() as connection:
        experiment_id = connection.execute(insert(Experiment).values(
            key="big", name="big", salt="s", status="running").returning(Experiment.id)).scalar()
        connection.exec_driver_sql(
            "INSERT INTO exposures (experiment_id, unit_id, variant_key, exposed_at, attributes,"
            " is_override) SELECT %s, 'old-' || i, 'control', now(), '{}', false"
            " FROM generate_series(1, 50000) AS i", (experiment_id,))
        connection.exec_driver_sql(
            "INSERT INTO identity_links (anonymous_id, user_id, occurred_at, created_at)"
            " SELECT 'old-' || i, 'customer-' || i, now(), now()"
            " FROM generate_series(1, 5000) AS i")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("ANALYZE exposures")
        connection.exec_driver_sql("ANALYZE identity_links")
        sql = str(identity.cluster_statement("laptop-1", "customer-7", [experiment_id]).compile(
            dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
        plans = ["\n".join(connection.exec_driver_sql("EXPLAIN " + sql).scalars()),
                 "\n".join(row[0] for row in _execute(  # the driver-level twin
                     connection.connection.driver_connection, "EXPLAIN " + _cluster_sql(1),
                     ("laptop-1", "customer-7", experiment_id)))]
    with get_db(app).sessionmaker() as session:
        found = identity.cluster_exposures(session, "laptop-1", "customer-7", [experiment_id])
    engine.dispose()
    assert found == {experiment_id: "control"}
    for plan in plans:
        assert "ix_identity_links_user_id" in plan  # then exposures by index (either of two)
        assert "Seq Scan" not in plan


def test_links_count_against_the_ingestion_rate_limit(database_url, tmp_path, client_key):
    app = make_test_app(database_url, tmp_path, RATE_LIMIT_INGEST="2/minute")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {client_key}"}
    body = {"anonymous_id": "visitor-1", "user_id": "customer-1"}
    statuses = [identify(client, headers, body).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    get_db(app).engine.dispose()
