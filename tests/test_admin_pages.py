"""Admin pages beyond experiments: learnings, power calculator, users, API keys, webhooks, audit."""

from __future__ import annotations

import re

from experiments.db import get_db
from experiments.models import ApiKey, AuditEntry, User
from experiments.services.analysis import calculate_power
from tests.test_admin_support import (
    PASSWORD,
    cheap_argon2,  # noqa: F401  (autouse fixture)
    insert_report,
    logged_in,
    login,
    post,
    seed_experiment,
)
from webhooks.models import WebhookDelivery, WebhookEndpoint


def conclude(app, editor, key: str, learnings: str, **overrides) -> None:
    seed_experiment(app, key, layer=None, **overrides)
    post(editor, f"/admin/experiments/{key}/conclude",
         {"outcome": "ship", "winner": "one-page", "learnings": learnings})


def test_learnings_library_lists_concluded_experiments_and_searches(app):
    editor = logged_in(app, "editor")
    conclude(app, editor, "checkout-redesign", "One page cuts payment errors by 40%")
    conclude(app, editor, "address-form", "Autocomplete did not move conversion",
             name="Address form")
    seed_experiment(app, "still-running", layer=None)
    client = logged_in(app, "viewer")
    page = client.get("/admin/learnings").get_data(as_text=True)
    assert "One page cuts payment errors" in page and "Autocomplete did not move" in page
    assert "still-running" not in page and "outcome-ship" in page
    assert "winner <code>one-page</code>" in page
    found = client.get("/admin/learnings?q=payment errors").get_data(as_text=True)
    assert "checkout-redesign" in found and "address-form" not in found
    assert "No concluded experiments match" in client.get(
        "/admin/learnings?q=zzz").get_data(as_text=True)


def test_learnings_show_the_result_numbers_and_search_hypotheses(app):
    editor = logged_in(app, "editor")
    seed_experiment(app, "checkout-redesign", layer=None,
                    hypothesis="Merging address and payment removes friction")
    insert_report(app, "checkout-redesign")  # purchase +11.8 % [+1.0 %, +23.0 %], guardrail better
    post(editor, "/admin/experiments/checkout-redesign/conclude",
         {"outcome": "ship", "winner": "one-page", "learnings": "One page wins"})
    conclude(app, editor, "address-form", "Autocomplete did not move conversion",
             name="Address form", hypothesis="Autocomplete saves typing")
    client = logged_in(app, "viewer")
    page = client.get("/admin/learnings?q=merging address").get_data(as_text=True)
    assert "checkout-redesign" in page and "address-form" not in page
    text = re.sub(r"<[^>]+>|\s+", " ", page)
    assert "purchase (one-page vs control): +11.8% [+1.0%, +23.0%] Better" in re.sub(
        r" +", " ", text)
    assert "Guardrail payment-errors (one-page vs control): −43.0% [−55.0%, −30.0%] Better" in (
        re.sub(r" +", " ", text))
    other = client.get("/admin/learnings?q=saves typing").get_data(as_text=True)
    assert "address-form" in other and "No report with results." in other


def test_power_calculator_gives_the_stats_package_numbers(app):
    client = logged_in(app, "viewer")
    page = client.get("/admin/power?kind=conversion&baseline=0.1&mde=0.05&alpha=0.05"
                      "&power=0.8&variants=2&daily_units=2000").get_data(as_text=True)
    expected = calculate_power("conversion", baseline=0.1, mde=0.05, alpha=0.05, power=0.8,
                               variants=2, daily_units=2000.0)
    shown = re.findall(r"<dd>([^<]+)</dd>", page)
    assert shown == [f"{expected['units_per_variant']:,}", f"{expected['total_units']:,}",
                     str(expected["days"])]


def test_power_calculator_plans_a_sequential_test_for_its_own_intervals(app):
    """The portfolio plans a sequential experiment with design="sequential"; the calculator
    offers the same choice, fixed horizon by default (as POST /api/v1/stats/power)."""
    client = logged_in(app, "viewer")
    query = "/admin/power?kind=conversion&baseline=0.1&mde=0.05&alpha=0.05&power=0.8&variants=2"
    sequential = client.get(query + "&design=sequential").get_data(as_text=True)
    assert re.findall(r"<dd>([^<]+)</dd>", sequential)[0] == "126,753"
    assert '<option value="sequential" selected>' in sequential
    fixed = client.get(query).get_data(as_text=True)
    assert re.findall(r"<dd>([^<]+)</dd>", fixed)[0] == "57,756"
    response = client.get(query + "&design=weekly")
    assert response.status_code == 422
    assert "must be one of fixed_horizon, sequential" in response.get_data(as_text=True)


