"""Assignment speed (SPEC §9), as ratios measured in this run.

1. In-process: µs per decision for one experiment (:func:`decide` on the cached
   configuration) vs the GrowthBook Python SDK's ``GrowthBook(attributes=…).run(
   Experiment(…))`` on the same unit ids. Target ≥ 10× faster. Beside it, the holdout
   check (SPEC §12): :func:`decide_all` for that experiment with no holdout (its cost
   over ``decide`` must not be measurable) and with a running holdout covering it.
2. HTTP: requests/s of ``POST /api/v1/assign`` (3 running experiments) vs a bare Flask
   JSON endpoint, both under gunicorn with the deployed settings (gunicorn.conf.py: its
   worker class and workers for the database on this machine; no access log), loaded by
   keep-alive ``http.client`` connections from several processes on loopback.
   Target ≥ 0.5×. Phases: returning units (already exposed, seen by the worker), units
   exposed on another worker (first visit here), new units (first exposure stored), and
   logged-in customers on another device (``user_id``: the cluster's exposures are read
   by one indexed lookup, SPEC §14).

PostgreSQL (``PARCOURS_BENCH_POSTGRES_URL``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) in a fresh database created and
dropped here; SQLite when PostgreSQL is unreachable.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy import Engine, insert, text
from sqlalchemy.exc import OperationalError

from bench.support import (
    POSTGRES_URL,
    describe_shape,
    gunicorn_defaults,
    scratch_postgres_database,
)
from bench.support import gunicorn as serve

ROOT = Path(__file__).resolve().parent.parent
CLIENTS, CONNECTIONS = 4, 8
PHASE_S = float(os.environ.get("PARCOURS_BENCH_ASSIGN_SECONDS", 3))
ROUNDS = 5
PHASES = ("returning", "elsewhere", "new", "user")
DECISIONS = 10_000
EXPOSED_UNITS = 150_000  # enough for every round's "elsewhere" phase to get units of its own
RETURNING_UNITS = 200  # a hot set: returning visitors, cached by every worker after warm-up
LINKED_CUSTOMERS = 20_000  # old-N was identified as customer-N (the "user" phase's customers)
ATTRIBUTES = {"country": "FR", "plan": "pro"}
EXPERIMENTS = ("checkout-redesign", "address-autocomplete", "payment-wallets")


def experiment_body(key: str) -> dict[str, Any]:
    """A realistic running experiment: 2 arms, targeting, full traffic."""
    return {
        "key": key, "name": key, "journey": ["cart", "checkout", "payment"],
        "variants": [{"key": "control", "weight": 0.5, "is_control": True},
                     {"key": "treatment", "weight": 0.5, "payload": {"value": "new"}}],
        "targeting": [{"attribute": "country", "op": "in", "value": ["FR", "BE"]}],
        "metrics": [{"key": "purchase", "kind": "conversion", "event": "purchase",
                     "role": "primary"}],
    }


# --- 1. in-process decision vs GrowthBook ---------------------------------------------------

def per_decision_us() -> tuple[float, float]:
    """µs per decision: Parcours ``decide`` and GrowthBook ``run``, same ids and split."""
    from growthbook import Experiment, GrowthBook

    from experiments.services.assignment import decide
    from experiments.services.config_cache import VariantConfig, experiment_config

    config = experiment_config(
        id=1, key="checkout-redesign", salt="a1b2c3d4", traffic=1.0,
        variants=[VariantConfig("control", 0.5, True, {}), VariantConfig("treatment", 0.5,
                                                                         False, {})],
        targeting=[{"attribute": "country", "op": "in", "value": ["FR", "BE"]}])
    gb_experiment = Experiment(key="checkout-redesign", variations=["control", "treatment"],
                               weights=[0.5, 0.5], coverage=1.0,
                               condition={"country": {"$in": ["FR", "BE"]}})
    units = [f"visitor-{index}" for index in range(DECISIONS)]
    ours: list[str] = []
    theirs: list[str] = []
    parcours_us = growthbook_us = float("inf")
    for _ in range(5):  # alternate and keep the best of each: other load hits both alike
        started = time.perf_counter()
        ours = [decide(config, unit, ATTRIBUTES).variant.key for unit in units]
        parcours_us = min(parcours_us, (time.perf_counter() - started) / len(units) * 1e6)
        started = time.perf_counter()
        theirs = [GrowthBook(attributes={"id": unit, **ATTRIBUTES}).run(gb_experiment).value
                  for unit in units]
        growthbook_us = min(growthbook_us, (time.perf_counter() - started) / len(units) * 1e6)
    assert set(ours) == set(theirs) == {"control", "treatment"}
    return parcours_us, growthbook_us


def holdout_decision_us() -> tuple[float, float, float]:
    """µs per decision for one experiment: ``decide``; ``decide_all`` with no holdout; and
    with a 5 % holdout covering it (every unit hashed for its group, held units answered)."""
    from experiments.services.assignment import decide, decide_all
    from experiments.services.config_cache import ConfigSnapshot, VariantConfig, experiment_config
    from experiments.services.holdouts import HoldoutConfig

    config = experiment_config(
        id=1, key="checkout-redesign", salt="a1b2c3d4",
        variants=[VariantConfig("control", 0.5, True, {}),
                  VariantConfig("treatment", 0.5, False, {})],
        targeting=[{"attribute": "country", "op": "in", "value": ["FR", "BE"]}])
    holdout = HoldoutConfig.build(1, "h2027", 0.05, {"experiments": ["*"]})
    plain = ConfigSnapshot(by_key={config.key: config}, running=(config,))
    held = ConfigSnapshot(by_key={config.key: config}, running=(config,),
                          holdouts_of={config.id: (holdout,)})
    units = [f"visitor-{index}" for index in range(DECISIONS)]
    configs = [config]
    best = [float("inf")] * 3
    for _ in range(5):  # interleaved, best of each, as above
        for slot, run in enumerate((
                lambda unit: decide(config, unit, ATTRIBUTES),
                lambda unit: decide_all(plain, configs, unit, ATTRIBUTES),
                lambda unit: decide_all(held, configs, unit, ATTRIBUTES))):
            started = time.perf_counter()
            for unit in units:
                run(unit)
            best[slot] = min(best[slot], (time.perf_counter() - started) / len(units) * 1e6)
    return best[0], best[1], best[2]


# --- 2. HTTP under gunicorn ----------------------------------------------------------------

def bare_app() -> Flask:
    """The baseline: a Flask JSON endpoint that parses the body and answers JSON."""
    app = Flask("bare")

    @app.post("/api/v1/assign")
    def assign() -> Any:
        body = request.get_json()
        return jsonify(unit_id=body["unit_id"], assignments=[])

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    return app


@contextmanager
def database(tmp: Path) -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards), or SQLite if there is none."""
    try:
        with scratch_postgres_database(POSTGRES_URL) as url:
            yield url
    except OperationalError as exc:  # no server: fall back, and say so
        print(f"  PostgreSQL unavailable ({type(exc).__name__}); using SQLite")
        yield f"sqlite:///{tmp / 'bench.db'}"


