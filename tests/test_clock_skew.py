"""Clock skew (SPEC §4, §5): client times corrected by ``received_at − sent_at``, raw kept.

A browser whose clock is 90 s behind (or ahead) reads its variant, sends the exposure
and then its journey, each request saying when the client sent it. With ``sent_at`` every
event of the journey, the first step included, lands after the exposure and counts in
the report; without it the old rule stands (client times stored as sent).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from experiments.db import utcnow
from experiments.models import Event, Experiment, Exposure

BASE = "/api/v1/experiments/checkout-redesign"
JOURNEY = ["landing", "cart", "checkout", "payment", "confirmation"]


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def visit(client, headers, unit: str, skew: timedelta, *, with_sent_at: bool = True) -> None:
    """A browser whose clock reads server time + ``skew``: variant read, exposure, journey.

    Like the SDK, the exposure and the batch that follows it carry one ``sent_at``.
    """
    clock = utcnow() + skew
    assigned = client.post("/api/v1/assign", headers=headers, json={
        "unit_id": unit, "experiments": ["checkout-redesign"], "track": False})
    assert assigned.status_code == 200
    sent = {"sent_at": stamp(clock + timedelta(milliseconds=5))} if with_sent_at else {}
    exposed = client.post("/api/v1/exposures", headers=headers, json={
        "experiment": "checkout-redesign", "unit_id": unit, "occurred_at": stamp(clock), **sent})
    assert exposed.status_code == 200, exposed.get_json()
    journey = [{"event_id": f"{unit}-{step}", "unit_id": unit, "type": "step", "step": step,
                "occurred_at": stamp(clock)} for step in JOURNEY]
    journey.append({"event_id": f"{unit}-buy", "unit_id": unit, "type": "conversion",
                    "name": "purchase", "value": 20.0, "occurred_at": stamp(clock)})
    response = client.post("/api/v1/events", headers=headers, json={"events": journey, **sent})
    assert response.get_json() == {"accepted": 6, "duplicates": 0, "rejected": []}


def whole_ms(moment: datetime) -> datetime:
    """What survives :func:`stamp`."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def funnel(report) -> dict[str, int]:
    return {entry["step"]: sum(v["units"] for v in entry["variants"].values())
            for entry in report["funnel"]}


def purchases(report) -> float:
    units = report["units"]
    purchase = report["metrics"][0]
    return sum(v["estimate"] * units[v["variant"]] for v in purchase["variants"])


@pytest.mark.parametrize("skew_s", [-90, 90])
def test_a_skewed_client_with_sent_at_loses_no_event(client, client_headers, admin_headers,
                                                     started, skew_s):
    units = [f"skewed-{index}" for index in range(4)]
    for unit in units:
        visit(client, client_headers, unit, timedelta(seconds=skew_s))
    report = client.post(f"{BASE}/analyze", headers=admin_headers).get_json()
    assert sum(report["units"].values()) == 4
    assert funnel(report) == dict.fromkeys(JOURNEY, 4)
    assert purchases(report) == pytest.approx(4)


def test_without_sent_at_a_client_behind_loses_its_first_seconds(client, client_headers,
                                                                admin_headers, started):
    """The old behaviour: the exposure is clamped to the received time, the events keep
    their client times, 90 s earlier, so none counts."""
    visit(client, client_headers, "old-sdk", timedelta(seconds=-90), with_sent_at=False)
    report = client.post(f"{BASE}/analyze", headers=admin_headers).get_json()
    assert sum(report["units"].values()) == 1
    assert funnel(report) == dict.fromkeys(JOURNEY, 0)


def test_event_times_are_corrected_clamped_and_the_raw_time_kept(client, client_headers, db):
    before = utcnow()
    client_now = whole_ms(before - timedelta(minutes=10))
    events = [{"event_id": "a", "unit_id": "u", "type": "step", "step": "cart",
               "occurred_at": stamp(client_now - timedelta(seconds=30))},
              {"event_id": "b", "unit_id": "u", "type": "step", "step": "cart",
               "occurred_at": stamp(client_now + timedelta(hours=1))},  # after its own send
              {"event_id": "c", "unit_id": "u", "type": "step", "step": "cart"}]
    response = client.post("/api/v1/events", headers=client_headers,
                           json={"events": events, "sent_at": stamp(client_now)})
    assert response.get_json()["accepted"] == 3
    after = utcnow()
    rows = {row.event_id: row for row in db.scalars(select(Event))}
    shifted = rows["a"].occurred_at + timedelta(seconds=30)
    assert before <= shifted <= after  # 30 s before the send, on the server's clock
    assert rows["a"].client_occurred_at == client_now - timedelta(seconds=30)
    assert rows["b"].occurred_at == rows["b"].received_at  # clamped: never after receipt
    assert rows["b"].client_occurred_at == client_now + timedelta(hours=1)
    assert rows["c"].occurred_at == rows["c"].received_at and rows["c"].client_occurred_at is None