def test_power_calculator_names_the_bad_field(app):
    client = logged_in(app, "viewer")
    response = client.get("/admin/power?kind=conversion&baseline=1.5&mde=0.05&alpha=0.05"
                          "&power=0.8&variants=2")
    assert response.status_code == 422
    assert 'id="p-baseline-error">must be between 0 and 1' in response.get_data(as_text=True)
    response = client.get("/admin/power?kind=mean&baseline=10&mde=abc&alpha=0.05&power=0.8"
                          "&variants=2")
    assert 'id="p-mde-error">must be a number' in response.get_data(as_text=True)
    response = client.get("/admin/power?kind=mean&baseline=10&mde=0.1&alpha=0.05&power=0.8"
                          "&variants=2")
    assert 'id="p-baseline_sd-error">is required' in response.get_data(as_text=True)


def test_admin_creates_a_user_who_can_log_in(app):
    admin = logged_in(app, "admin")
    response = post(admin, "/admin/users", {"email": "Ana@Example.com", "password": PASSWORD,
                                            "role": "editor"})
    assert response.status_code == 302
    with get_db(app).session() as session:
        user = session.query(User).filter_by(email="ana@example.com").one()
        assert user.role == "editor" and user.password_hash.startswith("$argon2id$")
    assert login(app.test_client(), "ana@example.com").status_code == 302


def test_user_creation_errors_are_shown_and_nothing_is_created(app):
    admin = logged_in(app, "admin")
    response = post(admin, "/admin/users", {"email": "ana@example.com", "password": "short",
                                            "role": "editor"})
    assert response.status_code == 422
    assert "Password: must be at least 8 characters" in response.get_data(as_text=True)
    response = post(admin, "/admin/users", {"email": "admin@example.com", "password": PASSWORD,
                                            "role": "viewer"})
    assert response.status_code == 409
    with get_db(app).session() as session:
        assert session.query(User).count() == 1


def test_admin_changes_a_role_and_deactivates_a_user(app):
    viewer = logged_in(app, "viewer")
    admin = logged_in(app, "admin")
    with get_db(app).session() as session:
        user_id = session.query(User).filter_by(email="viewer@example.com").one().id
    post(admin, f"/admin/users/{user_id}/role", {"role": "editor"})
    assert viewer.get("/admin/experiments/new").status_code == 200  # applies at once
    post(admin, f"/admin/users/{user_id}/active", {"active": "0"})
    with get_db(app).session() as session:
        user = session.get(User, user_id)
        assert (user.role, user.active) == ("editor", False)
        actions = [a.action for a in session.query(AuditEntry).order_by(AuditEntry.id)]
    assert actions[-2:] == ["user.role", "user.deactivate"]
    assert login(app.test_client(), "viewer@example.com").status_code == 401


def test_admin_cannot_lock_themselves_out(app):
    admin = logged_in(app, "admin")
    with get_db(app).session() as session:
        admin_id = session.query(User).filter_by(email="admin@example.com").one().id
    response = post(admin, f"/admin/users/{admin_id}/role", {"role": "viewer"},
                    follow_redirects=True)
    assert "you cannot change the role of your own account" in response.get_data(as_text=True)
    post(admin, f"/admin/users/{admin_id}/active", {"active": "0"})
    with get_db(app).session() as session:
        assert session.get(User, admin_id).active is True
    assert post(admin, "/admin/users/999/role", {"role": "viewer"},
                follow_redirects=True).status_code == 200
    assert post(admin, f"/admin/users/{2**70}/role", {"role": "viewer"}).status_code == 404
    assert admin.get(f"/admin/webhooks/{2**40}").status_code == 404


