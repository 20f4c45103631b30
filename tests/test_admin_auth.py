"""Admin UI sessions: login, logout, cookie flags, CSRF scoped to /admin, roles on every page."""

from __future__ import annotations

import pytest
from flask import Flask

from experiments.db import get_db
from experiments.models import Experiment
from tests.conftest import make_test_app
from tests.test_admin_support import (
    PASSWORD,
    add_user,
    cheap_argon2,  # noqa: F401  (autouse fixture)
    csrf_token,
    logged_in,
    login,
    post,
    seed_experiment,
)

VIEWER_PAGES = ["/admin/", "/admin/experiments", "/admin/experiments/checkout-redesign",
                "/admin/learnings", "/admin/power", "/admin/audit"]
EDITOR_PAGES = ["/admin/experiments/new", "/admin/experiments/checkout-redesign/edit"]
ADMIN_PAGES = ["/admin/users", "/admin/api-keys", "/admin/webhooks"]


def test_anonymous_visitor_is_sent_to_login_with_next(client):
    response = client.get("/admin/experiments?status=running")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/login?next=/admin/experiments?status%3Drunning"


def test_login_page_says_where_the_first_admin_is(client):
    page = client.get("/admin/login").get_data(as_text=True)
    assert "bootstrap-dev" in page and "instance/dev-credentials.json" in page
    assert '<label for="email">Email</label>' in page


def test_login_starts_a_session_and_returns_to_next(app, client):
    email = add_user(app, "viewer")
    response = client.post("/admin/login", data={
        "email": email.upper(), "password": PASSWORD, "next": "/admin/learnings",
        "csrf_token": csrf_token(client)})
    assert response.status_code == 302 and response.headers["Location"] == "/admin/learnings"
    assert email in client.get("/admin/learnings").get_data(as_text=True)


def test_next_never_redirects_off_site(app, client):
    email = add_user(app, "viewer")
    response = client.post("/admin/login", data={
        "email": email, "password": PASSWORD, "next": "//evil.example.com/admin",
        "csrf_token": csrf_token(client)})
    assert response.headers["Location"] == "/admin/"


def test_wrong_password_is_refused_with_one_generic_message(app, client):
    email = add_user(app, "viewer")
    response = login(client, email, "wrong password")
    assert response.status_code == 401
    assert "Wrong email or password" in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_session_cookie_is_httponly_and_samesite_lax(app, client):
    login(client, add_user(app, "viewer"))
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    assert app.config["SESSION_COOKIE_SECURE"] is False  # TESTING serves plain http


def test_session_cookie_is_secure_outside_debug_testing_and_demo(database_url, tmp_path):
    app = make_test_app(database_url, tmp_path, TESTING=False)
    assert app.config["SESSION_COOKIE_SECURE"] is True
    get_db(app).engine.dispose()


def test_logout_ends_the_session(app):
    client = logged_in(app, "viewer")
    response = post(client, "/admin/logout")
    assert response.status_code == 302 and response.headers["Location"] == "/admin/login"
    assert client.get("/admin/").status_code == 302


def test_deactivated_user_loses_an_open_session(app):
    client = logged_in(app, "viewer")
    admin = logged_in(app, "admin")
    with get_db(app).session() as session:
        from experiments.models import User
        user_id = session.query(User).filter_by(email="viewer@example.com").one().id
    post(admin, f"/admin/users/{user_id}/active", {"active": "0"})
    assert client.get("/admin/").status_code == 302


def test_form_without_csrf_token_is_refused_and_changes_nothing(app):
    seed_experiment(app, start=False)
    client = logged_in(app, "editor")
    response = client.post("/admin/experiments/checkout-redesign/start")
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    with get_db(app).session() as session:
        assert session.query(Experiment).one().status == "draft"


def test_login_form_also_needs_the_csrf_token(app, client):
    email = add_user(app, "viewer")
    response = client.post("/admin/login", data={"email": email, "password": PASSWORD})
    assert response.status_code == 400


def test_forged_csrf_token_is_refused(app):
    client = logged_in(app, "editor")
    response = client.post("/admin/experiments/new", data={"csrf_token": "forged"})
    assert response.status_code == 400


def test_json_api_is_not_subject_to_csrf(client, admin_headers):
    from tests.factories import experiment_payload

    response = client.post("/api/v1/experiments", json=experiment_payload(),
                           headers=admin_headers)
    assert response.status_code == 201


@pytest.mark.parametrize("role, allowed", [
    ("viewer", VIEWER_PAGES), ("editor", VIEWER_PAGES + EDITOR_PAGES),
    ("admin", VIEWER_PAGES + EDITOR_PAGES + ADMIN_PAGES)])
def test_each_role_sees_exactly_its_pages(app: Flask, role, allowed):
    seed_experiment(app)
    client = logged_in(app, role)
    statuses = {page: client.get(page).status_code
                for page in VIEWER_PAGES + EDITOR_PAGES + ADMIN_PAGES}
    assert statuses == {page: 200 if page in allowed else 403 for page in statuses}


@pytest.mark.parametrize("path", [
    "/admin/experiments/checkout-redesign/pause", "/admin/experiments/checkout-redesign/conclude",
    "/admin/experiments/checkout-redesign/iterate", "/admin/experiments/new"])
def test_viewer_cannot_change_experiments(app, path):
    seed_experiment(app)
    client = logged_in(app, "viewer")
    response = post(client, path, {"outcome": "ship", "winner": "one-page", "new_key": "x-2"})
    assert response.status_code == 403
    with get_db(app).session() as session:
        assert [(e.key, e.status) for e in session.query(Experiment)] == [
            ("checkout-redesign", "running")]


@pytest.mark.parametrize("path", ["/admin/users", "/admin/api-keys", "/admin/webhooks"])
def test_editor_cannot_use_admin_forms(app, path):
    client = logged_in(app, "editor")
    response = post(client, path, {"email": "x@example.com", "password": "long enough",
                                   "role": "admin", "name": "k", "url": "http://127.0.0.1/"})
    assert response.status_code == 403


def test_viewer_sees_no_edit_buttons(app):
    seed_experiment(app)
    page = logged_in(app, "viewer").get("/admin/experiments/checkout-redesign").get_data(
        as_text=True)
    assert "/pause" not in page and ">Edit<" not in page and "New experiment" not in page