def test_events_without_sent_at_keep_their_client_times(client, client_headers, db):
    moment = utcnow().replace(microsecond=0) - timedelta(seconds=90)
    client.post("/api/v1/events", headers=client_headers, json={"events": [
        {"event_id": "old", "unit_id": "u", "type": "step", "step": "cart",
         "occurred_at": stamp(moment)}]})
    row = db.scalar(select(Event))
    assert row.occurred_at == moment and row.client_occurred_at == moment


def test_an_exposure_is_clamped_to_a_day_and_floored_at_the_start(client, client_headers,
                                                                   started, db):
    now = utcnow()
    client.post("/api/v1/exposures", headers=client_headers, json={
        "experiment": "checkout-redesign", "unit_id": "ancient",
        "occurred_at": stamp(now - timedelta(days=3))})
    client.post("/api/v1/assign", headers=client_headers, json={
        "unit_id": "ahead", "experiments": ["checkout-redesign"],
        "occurred_at": stamp(now + timedelta(hours=2))})
    started_at = db.scalar(select(Experiment.started_at))
    rows = {row.unit_id: row for row in db.scalars(select(Exposure))}
    assert rows["ancient"].exposed_at == started_at  # the day's clamp, then the start
    assert rows["ancient"].client_exposed_at == whole_ms(now - timedelta(days=3))
    assert now <= rows["ahead"].exposed_at <= utcnow()  # never after it was received


def test_an_exposure_is_corrected_by_sent_at(client, client_headers, started, db):
    db.execute(update(Experiment).values(started_at=utcnow() - timedelta(hours=1),
                                         version=Experiment.version + 1))
    db.commit()  # started an hour ago: the floor is not what this test is about
    client_now = utcnow() + timedelta(hours=3)
    before = utcnow()
    response = client.post("/api/v1/exposures", headers=client_headers, json={
        "experiment": "checkout-redesign", "unit_id": "fast-clock",
        "occurred_at": stamp(client_now - timedelta(seconds=20)), "sent_at": stamp(client_now)})
    assert response.status_code == 200
    row = db.scalar(select(Exposure))
    assert before - timedelta(seconds=20) <= row.exposed_at <= utcnow() - timedelta(seconds=19)


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/events", {"events": []}),
    ("/api/v1/exposures", {"experiment": "checkout-redesign", "unit_id": "u"}),
    ("/api/v1/assign", {"unit_id": "u"}),
])
@pytest.mark.parametrize("bad", ["yesterday", 1733300000, "2026-12-04T10:00:00",
                                 "2026-02-30T10:00:00Z", "0000-12-31T23:00:00Z",
                                 "0001-01-01T00:00:00+01:00"])
def test_a_bad_sent_at_is_a_422_naming_it(client, client_headers, started, path, body, bad):
    response = client.post(path, headers=client_headers, json={**body, "sent_at": bad})
    assert response.status_code == 422
    fields = [detail["field"] for detail in response.get_json()["error"]["details"]]
    assert fields == ["sent_at"]


def test_far_off_client_times_never_overflow(client, client_headers, started, db):
    """Year-1 and year-9999 client times with a sane sent_at: refused or clamped, never a 500."""
    sent = {"sent_at": stamp(utcnow() - timedelta(days=1))}
    events = [{"unit_id": "u", "type": "step", "step": "cart", "occurred_at": moment}
              for moment in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z")]
    response = client.post("/api/v1/events", headers=client_headers,
                           json={"events": events, **sent})
    assert response.status_code == 200
    # year 1 is before 2000-01-01, year 9999 more than 24 h ahead
    assert [item["index"] for item in response.get_json()["rejected"]] == [0, 1]
    for moment in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):
        response = client.post("/api/v1/exposures", headers=client_headers, json={
            "experiment": "checkout-redesign", "unit_id": f"far-{moment[:4]}",
            "occurred_at": moment, **sent})
        assert response.status_code == 200
    started_at = db.scalar(select(Experiment.started_at))
    exposed = {row.unit_id: row.exposed_at for row in db.scalars(select(Exposure))}
    assert exposed["far-0001"] == started_at  # a day before receipt, then the start
    assert started_at <= exposed["far-9999"] <= utcnow()  # never after receipt


