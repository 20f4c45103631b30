"""``flask --app wsgi …`` commands of SPEC §1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from experiments.auth import API_ROLES, SYSTEM, USER_ROLES
from experiments.db import get_db
from experiments.errors import ApiError

db_cli = AppGroup("db", help="Database schema.")
users_cli = AppGroup("users", help="Admin UI accounts.")
api_keys_cli = AppGroup("api-keys", help="API keys.")
warehouse_cli = AppGroup("warehouse", help="Warehouses analysed in place (SPEC §15).")


def register_commands(app: Flask) -> None:
    """Attach the command groups; other packages add their own groups."""
    for group in (db_cli, users_cli, api_keys_cli, warehouse_cli):
        app.cli.add_command(group)
    app.cli.add_command(seed_demo)
    app.cli.add_command(bootstrap_dev)
    app.cli.add_command(analyze)
    app.cli.add_command(scheduler)
    app.cli.add_command(simulate)


def _fail(exc: ApiError) -> click.ClickException:
    return click.ClickException(exc.summary())


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema (Alembic)."""
    from experiments.migrate import upgrade

    url = get_db().url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    click.echo("database is up to date")


@users_cli.command("create")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(USER_ROLES), required=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
def users_create(email: str, role: str, password: str) -> None:
    """Create a UI user (argon2 hash)."""
    from experiments.services.accounts import create_user

    with get_db().session() as session:
        try:
            user = create_user(session, email=email, password=password, role=role,
                               principal=SYSTEM)
        except ApiError as exc:
            raise _fail(exc) from None
        click.echo(f"created {user.role} {user.email}")


@api_keys_cli.command("create")
@click.option("--role", type=click.Choice(API_ROLES), required=True)
@click.option("--name", required=True)
def api_keys_create(role: str, name: str) -> None:
    """Create an API key; the key is printed alone on the last line, once."""
    from experiments.services.accounts import create_api_key

    with get_db().session() as session:
        try:
            api_key, raw_key = create_api_key(session, name=name, role=role, principal=SYSTEM)
        except ApiError as exc:
            raise _fail(exc) from None
        click.echo(f"created {api_key.role} key {api_key.name!r} (shown once, store it now):")
        click.echo(raw_key)


@click.command("seed-demo")
@with_appcontext
def seed_demo() -> None:
    """Create the demo experiment(s) with simulated traffic; safe to run twice."""
    from experiments.services.demo import seed_demo_data

    with get_db().session() as session:
        for line in seed_demo_data(session):
            click.echo(line)


@click.command("bootstrap-dev")
@with_appcontext
def bootstrap_dev() -> None:
    """For `make run`: create a local admin and API keys once, and print them (new ones
    when those kept no longer open this database)."""
    from experiments.services.accounts import dev_credentials

    path = Path(current_app.instance_path) / "dev-credentials.json"
    try:
        kept = json.loads(path.read_text()) if path.exists() else None
    except ValueError:
        kept = None
    with get_db().session() as session:
        credentials = dev_credentials(session, kept)
    if credentials != kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(credentials, indent=2))
        path.chmod(0o600)
    click.echo("Parcours local credentials (kept in instance/dev-credentials.json):")
    click.echo(f"  admin UI   http://127.0.0.1:5000/admin  {credentials['admin_email']} / "
               f"{credentials['admin_password']}")
    click.echo(f"  admin key  {credentials['admin_api_key']}")
    click.echo(f"  client key {credentials['client_api_key']}")


@click.command("analyze")
@click.option("--experiment", "key", help="Only this experiment (default: every running one).")
@with_appcontext
def analyze(key: str | None) -> None:
    """Run the analysis now: a progress bar and one summary line per experiment."""
    from tqdm import tqdm

    from experiments.jobs import analyze_one
    from experiments.services.analysis import running_experiment_keys

    database = get_db()
    if key:
        keys = [key]
    else:
        with database.session() as session:
            keys = running_experiment_keys(session)
    failed = 0
    for experiment_key in tqdm(keys, desc="analysis", unit="experiment", file=sys.stderr):
        ok, line = analyze_one(database, experiment_key)
        tqdm.write(line)
        failed += not ok
    if failed:
        raise click.ClickException(f"{failed} of {len(keys)} analyses failed")
    if not keys:
        click.echo("no running experiment to analyse")


@click.command("scheduler")
@click.option("--metrics-port", type=int, help="Also serve Prometheus metrics on 127.0.0.1:PORT.")
@with_appcontext
def scheduler(metrics_port: int | None) -> None:
    """Run the job scheduler in the foreground until SIGTERM/SIGINT (a DB lease elects one)."""
    from experiments.scheduler import run_foreground

    if metrics_port:
        from prometheus_client import start_http_server

        from experiments.observability import metrics_registry

        start_http_server(metrics_port, addr="127.0.0.1", registry=metrics_registry())
    run_foreground(current_app._get_current_object(), ready=lambda running: click.echo(
        f"scheduler {running.holder} running "
        f"({'active' if running.is_leader() else 'standby'}): {running.describe_jobs()}; "
        "SIGTERM or Ctrl-C stops it", nl=True))


def _assignments(pairs: tuple[str, ...], option: str) -> dict[str, float]:
    """Parse ``name=+0.1`` option values into a mapping (click error naming the option)."""
    parsed: dict[str, float] = {}
    for pair in pairs:
        name, sep, number = pair.partition("=")
        try:
            if not (sep and name):
                raise ValueError
            parsed[name] = float(number)
        except ValueError:
            raise click.BadParameter(f"expected NAME=NUMBER, got {pair!r}",
                                     param_hint=option) from None
    return parsed


