"""Helpers shared by the admin UI tests (no tests here): users, login, CSRF, report factory."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.datastructures import MultiDict

from experiments.auth import SYSTEM
from experiments.db import get_db
from experiments.models import Report
from experiments.services.accounts import create_user
from experiments.services.lifecycle import create_experiment, get_experiment, transition
from tests.factories import experiment_payload

PASSWORD = "correct horse battery"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Still argon2id, with test-sized cost: the UI tests log in hundreds of times."""
    monkeypatch.setattr("experiments.auth._password_hasher",
                        PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))


def add_user(app: Flask, role: str, email: str | None = None) -> str:
    """Create a UI user with ``role``; returns the email."""
    email = email or f"{role}@example.com"
    with get_db(app).session() as session:
        create_user(session, email=email, password=PASSWORD, role=role, principal=SYSTEM)
    return email


def csrf_token(client: FlaskClient, path: str = "/admin/login") -> str:
    """The token a real browser would post, scraped from a rendered form."""
    match = _TOKEN.search(client.get(path).get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client: FlaskClient, email: str, password: str = PASSWORD) -> Any:
    """Log in through the form; returns the response."""
    return client.post("/admin/login", data={"email": email, "password": password,
                                             "csrf_token": csrf_token(client)})


def logged_in(app: Flask, role: str) -> FlaskClient:
    """A test client logged in as a new user of ``role``."""
    client = app.test_client()
    response = login(client, add_user(app, role))
    assert response.status_code == 302
    return client


def post(client: FlaskClient, path: str, data: dict[str, Any] | None = None,
         **kwargs: Any) -> Any:
    """POST a form with a valid CSRF token, like the browser does."""
    form = MultiDict(data or {})
    form["csrf_token"] = csrf_token(client, "/admin/power")
    return client.post(path, data=form, **kwargs)


def seed_experiment(app: Flask, key: str = "checkout-redesign", *, start: bool = True,
                    **overrides: Any) -> None:
    """Create (and start) an experiment through the lifecycle service."""
    with get_db(app).session() as session:
        create_experiment(session, experiment_payload(key, **overrides), SYSTEM)
        if start:
            transition(session, key, "start", SYSTEM)


def report_body(key: str = "checkout-redesign", **overrides: Any) -> dict[str, Any]:
    """A SPEC §6 report for the factory experiment (control vs one-page)."""
    body: dict[str, Any] = {
        "experiment": key, "computed_at": "2026-11-24T10:00:00+00:00", "method": "sequential",
        "units": {"control": 5012, "one-page": 4988},
        "srm": {"p_value": 0.81, "detected": False},
        "metrics": [
            {"key": "purchase", "kind": "conversion", "role": "primary",
             "variants": [{"variant": "control", "units": 5012, "estimate": 0.101},
                          {"variant": "one-page", "units": 4988, "estimate": 0.113}],
             "comparisons": [{"variant": "one-page", "absolute_effect": 0.012,
                              "absolute_ci": [0.001, 0.023], "relative_effect": 0.118,
                              "relative_ci": [0.01, 0.23], "p_value": 0.03,
                              "adjusted_p_value": 0.03, "chance_to_win": 0.98,
                              "expected_loss": 0.0004, "significant": True,
                              "verdict": "better"}]},
            {"key": "payment-errors", "kind": "friction", "role": "guardrail",
             "variants": [{"variant": "control", "units": 5012, "estimate": 0.07},
                          {"variant": "one-page", "units": 4988, "estimate": 0.04}],
             "comparisons": [{"variant": "one-page", "absolute_effect": -0.03,
                              "absolute_ci": [-0.04, -0.02], "relative_effect": -0.43,
                              "relative_ci": [-0.55, -0.3], "p_value": 0.0001,
                              "adjusted_p_value": 0.0002, "chance_to_win": 0.999,
                              "expected_loss": 0.0, "significant": True, "verdict": "better"}]},
        ],
        "funnel": [
            {"step": "landing", "variants": {
                "control": {"units": 5012, "rate": 1.0, "from_previous": 1.0},
                "one-page": {"units": 4988, "rate": 1.0, "from_previous": 1.0}}},
            {"step": "cart", "largest_drop_off": True, "variants": {
                "control": {"units": 3100, "rate": 0.62, "from_previous": 0.62},
                "one-page": {"units": 3150, "rate": 0.63, "from_previous": 0.63}}},
            {"step": "payment", "variants": {
                "control": {"units": 2500, "rate": 0.5, "from_previous": 0.81},
                "one-page": {"units": 2700, "rate": 0.54, "from_previous": 0.86}}},
        ],
        "friction_points": [
            {"step": "payment", "friction_kind": "error", "variant": "one-page", "rate": 0.04,
             "control_rate": 0.07, "relative_effect": -0.43, "adjusted_p_value": 0.001}],
        "timeline": [
            {"date": "2026-11-20", "variant": "one-page", "units": 1200,
             "relative_effect": 0.09, "relative_ci": [-0.05, 0.24]},
            {"date": "2026-11-21", "variant": "one-page", "units": 2600,
             "relative_effect": 0.11, "relative_ci": [-0.01, 0.23]},
            {"date": "2026-11-22", "variant": "one-page", "units": 5000,
             "relative_effect": 0.118, "relative_ci": [0.01, 0.23]}],
        "decision": {"outcome": "ship", "winner": "one-page",
                     "reasons": ["primary metric significant", "no guardrail worse"],
                     "decided_at": "2026-11-24T10:00:00+00:00"},
    }
    body.update(copy.deepcopy(overrides))
    return body


