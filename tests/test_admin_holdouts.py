"""Admin holdout pages (SPEC §8, §12): list, create form with scope, holdout page, conclude."""

from __future__ import annotations

import re

from sqlalchemy import select

from experiments.db import get_db
from experiments.models import Holdout
from experiments.services import assignment
from experiments.services.holdouts import holdout_group
from tests.test_admin_support import (
    cheap_argon2,  # noqa: F401  (autouse fixture)
    logged_in,
    post,
    seed_experiment,
)

FORM = {"key": "h2027", "name": "2027 holdout", "percent": "5", "scope_kind": "layers",
        "scope_keys": "checkout, payment", "event": "purchase"}


def test_an_editor_creates_a_holdout_with_a_scope_and_sees_its_groups(app):
    editor = logged_in(app, "editor")
    created = post(editor, "/admin/holdouts", FORM)
    assert created.status_code == 302 and created.location.endswith("/admin/holdouts/h2027")
    with get_db(app).sessionmaker() as session:
        holdout = session.scalars(select(Holdout)).one()
        assert (holdout.percent, holdout.scope) == (0.05, {"layers": ["checkout", "payment"]})
        assert holdout.metrics[0]["event"] == "purchase"
    seed_experiment(app, "checkout-redesign", layer="checkout", targeting=[])
    units = [f"u{i}" for i in range(400)]
    with get_db(app).sessionmaker() as session:
        for unit in units:
            assignment.assign(session, unit_id=unit)
    held = sum(holdout_group("h2027", unit, 0.05) == "holdout" for unit in units)
    measured = sum(holdout_group("h2027", unit, 0.05) == "measure" for unit in units)
    viewer = logged_in(app, "viewer")
    page = viewer.get("/admin/holdouts/h2027").get_data(as_text=True)
    assert "5.0% of visitors held out of layers <code>checkout</code>, <code>payment</code>" \
        in page
    assert f'Held out (control)</th><td class="num">{held}</td>' in page
    assert f'Measured (everything shipped)</th><td class="num">{measured}</td>' in page
    assert "Not computed yet" in page and "Conclude" not in page  # viewers cannot conclude
    listing = viewer.get("/admin/holdouts").get_data(as_text=True)
    assert 'href="/admin/holdouts/h2027">2027 holdout</a>' in listing
    assert "New holdout" not in listing  # the form is for editors


def test_the_form_says_what_to_type_and_keeps_the_input(app):
    editor = logged_in(app, "editor")
    for changes, message in [
            ({"percent": "30"}, "Share held out: type a share above 0 and at most 20 %"),
                             ({"key": "Bad Key"}, "Key: lowercase letters"),
                             ({"scope_kind": "experiments", "scope_keys": ""}, "Scope")]:
        page = post(editor, "/admin/holdouts", {**FORM, **changes})
        text = page.get_data(as_text=True)
        assert page.status_code == 422 and message in text, (changes, text[-3000:])
        assert 'value="2027 holdout"' in text
    with get_db(app).sessionmaker() as session:
        assert session.scalars(select(Holdout)).all() == []


def test_an_editor_concludes_a_holdout_from_its_page(app):
    editor = logged_in(app, "editor")
    post(editor, "/admin/holdouts", {**FORM, "scope_kind": "all"})
    page = editor.get("/admin/holdouts/h2027").get_data(as_text=True)
    assert "held out of every experiment" in page and "Conclude" in page
    done = post(editor, "/admin/holdouts/h2027/conclude", follow_redirects=True)
    assert "Holdout concluded" in done.get_data(as_text=True)
    assert 'status-concluded">concluded' in done.get_data(as_text=True)


def test_the_holdout_page_shows_the_metric_table_and_funnel_after_an_analysis(app):
    editor = logged_in(app, "editor")
    post(editor, "/admin/holdouts", {**FORM, "scope_kind": "all"})
    seed_experiment(app, "checkout-redesign", layer="checkout", targeting=[])
    units = [f"u{i}" for i in range(400)]
    with get_db(app).sessionmaker() as session:
        for unit in units:
            assignment.assign(session, unit_id=unit)
    done = post(editor, "/admin/holdouts/h2027/analyze", follow_redirects=True)
    page = done.get_data(as_text=True)
    assert "Holdout analysed." in page and "Not computed yet" not in page
    assert 'id="metrics-table"' in page and 'data-metric="purchase"' in page
    assert "<code>measure</code>" in page and "<code>holdout</code>" in page
    assert re.search(r"Computed \d{4}-\d\d-\d\d \d\d:\d\d UTC\.", page)  # not ISO
    assert 'id="funnel-table"' in page and '<th scope="row">landing</th>' in page
    viewer = logged_in(app, "viewer")
    assert "Analyse now" not in viewer.get("/admin/holdouts/h2027").get_data(as_text=True)