def test_a_clock_reset_to_1970_loses_no_event(client, client_headers, admin_headers,
                                              started, db):
    """The commonest wrong clock: the exposures and the journeys, all read on it, land at
    the present on the server's clock and count in the report."""
    units = [f"epoch-{index}" for index in range(4)]
    before = utcnow()
    for unit in units:
        visit(client, client_headers, unit, datetime(1970, 1, 1, tzinfo=UTC) - utcnow())
    after = utcnow()
    exposed = {row.unit_id: row for row in db.scalars(select(Exposure))}
    events = db.scalars(select(Event)).all()
    assert sorted(exposed) == units and len(events) == 6 * len(units)
    for exposure in exposed.values():
        assert exposure.client_exposed_at < datetime(1970, 1, 2, tzinfo=UTC)
        assert before - timedelta(seconds=1) <= exposure.exposed_at <= after
    for event in events:  # received − (sent_at − occurred_at): 5 ms before receipt
        assert event.client_occurred_at < datetime(1970, 1, 2, tzinfo=UTC)
        assert event.occurred_at == event.received_at - timedelta(milliseconds=5)
        assert exposed[event.unit_id].exposed_at <= event.occurred_at <= after
    report = client.post(f"{BASE}/analyze", headers=admin_headers).get_json()
    assert sum(report["units"].values()) == 4
    assert funnel(report) == dict.fromkeys(JOURNEY, 4)
    assert purchases(report) == pytest.approx(4)


def rejected_fields(body) -> dict[int, list[tuple[str, str]]]:
    return {item["index"]: [(d["field"], d["message"]) for d in item["error"]["details"]]
            for item in body["rejected"]}


FUTURE = "is more than 24 h in the future"
TOO_EARLY = "is before 2000-01-01T00:00:00Z once corrected by sent_at"


@pytest.mark.parametrize(("sent_at", "occurred", "outcome"), [
    ("0001-01-01T00:00:00Z", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"], [0, 0]),
    ("0001-01-01T00:00:00Z", ["0001-01-01T00:00:00Z", "0001-01-02T00:00:01Z",
                              "9999-12-31T23:59:59Z", None], [0, FUTURE, FUTURE, 0]),
    ("9999-12-31T23:59:59Z", ["9999-12-31T23:59:58Z", "9999-12-31T23:59:59.999999Z"], [1, 0]),
    ("9999-12-31T23:59:59Z", ["9999-12-31T23:59:58Z", "0001-01-01T00:00:00Z",
                              "2026-11-24T10:00:00Z", None], [1, TOO_EARLY, TOO_EARLY, 0]),
])
def test_a_far_off_sent_at_decides_each_event_on_its_own(client, client_headers, db, sent_at,
                                                         occurred, outcome):
    """Any valid sent_at is taken. An event stored is at ``received − (sent_at −
    occurred_at)``, never after receipt (an int: seconds before receipt); one whose
    time is more than 24 h after its own send, or before 2000 once corrected, is
    rejected alone, inside the 200. The first two batches take the one-pass lane."""
    events = [{"event_id": f"e{index}", "unit_id": "u", "type": "step", "step": "cart",
               **({} if moment is None else {"occurred_at": moment})}
              for index, moment in enumerate(occurred)]
    response = client.post("/api/v1/events", headers=client_headers,
                           json={"events": events, "sent_at": sent_at})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    kept = {f"e{index}": lag for index, lag in enumerate(outcome) if isinstance(lag, int)}
    assert body["accepted"] == len(kept)
    assert rejected_fields(body) == {index: [(f"events[{index}].occurred_at", message)]
                                     for index, message in enumerate(outcome)
                                     if isinstance(message, str)}
    rows = {row.event_id: row for row in db.scalars(select(Event))}
    assert {event_id: (row.received_at - row.occurred_at).total_seconds()
            for event_id, row in rows.items()} == kept


@pytest.mark.parametrize(("sent_at", "occurred_at", "floored"), [
    ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z", False),
    ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", False),  # after its send: at receipt
    ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z", False),
    ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", True),   # a day back, then the start
])
def test_a_far_off_sent_at_dates_an_exposure(client, client_headers, started, db, sent_at,
                                             occurred_at, floored):
    before = utcnow()
    times = {"occurred_at": occurred_at, "sent_at": sent_at}
    for path, body in [("/api/v1/exposures", {"experiment": "checkout-redesign"}),
                       ("/api/v1/assign", {"experiments": ["checkout-redesign"]})]:
        response = client.post(path, headers=client_headers,
                               json={**body, "unit_id": path, **times})
        assert response.status_code == 200, response.get_json()
    started_at = db.scalar(select(Experiment.started_at))
    exposed = [row.exposed_at for row in db.scalars(select(Exposure))]
    assert len(exposed) == 2
    for moment in exposed:
        assert moment == started_at if floored else before <= moment <= utcnow()