def test_api_key_is_shown_once_and_works_until_revoked(app, client):
    admin = logged_in(app, "admin")
    response = post(admin, "/admin/api-keys", {"name": "web front", "role": "client"})
    assert response.headers["Cache-Control"] == "no-store"
    raw = re.search(r'id="raw-key" class="mono wide" readonly value="([^"]+)"',
                    response.get_data(as_text=True)).group(1)
    assert raw.startswith("pk_")
    assert raw not in admin.get("/admin/api-keys").get_data(as_text=True)
    headers = {"Authorization": f"Bearer {raw}"}
    assigned = client.post("/api/v1/assign", json={"unit_id": "u1"}, headers=headers)
    assert assigned.status_code == 200
    with get_db(app).session() as session:
        key_id = session.query(ApiKey).filter_by(name="web front").one().id
    post(admin, f"/admin/api-keys/{key_id}/revoke")
    assert client.post("/api/v1/assign", json={"unit_id": "u1"},
                       headers=headers).status_code == 401


def test_api_key_with_bad_role_is_refused(app):
    admin = logged_in(app, "admin")
    response = post(admin, "/admin/api-keys", {"name": "x", "role": "root"})
    assert response.status_code == 422 and "Role: must be one of" in response.get_data(
        as_text=True)


def test_webhook_create_test_deliveries_and_retry(app, httpserver):
    httpserver.expect_request("/hook").respond_with_data("ok")
    admin = logged_in(app, "admin")
    response = post(admin, "/admin/webhooks", {"url": httpserver.url_for("/hook"),
                                               "events": ["experiment.decided"],
                                               "description": "ops"})
    assert response.status_code == 201
    assert re.search(r'id="secret" class="mono wide" readonly value="whsec_',
                     response.get_data(as_text=True))
    with get_db(app).session() as session:
        endpoint_id = session.query(WebhookEndpoint).one().id
    page = post(admin, f"/admin/webhooks/{endpoint_id}/test", follow_redirects=True).get_data(
        as_text=True)
    assert "webhook.test" in page and "delivery-delivered" in page
    with get_db(app).session() as session:
        delivery = session.query(WebhookDelivery).one()
    post(admin, f"/admin/webhooks/{endpoint_id}/deliveries/{delivery.id}/retry")
    with get_db(app).session() as session:
        assert session.get(WebhookDelivery, delivery.id).attempts == 2
    assert len(httpserver.log) == 2


def test_webhook_with_unknown_event_is_refused(app):
    admin = logged_in(app, "admin")
    response = post(admin, "/admin/webhooks", {"url": "https://hooks.example.com/x",
                                               "events": ["nope"]})
    assert response.status_code == 422 and "unknown event type" in response.get_data(
        as_text=True)
    with get_db(app).session() as session:
        assert session.query(WebhookEndpoint).count() == 0


def test_disabled_webhook_cannot_be_tested(app):
    admin = logged_in(app, "admin")
    post(admin, "/admin/webhooks", {"url": "https://hooks.example.com/x",
                                    "events": ["experiment.decided"]})
    with get_db(app).session() as session:
        endpoint_id = session.query(WebhookEndpoint).one().id
    post(admin, f"/admin/webhooks/{endpoint_id}/enabled", {"enabled": "0"})
    page = post(admin, f"/admin/webhooks/{endpoint_id}/test", follow_redirects=True).get_data(
        as_text=True)
    assert "is disabled" in page
    assert admin.get("/admin/webhooks/999").status_code == 404


def test_audit_log_shows_who_did_what(app):
    seed_experiment(app, start=False)
    editor = logged_in(app, "editor")
    post(editor, "/admin/experiments/checkout-redesign/start")
    page = editor.get("/admin/audit?experiment=checkout-redesign").get_data(as_text=True)
    assert "user:editor@example.com" in page and "experiment.start" in page
    assert page.index("experiment.start") < page.index("experiment.create")  # newest first


def test_an_admin_address_without_a_page_is_an_admin_page(app, client):
    """A URL under /admin/ that matches no route gets the admin's 404 page; the API keeps
    its JSON envelope for its own unknown addresses."""
    page = client.get("/admin/no-such-page")
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert "No page here." in page.get_data(as_text=True)
    api = client.get("/api/v1/no-such-resource")
    assert api.status_code == 404 and api.json["error"]["code"] == "not_found"