def _parts(pairs: tuple[str, ...], option: str, shape: str) -> dict[tuple[str, ...], float]:
    """Parse ``a:b=0.1`` option values keyed by their ``:``-separated parts, as many as
    ``shape`` has (click error naming the option)."""
    size = shape.partition("=")[0].count(":") + 1
    parsed = {tuple(name.split(":", size - 1)): value
              for name, value in _assignments(pairs, option).items()}
    if any(len(name) != size or not all(name) for name in parsed):
        raise click.BadParameter(f"expected {shape}", param_hint=option)
    return parsed


@click.command("simulate")
@click.option("--experiment", "key", required=True, help="Key of a running experiment.")
@click.option("--units", type=click.IntRange(min=1), required=True, help="Visitors to send.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Same seed, same units and events (a rerun adds nothing).")
@click.option("--days", type=click.IntRange(min=1), default=14, show_default=True,
              help="Exposures spread over the last D days.")
@click.option("--effect", "effects", multiple=True, metavar="VARIANT=LIFT",
              help="True relative lift of conversion, e.g. one-page=+0.1 (repeatable).")
@click.option("--friction", "frictions", multiple=True, metavar="VARIANT:STEP:KIND=P",
              help="Extra probability of a friction kind at a step, e.g. "
                   "control:payment:error=0.05 (repeatable).")
@click.option("--split", "splits", multiple=True, metavar="VARIANT=SHARE",
              help="Force the traffic split, e.g. --split control=0.52 --split one-page=0.48.")
@click.option("--base-conversion", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.10, show_default=True, help="Conversion rate without effect.")
@click.option("--attribute", "attributes", multiple=True, metavar="NAME:LEVEL=SHARE",
              help="Visitors' attribute levels and their shares, e.g. --attribute "
                   "device:mobile=0.6 --attribute device:desktop=0.4 (repeatable).")
@click.option("--segment-effect", "segment_effects", multiple=True,
              metavar="NAME:LEVEL:VARIANT=LIFT",
              help="The lift of VARIANT for the visitors of that level instead of --effect, "
                   "e.g. device:mobile:one-page=+0.3 (repeatable).")
@with_appcontext
def simulate(key: str, units: int, seed: int, days: int, effects: tuple[str, ...],
             frictions: tuple[str, ...], splits: tuple[str, ...], base_conversion: float,
             attributes: tuple[str, ...], segment_effects: tuple[str, ...]) -> None:
    """Send realistic journey traffic through the assignment and event services."""
    from experiments.services.simulate import SimulationPlan, simulate_traffic

    friction = _parts(frictions, "--friction", "VARIANT:STEP:KIND=P")
    mix: dict[str, dict[str, float]] = {}
    for (name, level), share in _parts(attributes, "--attribute", "NAME:LEVEL=SHARE").items():
        mix.setdefault(name, {})[level] = share
    by_level: dict[tuple[str, str], dict[str, float]] = {}
    for (name, level, variant), lift in _parts(segment_effects, "--segment-effect",
                                               "NAME:LEVEL:VARIANT=LIFT").items():
        by_level.setdefault((name, level), {})[variant] = lift
    try:
        plan = SimulationPlan(units=units, seed=seed, days=days,
                              effects=_assignments(effects, "--effect"), friction=friction,
                              split=_assignments(splits, "--split") or None,
                              base_conversion=base_conversion, attribute_mix=mix,
                              segment_effects=by_level)
        with get_db().session() as session:
            counts = simulate_traffic(session, key, plan, progress=True)
    except ApiError as exc:
        raise _fail(exc) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"simulated {units} visitors on {key!r}: " + ", ".join(
        f"{variant} {count}" for variant, count in counts.items()) + " exposed")


@warehouse_cli.command("sync")
@click.option("--name", "names", multiple=True,
              help="Only this warehouse (repeatable; default: every configured one).")
def warehouse_sync(names: tuple[str, ...]) -> None:
    """Copy new exposures (and Parcours-ingested events) into the warehouses now."""
    from tqdm import tqdm

    from experiments.services.warehouses.engines import get_warehouses
    from experiments.services.warehouses.sync import SyncResult, sync_all

    configured = get_warehouses().names()
    unknown = sorted(set(names) - set(configured))
    if unknown:
        raise click.BadParameter(f"no warehouse named {', '.join(unknown)} "
                                 f"(configured: {', '.join(configured) or 'none'})",
                                 param_hint="--name")
    with tqdm(desc="warehouse sync", unit="row", file=sys.stderr) as bar:
        results = sync_all(get_db(), list(names) or None,
                           progress=lambda _table, rows: bar.update(rows))
    for name, result in results.items():
        if isinstance(result, SyncResult):
            click.echo(f"{name}: {result.exposures} exposure(s), {result.events} event(s) "
                       f"copied (through exposure {result.exposures_through}, "
                       f"event {result.events_through})")
        else:
            click.echo(f"{name}: {result}")
    failed = [name for name, result in results.items() if isinstance(result, str)]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(results)} warehouse sync(s) failed")
    if not results:
        click.echo("no warehouse configured (PARCOURS_WAREHOUSE_<NAME>_URL)")
