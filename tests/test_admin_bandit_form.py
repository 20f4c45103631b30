"""The experiment form sets the allocation (SPEC §13) with the API's validation."""

from __future__ import annotations

import re

from experiments.db import get_db
from experiments.models import Experiment
from tests.test_admin_experiments import errors_on, form_data, load
from tests.test_admin_support import cheap_argon2, logged_in, post  # noqa: F401  (autouse)

BANDIT_FORM = {"layer": "", "overrides": "", "analysis_method": "frequentist",
               "allocation_type": "bandit", "allocation_burn_in_hours": "12",
               "allocation_update_every_hours": "6", "allocation_min_weight": "0.05",
               "allocation_min_units_per_arm": "200"}


def selected_type(page: str) -> str:
    select = re.search(r'<select id="f-allocation-type"[^>]*>(.*?)</select>', page, re.S)
    assert select is not None
    (chosen,) = re.findall(r"<option selected>(\w+)</option>", select.group(1))
    return chosen


def value_of(page: str, name: str) -> str:
    found = re.search(rf'<input id="f-allocation-{name}" name="allocation_{name}" '
                      r'value="([^"]*)"', page)
    assert found is not None, name
    return found.group(1)


def test_new_form_offers_a_fixed_allocation_and_the_bandit_defaults(app):
    page = logged_in(app, "editor").get("/admin/experiments/new").get_data(as_text=True)
    assert selected_type(page) == "fixed"
    assert [value_of(page, name) for name in ("burn_in_hours", "update_every_hours",
                                              "min_weight", "min_units_per_arm")] == \
        ["24.0", "24.0", "0.01", "100"]


def test_create_and_edit_a_bandit_through_the_form(app):
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/new", form_data(**BANDIT_FORM))
    assert response.status_code == 302
    assert load(app, "address-autocomplete")["allocation"] == {
        "type": "bandit", "burn_in_hours": 12.0, "update_every_hours": 6.0,
        "min_weight": 0.05, "min_units_per_arm": 200}
    page = client.get("/admin/experiments/address-autocomplete/edit").get_data(as_text=True)
    assert selected_type(page) == "bandit"
    assert value_of(page, "min_weight") == "0.05" and value_of(page, "burn_in_hours") == "12.0"
    response = post(client, "/admin/experiments/address-autocomplete/edit",
                    form_data(**{**BANDIT_FORM, "allocation_min_weight": "0.1"}))
    assert response.status_code == 302
    assert load(app, "address-autocomplete")["allocation"]["min_weight"] == 0.1
    response = post(client, "/admin/experiments/address-autocomplete/edit",
                    form_data(**{**BANDIT_FORM, "allocation_type": "fixed"}))
    assert response.status_code == 302
    assert load(app, "address-autocomplete")["allocation"] == {"type": "fixed"}


def test_bad_bandit_settings_are_shown_on_their_fields_and_nothing_is_created(app):
    client = logged_in(app, "editor")
    response = post(client, "/admin/experiments/new", form_data(**{
        **BANDIT_FORM, "allocation_min_weight": "0.7", "allocation_min_units_per_arm": "many",
        "allocation_update_every_hours": "0"}))
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    errors = errors_on(page)
    assert {"f-allocation-min_weight", "f-allocation-min_units_per_arm",
            "f-allocation-update_every_hours"} <= set(errors)
    assert "0.5" in errors["f-allocation-min_weight"]
    assert selected_type(page) == "bandit" and value_of(page, "min_weight") == "0.7"
    response = post(client, "/admin/experiments/new", form_data(**{
        **BANDIT_FORM, "metric_kind": ["ratio", "friction"],
        "metric_numerator": ["purchase", ""], "metric_denominator": ["visit", ""]}))
    assert response.status_code == 422
    assert "f-metrics-0-kind" in errors_on(response.get_data(as_text=True))
    with get_db(app).session() as session:
        assert session.query(Experiment).count() == 0
