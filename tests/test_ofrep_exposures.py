"""OFREP exposures (SPEC §4): bulk evaluation records none, the README's OpenFeature hook
records exactly one per flag read — the real SDK and OFREP provider against a live server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.hook import add_hooks, clear_hooks
from openfeature.provider import AbstractProvider, Metadata
from sqlalchemy import func, select

from experiments.models import Exposure
from tests.test_ofrep import start

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "developers" / "openfeature.md"
FLAGS = ("a-flag", "b-flag", "c-flag")


def readme_hook_class() -> type:
    """``ParcoursExposureHook`` exactly as the OpenFeature guide documents it."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    (source,) = [block for block in blocks if "class ParcoursExposureHook" in block]
    namespace: dict[str, Any] = {}
    exec(compile(source, str(GUIDE), "exec"), namespace)  # our own guide
    return namespace["ParcoursExposureHook"]


class BulkCacheProvider(AbstractProvider):
    """What web and mobile OFREP providers do: one bulk evaluation, flags read from it."""

    def __init__(self, endpoint: str, client_key: str, context: EvaluationContext) -> None:
        super().__init__()
        response = requests.post(f"{endpoint}/ofrep/v1/evaluate/flags", timeout=10,
                                 headers={"Authorization": f"Bearer {client_key}"},
                                 json={"context": {"targetingKey": context.targeting_key,
                                                   **context.attributes}})
        response.raise_for_status()
        self.flags = {flag["key"]: flag for flag in response.json()["flags"]}

    def get_metadata(self) -> Metadata:
        return Metadata(name="bulk-cache")

    def _resolve(self, flag_key: str, default_value: Any,
                 evaluation_context: EvaluationContext | None = None
                 ) -> FlagResolutionDetails[Any]:
        flag = self.flags.get(flag_key)
        if flag is None:
            return FlagResolutionDetails(default_value, reason="DEFAULT")
        return FlagResolutionDetails(flag["value"], reason=flag["reason"],
                                     variant=flag["variant"])

    resolve_boolean_details = resolve_string_details = _resolve
    resolve_integer_details = resolve_float_details = resolve_object_details = _resolve


def context(unit_id: str) -> EvaluationContext:
    return EvaluationContext(targeting_key=unit_id, attributes={"country": "FR"})


def exposures(db: Any) -> dict[tuple[str, str], int]:
    """Stored exposures per (flag, unit)."""
    from experiments.models import Experiment

    db.expire_all()
    rows = db.execute(select(Experiment.key, Exposure.unit_id, func.count())
                      .join(Experiment, Experiment.id == Exposure.experiment_id)
                      .group_by(Experiment.key, Exposure.unit_id)).all()
    return {(key, unit): count for key, unit, count in rows}


@pytest.fixture
def running_flags(client, admin_headers) -> None:
    for key in FLAGS:
        start(client, admin_headers, key)


@pytest.fixture
def hooked(live_server, client_key) -> Iterator[None]:
    add_hooks([readme_hook_class()(live_server.url, client_key)])
    yield
    clear_hooks()
    api.clear_providers()


def test_bulk_evaluation_of_a_new_unit_leaves_every_experiment_without_units(
        live_server, client, admin_headers, client_key, db, running_flags):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {client_key}"
    for _ in range(3):
        response = session.post(f"{live_server.url}/ofrep/v1/evaluate/flags",
                                json={"context": {"targetingKey": "new-visitor",
                                                  "country": "FR"}})
        assert response.status_code == 200
        assert {flag["key"] for flag in response.json()["flags"]} == set(FLAGS)
    assert exposures(db) == {}
    for key in FLAGS:
        report = client.post(f"/api/v1/experiments/{key}/analyze", headers=admin_headers)
        assert sum(report.get_json()["units"].values()) == 0


def test_the_readme_hook_records_one_exposure_per_flag_read_from_a_bulk_cache(
        live_server, client_key, db, running_flags, hooked):
    provider = BulkCacheProvider(live_server.url, client_key, context("visitor-1"))
    api.set_provider(provider)
    flags: OpenFeatureClient = api.get_client()
    assert exposures(db) == {}
    details = flags.get_string_details("a-flag", "control", context("visitor-1"))
    assert details.variant in ("control", "one-page") and details.error_code is None
    assert exposures(db) == {("a-flag", "visitor-1"): 1}
    flags.get_string_details("a-flag", "control", context("visitor-1"))
    flags.get_string_details("b-flag", "control", context("visitor-1"))
    assert exposures(db) == {("a-flag", "visitor-1"): 1, ("b-flag", "visitor-1"): 1}


def test_the_readme_hook_with_the_ofrep_provider_stores_one_exposure_per_flag_read(
        live_server, client_key, db, running_flags, hooked):
    api.set_provider(OFREPProvider(
        live_server.url, headers_factory=lambda: {"Authorization": f"Bearer {client_key}"}))
    flags = api.get_client()
    for unit in ("u1", "u2"):
        for _ in range(2):
            assert flags.get_string_details("c-flag", "control", context(unit)).error_code is None
    assert exposures(db) == {("c-flag", "u1"): 1, ("c-flag", "u2"): 1}


def test_the_readme_hook_records_nothing_for_an_excluded_unit(
        live_server, client_key, db, running_flags, hooked):
    excluded = EvaluationContext(targeting_key="visitor-us", attributes={"country": "US"})
    api.set_provider(BulkCacheProvider(live_server.url, client_key, excluded))
    details = api.get_client().get_string_details("a-flag", "fallback", excluded)
    assert (details.value, details.reason) == ("control", "DEFAULT")
    assert exposures(db) == {}


def test_the_readme_hook_records_a_logged_in_customers_exposure_under_the_customer(
        live_server, client_key, db, running_flags, hooked):
    """``user_id`` in the context: the bulk evaluation and the hook's exposure both treat the
    customer as the unit (SPEC §14), so the tablet and the phone share one exposure."""
    for device in ("tablet-1", "phone-1"):
        customer = EvaluationContext(targeting_key=device,
                                     attributes={"country": "FR", "user_id": "customer-7"})
        api.set_provider(BulkCacheProvider(live_server.url, client_key, customer))
        details = api.get_client().get_string_details("a-flag", "control", customer)
        assert details.error_code is None
    assert exposures(db) == {("a-flag", "customer-7"): 1}
