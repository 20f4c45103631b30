"""The SPEC §1 CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from experiments.auth import hash_api_key, verify_password
from experiments.db import get_db, utcnow
from experiments.models import (
    AllocationPeriod,
    ApiKey,
    Event,
    Experiment,
    Exposure,
    HoldoutReport,
    IdentityLink,
    Report,
    User,
)
from experiments.services.accounts import authenticate_user
from experiments.services.pipeline import MetricSpec, aggregate_experiment, own_sources


def test_api_key_is_printed_alone_on_the_last_line_and_stored_hashed(runner, db, client):
    result = runner.invoke(args=["api-keys", "create", "--role", "admin", "--name", "ci"])
    assert result.exit_code == 0, result.output
    raw_key = result.output.strip().splitlines()[-1]
    assert raw_key.startswith("sk_") and " " not in raw_key
    stored = db.scalar(select(ApiKey).where(ApiKey.name == "ci"))
    assert stored.key_hash == hash_api_key(raw_key) and raw_key not in stored.key_hash
    response = client.get("/api/v1/experiments", headers={"Authorization": f"Bearer {raw_key}"})
    assert response.status_code == 200


def test_client_key_role(runner):
    result = runner.invoke(args=["api-keys", "create", "--role", "client", "--name", "web"])
    assert result.output.strip().splitlines()[-1].startswith("pk_")


def test_users_create_stores_an_argon2_hash(runner, db):
    result = runner.invoke(args=["users", "create", "--email", "Ana@Example.com", "--role",
                                 "editor", "--password", "correct horse"])
    assert result.exit_code == 0, result.output
    user = db.scalar(select(User))
    assert user.email == "ana@example.com" and user.role == "editor"
    assert user.password_hash.startswith("$argon2id$")
    assert verify_password(user.password_hash, "correct horse")
    assert not verify_password(user.password_hash, "wrong")


def test_users_create_rejects_short_password_and_duplicates(runner):
    short = runner.invoke(args=["users", "create", "--email", "a@b.c", "--role", "viewer",
                                "--password", "short"])
    assert short.exit_code != 0 and "password" in short.output
    runner.invoke(args=["users", "create", "--email", "a@b.c", "--role", "viewer",
                        "--password", "long enough"])
    again = runner.invoke(args=["users", "create", "--email", "a@b.c", "--role", "viewer",
                                "--password", "long enough"])
    assert again.exit_code != 0 and "already exists" in again.output


def test_seed_demo_is_idempotent(runner, db):
    first = runner.invoke(args=["seed-demo"])
    second = runner.invoke(args=["seed-demo"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    experiments = db.scalars(select(Experiment).order_by(Experiment.key)).all()
    assert [e.key for e in experiments] == ["checkout-redesign", "homepage-banner"]
    assert all(e.status == "running" for e in experiments)
    demo = experiments[0]
    # The first run simulated traffic and analysed it once; the second added nothing.
    reports = db.scalars(select(Report).where(Report.experiment_id == demo.id)).all()
    assert len(reports) == 1 and reports[0].body["decision"]["outcome"] == "ship"
    assert db.scalar(select(func.count()).select_from(Exposure)
                     .where(Exposure.experiment_id == demo.id)) == 6000
    assert "analysed 'checkout-redesign': decision ship one-page" in first.output
    # The demo bandit: four updates after four chunks of traffic, not repeated.
    assert db.scalar(select(func.count()).select_from(AllocationPeriod)) == 5
    assert "demo bandit 'homepage-banner' already exists" in second.output
    # A few visitors logged in; support recorded their late deliveries under the customer id.
    assert db.scalar(select(func.count()).select_from(IdentityLink)) == 40
    # The demo bandit's visitors fill the demo holdout's groups; it was analysed once.
    holdout_reports = db.scalars(select(HoldoutReport)).all()
    assert len(holdout_reports) == 1
    assert all(count > 100 for count in holdout_reports[0].body["units"].values())
    late = db.execute(select(Event.unit_id, Event.friction_kind)
                      .where(Event.name == "late_delivery")).all()
    assert sorted(late) == sorted((f"customer-{n}", "support_contact") for n in range(1, 41, 4))
    # The report counts them in the variant each customer saw on the web (SPEC §14): its
    # support contacts are the visitors' own plus the late deliveries of that variant.
    late_by_variant = dict(db.execute(
        select(Exposure.variant_key, func.count())
        .join(IdentityLink, IdentityLink.anonymous_id == Exposure.unit_id)
        .where(Exposure.experiment_id == demo.id,
               IdentityLink.user_id.in_([unit for unit, _ in late]))
        .group_by(Exposure.variant_key)).all())
    contacts = [MetricSpec("support-contacts", "friction", friction_kind="support_contact")]
    visitors_only = aggregate_experiment(db, demo.id, contacts, hours=72, cuped=False,
                                         rollup=False, sources=own_sources(demo.id))
    own = visitors_only.metrics["support-contacts"].totals()
    body = reports[0].body
    [reported] = [m for m in body["metrics"] if m["key"] == "support-contacts"]
    counted = {v["variant"]: round(v["estimate"] * v["units"]) for v in reported["variants"]}
    assert counted == {variant: round(own[variant]["sum"]) + late_by_variant.get(variant, 0)
                       for variant in ("control", "one-page")}
    assert sum(late_by_variant.values()) == 10
    assert body["identity"] == {"clusters": 6000, "linked_units": 40, "conflicts": 0}


def test_bootstrap_dev_prints_the_same_credentials_twice(runner):
    first = runner.invoke(args=["bootstrap-dev"]).output
    second = runner.invoke(args=["bootstrap-dev"]).output
    assert "admin key  sk_" in first and "client key pk_" in first
    assert first == second


@pytest.mark.parametrize("stale", ["another database's password", "a revoked key",
                                   "a key of the wrong role", "a file that is not JSON"])
def test_bootstrap_dev_replaces_credentials_that_no_longer_open_the_database(
        app, runner, db, stale):
    """The file outlives the database it was made for (deleted, or the URL pointed
    elsewhere for a while): credentials that do not work are made anew, never printed."""
    assert runner.invoke(args=["bootstrap-dev"]).exit_code == 0
    path = Path(app.instance_path) / "dev-credentials.json"
    kept = json.loads(path.read_text())
    if stale == "another database's password":
        path.write_text(json.dumps({**kept, "admin_password": "from-another-database"}))
    elif stale == "a revoked key":
        key = db.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(
            kept["client_api_key"])))
        key.revoked_at = utcnow()
        db.commit()
    elif stale == "a key of the wrong role":
        path.write_text(json.dumps({**kept, "client_api_key": kept["admin_api_key"]}))
    else:
        path.write_text("{")
    output = runner.invoke(args=["bootstrap-dev"]).output
    made = json.loads(path.read_text())
    assert made["admin_password"] != kept["admin_password"]
    assert made["admin_password"] in output and made["client_api_key"] in output
    with get_db(app).sessionmaker() as session:
        assert authenticate_user(session, made["admin_email"], made["admin_password"])
        roles = dict(session.execute(select(ApiKey.key_hash, ApiKey.role).where(
            ApiKey.revoked_at.is_(None))).all())
    assert roles[hash_api_key(made["admin_api_key"])] == "admin"
    assert roles[hash_api_key(made["client_api_key"])] == "client"
    assert runner.invoke(args=["bootstrap-dev"]).output == output  # and kept from then on