def insert_report(app: Flask, key: str = "checkout-redesign", *, age_hours: float = 0,
                  **overrides: Any) -> int:
    """Store a report row as the analysis service would; returns its id."""
    body = report_body(key, **overrides)
    with get_db(app).session() as session:
        experiment = get_experiment(session, key)
        report = Report(experiment_id=experiment.id, method=body["method"], body=body,
                        computed_at=datetime.now(UTC) - timedelta(hours=age_hours))
        session.add(report)
        session.flush()
        return report.id


class _FormFields(HTMLParser):
    """The fields a browser submits from the ``<form>`` with id ``form_id``: named inputs
    (checked boxes only), selects (the selected option, else the first) and textareas, in
    document order, skipping ``<template>`` rows."""

    def __init__(self, form_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self.form_id, self.fields, self.depth = form_id, MultiDict(), 0
        self.inside = False
        self.select: dict[str, Any] | None = None
        self.option: dict[str, str] | None = None
        self.textarea: str | None = None
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        if tag == "form" and a.get("id") == self.form_id:
            self.inside = True
        if tag == "template":
            self.depth += 1
        if tag == "option" and self.select is not None:
            self.option, self.text = a, ""
        if not self.inside or self.depth or "name" not in a:
            return
        if tag == "input" and (a.get("type") not in ("checkbox", "radio") or "checked" in a):
            if a.get("type") not in ("submit", "button"):
                self.fields.add(a["name"], a.get("value", "on" if "checked" in a else ""))
        elif tag == "select":
            self.select = {"name": a["name"], "first": None, "chosen": None}
        elif tag == "textarea":
            self.textarea, self.text = a["name"], ""

    def handle_data(self, data: str) -> None:
        if self.textarea is not None or self.option is not None:
            self.text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "template":
            self.depth -= 1
        elif tag == "form":
            self.inside = False
        elif tag == "option" and self.select is not None and self.option is not None:
            value = self.option.get("value", self.text.strip())
            if self.select["first"] is None:
                self.select["first"] = value
            if "selected" in self.option:
                self.select["chosen"] = value
            self.option = None
        elif tag == "select" and self.select is not None:
            chosen = self.select["chosen"]
            self.fields.add(self.select["name"],
                            chosen if chosen is not None else self.select["first"] or "")
            self.select = None
        elif tag == "textarea" and self.textarea is not None:
            self.fields.add(self.textarea, self.text.removeprefix("\n"))
            self.textarea = None


def submitted_form(page: str, form_id: str) -> MultiDict[str, str]:
    """What the browser posts from ``page``'s form ``form_id``, nothing changed."""
    parser = _FormFields(form_id)
    parser.feed(page)
    return parser.fields