def prepare(url: str, instance: Path) -> str:
    """Migrate, start the experiments, expose EXPOSED_UNITS units; return a client key."""
    from experiments.app import create_app
    from experiments.auth import SYSTEM
    from experiments.db import get_db
    from experiments.migrate import upgrade
    from experiments.models import Exposure, IdentityLink
    from experiments.services import lifecycle
    from experiments.services.accounts import create_api_key
    from experiments.services.assignment import decide
    from experiments.services.config_cache import load_snapshot

    upgrade(url)
    app = create_app({"DATABASE_URL": url, "INSTANCE_PATH": str(instance), "SCHEDULER": False,
                      "SECRET_KEY": "bench"})
    with app.app_context(), get_db(app).session() as session:
        for key in EXPERIMENTS:
            lifecycle.create_experiment(session, experiment_body(key), SYSTEM)
            lifecycle.transition(session, key, "start", SYSTEM)
        client_key = create_api_key(session, name="bench", role="client", principal=SYSTEM)[1]
        snapshot = load_snapshot(session)
        rows = [{"experiment_id": config.id, "unit_id": f"old-{index}", "attributes": ATTRIBUTES,
                 "variant_key": decide(config, f"old-{index}", ATTRIBUTES).variant.key,
                 "is_override": False}
                for config in snapshot.running for index in range(EXPOSED_UNITS)]
        session.execute(insert(Exposure), rows)
        session.execute(insert(IdentityLink), [
            {"anonymous_id": f"old-{index}", "user_id": f"customer-{index}"}
            for index in range(LINKED_CUSTOMERS)])
    settle(get_db(app).engine)
    get_db(app).engine.dispose()
    return client_key


def settle(engine: Engine) -> None:
    """VACUUM ANALYZE after the bulk load, as autovacuum would have long done on a live
    table; left to autovacuum, it lands in a measured phase and only the Parcours side
    pays for it (the bare endpoint has no database)."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))


@contextmanager
def gunicorn(target: str, env: dict[str, str], tmp: Path) -> Iterator[int]:
    """Serve ``target`` with the deployed settings (bench/gunicorn_bench.conf.py: the
    repo's gunicorn.conf.py without access log) for ``env``'s database; stop it after."""
    args = ["-c", str(ROOT / "bench" / "gunicorn_bench.conf.py"), "--keep-alive", "30",
            "--log-level", "warning"]
    with serve(target, env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp, args=args) as (port, _):
        yield port


def _client(port: int, key: str, phase: str, index: int, start_at: float, stop_at: float,
            first_unit: int, results: Any) -> None:
    """One process driving CONNECTIONS keep-alive connections; reports (ok, errors, most
    requests on one connection)."""
    counts = [(0, 0)] * CONNECTIONS

    def connection_loop(slot: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        units = _units(phase, index * CONNECTIONS + slot, first_unit)
        ok = errors = 0
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < stop_at:
            unit = next(units)
            payload = {"unit_id": unit, "attributes": ATTRIBUTES}
            if phase == "user":  # device-<connection>-<n> belongs to customer-<n>
                payload["user_id"] = "customer-" + unit.rsplit("-", 1)[1]
            body = json.dumps(payload)
            connection.request("POST", "/api/v1/assign", body, headers)
            response = connection.getresponse()
            response.read()
            ok, errors = (ok + 1, errors) if response.status == 200 else (ok, errors + 1)
        counts[slot] = (ok, errors)

    threads = [threading.Thread(target=connection_loop, args=(slot,))
               for slot in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((sum(ok for ok, _ in counts), sum(errors for _, errors in counts),
                 max(ok + errors for ok, errors in counts)))


def _units(phase: str, index: int, first_unit: int) -> Iterator[str]:
    """Unit ids per phase: returning (exposed, revisited), exposed elsewhere (from
    ``first_unit`` on, interleaved across connections), or new."""
    rng = random.Random(index)
    if phase == "returning":
        while True:
            yield f"old-{rng.randrange(RETURNING_UNITS)}"
    if phase == "user":  # a customer's new device: the cluster is read, nothing written
        while True:
            yield f"device-{index}-{rng.randrange(LINKED_CUSTOMERS)}"
    if phase == "elsewhere":
        for number in range(first_unit + index, EXPOSED_UNITS, CLIENTS * CONNECTIONS):
            yield f"old-{number}"
        raise RuntimeError("raise EXPOSED_UNITS: the elsewhere phase ran out of units")
    prefix = uuid.uuid4().hex[:8]
    number = 0
    while True:
        number += 1
        yield f"new-{prefix}-{number}"


# The next "elsewhere" unit no phase has used: each phase gets units exposed earlier that no
# worker has seen yet (reusing them in later rounds would let some hit a worker's cache).
_next_elsewhere = RETURNING_UNITS


def requests_per_second(port: int, key: str, phase: str, seconds: float = PHASE_S) -> float:
    """Completed 200s per second from CLIENTS processes over ``seconds``."""
    global _next_elsewhere
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start_at = time.time() + 0.5
    stop_at = start_at + seconds
    processes = [context.Process(target=_client, args=(port, key, phase, index, start_at,
                                                       stop_at, _next_elsewhere, results))
                 for index in range(CLIENTS)]
    for process in processes:
        process.start()
    counts = [results.get(timeout=seconds + 60) for _ in processes]
    for process in processes:
        process.join()
    if phase == "elsewhere":
        _next_elsewhere += max(most for _, _, most in counts) * CLIENTS * CONNECTIONS
    errors = sum(error for _, error, _ in counts)
    if errors:
        raise RuntimeError(f"{errors} non-200 responses in phase {phase!r}")
    return sum(ok for ok, _, _ in counts) / seconds


def http_ratios(tmp: Path) -> tuple[tuple[int, int], dict[str, list[float]]]:
    """How gunicorn serves, and the rates per phase, one per round; rounds interleave the
    servers so that load from other processes on the machine hits both sides alike."""
    with database(tmp) as url:
        key = prepare(url, tmp)
        shape = describe_shape(*gunicorn_defaults(url))
        env = {"PARCOURS_DATABASE_URL": url, "PARCOURS_INSTANCE_PATH": str(tmp),
               "PARCOURS_SECRET_KEY": "bench", "PARCOURS_SCHEDULER": "off",
               "PARCOURS_LOG_LEVEL": "WARNING"}
        # The bare app ignores PARCOURS_*; the same database URL gives it the same settings.
        with gunicorn("bench.bench_assign:bare_app()", env, tmp) as bare_port, \
                gunicorn("wsgi:app", env, tmp) as port:
            requests_per_second(bare_port, key, "new", 1.0)  # warm-up
            requests_per_second(port, key, "returning", 3.0)  # every worker sees the hot set
            rates: dict[str, list[float]] = {"bare": [], **{phase: [] for phase in PHASES}}
            for _ in range(ROUNDS):
                bare = requests_per_second(bare_port, key, "new")
                rates["bare"].append(bare)
                for phase in PHASES:
                    rates[phase].append(requests_per_second(port, key, phase))
    return shape, rates


def main() -> None:
    """Print both comparisons as ratios (HTTP: median over interleaved rounds)."""
    parcours_us, growthbook_us = per_decision_us()
    print(f"  in-process decision: parcours {parcours_us:.2f} µs, growthbook run() "
          f"{growthbook_us:.2f} µs -> {growthbook_us / parcours_us:.1f}x faster (target >= 10x)")
    bare_us, no_holdout_us, holdout_us = holdout_decision_us()
    print(f"  in-process decision with holdouts applied: no holdout {no_holdout_us:.2f} µs "
          f"({no_holdout_us / bare_us:.2f}x decide alone), a 5 % holdout covering the "
          f"experiment {holdout_us:.2f} µs ({holdout_us / bare_us:.2f}x)")
    with tempfile.TemporaryDirectory() as tmp:
        shape, rates = http_ratios(Path(tmp))
    bare = rates.pop("bare")
    print(f"  HTTP, gunicorn {shape}, {CLIENTS}x{CONNECTIONS} keep-alive "
          f"client connections, median of {ROUNDS} rounds: bare Flask JSON endpoint "
          f"{statistics.median(bare):.0f} req/s")
    labels = {"returning": "returning units (exposure cached by the worker)",
              "elsewhere": "exposed units, first visit to this worker",
              "new": "new units (first exposure stored)",
              "user": "logged-in customers, another device (user_id: one cluster lookup)"}
    for phase, values in rates.items():
        ratio = statistics.median(value / base for value, base in zip(values, bare, strict=True))
        print(f"  POST /api/v1/assign x3 experiments, {labels[phase]}: "
              f"{statistics.median(values):.0f} req/s -> {ratio:.2f}x bare (target >= 0.5x)")


if __name__ == "__main__":
    main()
