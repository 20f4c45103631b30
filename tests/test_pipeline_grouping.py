"""Grouped aggregation (SPEC §11–§13 on the §15 pipeline): bandit periods at their exact
boundaries, attribute levels of every JSON type, the BigQuery/Snowflake spellings, and the
report's ``data_quality``. The four-engine parity of groups is in test_pipeline_parity."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
import sqlglot
from sqlalchemy.orm import Session

from experiments.db import UtcDateTime
from experiments.models import IdentityLink
from experiments.schemas import AnalysisSettings
from experiments.services import identity
from experiments.services.pipeline import (
    MetricSpec,
    Plan,
    UnitPass,
    aggregate_experiment,
    aggregate_grouped,
    attribute_level,
    marginal,
    period_of,
    rebased,
    table_sources,
    units_query,
    variant_day_query,
)
from experiments.services.pipeline.dialects import (
    HASHED_GROUPING_WORK_MEM,
    grouping_sets_select,
    hashed_grouping,
    prepare,
    refresh_statistics,
)
from experiments.services.report import build_report
from experiments.services.segments import segmented_aggregates
from experiments.services.warehouses.routing import OWN_TABLES
from tests.test_aggregation import expose, make_experiment
from tests.test_pipeline_golden import DIALECTS
from tests.test_pipeline_parity import HOURS, JOURNEY, METRICS, plain_tables

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
BOUNDARIES = [T0, T0 + timedelta(hours=6)]
CONV = [MetricSpec("conv", "conversion", event="purchase")]


def _sources(connection: sa.Connection, rows: list[tuple[str, str, datetime, object]]) -> object:
    exposures, events = plain_tables(None, UtcDateTime, attributes=True)
    exposures.metadata.create_all(connection)
    connection.execute(exposures.insert(), [
        {"exposure_id": number, "experiment_id": 1, "unit_id": unit, "variant_key": variant,
         "exposed_at": at, "attributes": json.dumps(attributes)}
        for number, (unit, variant, at, attributes) in enumerate(rows, start=1)])
    return table_sources(exposures, events, experiment=1)


def test_periods_split_at_their_exact_boundaries_and_levels_of_every_json_type() -> None:
    """An exposure AT a boundary opens the next period; a unit's later exposure (another
    period, another level) never moves it; numbers, booleans, null and missing keys."""
    engine = sa.create_engine("sqlite://")
    with engine.begin() as connection:
        sources = _sources(connection, [
            ("a", "control", T0 - timedelta(microseconds=1), {"country": "FR"}),
            ("b", "control", T0, {"country": "FR"}),
            ("b", "control", T0 + timedelta(hours=7), {"country": "DE"}),  # later: ignored
            ("c", "treatment", T0 + timedelta(hours=6) - timedelta(microseconds=1),
             {"country": None}),
            ("d", "treatment", T0 + timedelta(hours=6), {}),
            ("e", "treatment", T0 + timedelta(hours=9), {"country": 33}),
        ])
        grouped = sources.grouped_by(
            country=attribute_level(sources, "country"),
            period=period_of(sources.exposures.c.exposed_at, BOUNDARIES))
        got = aggregate_grouped(connection, None, CONV, hours=24, cuped=False, journey=[],
                                sources=grouped)
    engine.dispose()
    units = {key: int(sum(s["n"] for s in a.units.rows.values())) for key, a in got.items()}
    assert units == {("FR", 0): 1, ("FR", 1): 1, ("__null__", 1): 1, ("__null__", 2): 1,
                     ("33", 2): 1}
    periods = {period: {v: int(s["n"]) for v, s in a.units.totals().items()}
               for period, a in marginal(got, 1).items()}
    assert periods == {0: {"control": 1}, 1: {"control": 1, "treatment": 1},
                       2: {"treatment": 2}}


def test_no_boundaries_is_one_period() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.begin() as connection:
        sources = _sources(connection, [("a", "control", T0, {})])
        grouped = sources.grouped_by(period=period_of(sources.exposures.c.exposed_at, []))
        assert [row.period for row in connection.execute(units_query(grouped))] == [0]
    engine.dispose()


def test_grouping_columns_computed_from_a_kept_tables_exposure_columns_are_the_same() -> None:
    """A kept per-unit table carrying each unit's variant, exposure time and attributes
    gives every unit the segment level and weight period its exposure gives (no join back
    to the exposures); a column it does not carry cannot be computed from it."""
    engine = sa.create_engine("sqlite://")
    with engine.begin() as connection:
        sources = _sources(connection, [
            ("a", "control", T0 - timedelta(microseconds=1), {"country": "FR"}),
            ("b", "control", T0, {"country": 33}),
            ("c", "treatment", T0 + timedelta(hours=6), {}),
        ])
        grouped = sources.grouped_by(
            country=attribute_level(sources, "country"),
            period=period_of(sources.exposures.c.exposed_at, BOUNDARIES))
        x = grouped.exposures
        connection.execute(sa.text(
            "CREATE TABLE kept AS SELECT exposure_id, variant_key, exposed_at, attributes, "
            "1 AS w0 FROM parcours_exposures"))
        kept = sa.table("kept", *(sa.column(name) for name in (
            "exposure_id", "variant_key", "exposed_at", "attributes", "w0")))
        kept.c.exposed_at.type = UtcDateTime()
        from_kept = connection.execute(sa.select(
            kept.c.exposure_id, *(rebased(x.c[name], kept).label(name)
                                  for name in ("country", "period")))).all()
        from_exposures = connection.execute(sa.select(x.c.exposure_id, x.c.country,
                                                      x.c.period)).all()
        assert rebased(x.c.unit_id, kept) is None
    engine.dispose()
    assert sorted(from_kept) == sorted(from_exposures) == [(1, "FR", 0), (2, "33", 1),
                                                           (3, "__null__", 2)]


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_grouping_compiles_for_bigquery_and_snowflake(dialect: str) -> None:
    exposures, events = plain_tables(None, sa.DateTime(timezone=True), attributes=True)
    sources = table_sources(exposures, events, experiment=7)
    grouped = sources.grouped_by(country=attribute_level(sources, "country"),
                                 period=period_of(sources.exposures.c.exposed_at, BOUNDARIES))
    sql = str(units_query(grouped).compile(dialect=DIALECTS[dialect](),
                                           compile_kwargs={"literal_binds": True}))
    assert ("JSON_VALUE(" if dialect == "bigquery" else "PARSE_JSON(") in sql
    (statement,) = sqlglot.parse(sql, read=dialect)
    assert statement is not None and statement.find(sqlglot.exp.Case) is not None


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_grouping_sets_compile_for_bigquery_and_snowflake(dialect: str) -> None:
    """Segments' grouping sets (whole report per day, each dimension per level): one
    GROUP BY GROUPING SETS statement per query, each row's set told by GROUPING(), over
    the crossed groups (a CTE) of the units and of the per-unit values."""
    exposures, events = plain_tables(None, sa.DateTime(timezone=True), attributes=True)
    sources = table_sources(exposures, events, experiment=7)
    grouped = sources.grouped_by(country=attribute_level(sources, "country"),
                                 device=attribute_level(sources, "device"))
    sets = [((), True), (("country",), False), (("device",), False)]
    plan = Plan.of(METRICS, JOURNEY, False, grouped.events)
    unit = UnitPass.of(grouped, plan, hours=HOURS).query().cte("unit_values")
    for query, ctes in ((units_query(grouped, sets), {"crossed"}),
                        (variant_day_query(plan, unit, units=5200, sets=sets),
                         {"unit_values", "crossed"})):
        sql = str(query.compile(dialect=DIALECTS[dialect](),
                                compile_kwargs={"literal_binds": True}))
        (statement,) = sqlglot.parse(sql, read=dialect)
        assert isinstance(statement, sqlglot.exp.Select)  # not a UNION of one per set
        assert {cte.alias for cte in statement.find_all(sqlglot.exp.CTE)} == ctes
        (grouping_sets,) = statement.find_all(sqlglot.exp.GroupingSets)
        assert [len(s.expressions) for s in grouping_sets.expressions] == [2, 2, 2]
        assert sql.count("grouping(") == 3  # day, country, device; never the variant


def test_units_exposed_to_several_variants_are_in_the_report(db: Session) -> None:
    """Own tables hold none (unique per unit); a warehouse's may: the report says how many
    were left out, under ``data_quality`` (additive to SPEC §6) and as a warning."""
    experiment = make_experiment(db)
    expose(db, experiment, "u1", experiment.variants[0].key)
    db.commit()
    metrics = [MetricSpec.of(metric) for metric in experiment.metrics]
    aggregates = aggregate_experiment(db, experiment.id, metrics, hours=24, cuped=False)
    assert aggregates.multi_variant_units == 0
    settings = AnalysisSettings.model_validate(experiment.analysis)
    clean = build_report(experiment, settings, aggregates, now=T0)
    assert clean["data_quality"] == {"multi_variant_units": 0}
    body = build_report(experiment, settings, replace(aggregates, multi_variant_units=3),
                        now=T0)
    assert body["data_quality"] == {"multi_variant_units": 3}
    assert "3 units exposed to several variants left out" in body["warnings"]


@pytest.mark.parametrize("url", ["sqlite://", "duckdb:///:memory:", "chdb:///:memory:"])
def test_grouping_sets_name_each_rows_set_also_when_compiled_from_the_cache(url: str) -> None:
    """GROUPING() tells the sets apart on every engine (ClickHouse's is the standard's
    under ``prepare``), the UNION ALL on SQLite; a second, equal statement reuses the
    cached compiled form and still finds its columns."""
    table = sa.table("t", sa.column("variant", sa.String), sa.column("day", sa.String),
                     sa.column("country", sa.String), sa.column("x", sa.Integer))
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        prepare(connection)
        connection.execute(sa.text("CREATE TABLE t (variant VARCHAR, day VARCHAR, "
                                   "country VARCHAR, x INTEGER)"))
        connection.execute(sa.text("INSERT INTO t VALUES ('a', 'd1', 'FR', 1), "
                                   "('a', 'd2', 'DE', 2), ('a', 'd2', 'FR', 4), "
                                   "('b', 'd1', 'FR', 8)"))
        for _ in range(2):
            total = sa.func.sum(table.c.x).label("total")
            query = grouping_sets_select(
                [table.c[name].label(name) for name in ("variant", "day", "country")],
                [("variant", "day"), ("variant", "country"), ("variant",)], [total])
            rows = connection.execute(query).all()
            got = {(row.grouping_set, row.variant,
                    (row.day, row.country, None)[row.grouping_set]): row._mapping[total]
                   for row in rows}
            assert got == {(0, "a", "d1"): 1, (0, "a", "d2"): 6, (0, "b", "d1"): 8,
                           (1, "a", "DE"): 2, (1, "a", "FR"): 5, (1, "b", "FR"): 8,
                           (2, "a", None): 7, (2, "b", None): 8}
    engine.dispose()


def test_hashed_grouping_sets_postgresql_for_its_statements_only(db: Session) -> None:
    """PostgreSQL hashes the segments' crossed groups (it cannot estimate them and would
    sort every per-unit row): sorts off and a larger work_mem inside, the transaction's own
    settings back afterwards; other engines are untouched (no statement at all)."""
    setting = sa.text("SELECT current_setting('enable_sort'), current_setting('work_mem')")
    statements: list[str] = []
    sa.event.listen(db.get_bind(), "before_cursor_execute",
                    lambda *args: statements.append(args[2]))
    if db.get_bind().dialect.name != "postgresql":
        with hashed_grouping(db):
            pass
        assert statements == []
        return
    before = tuple(db.execute(setting).one())
    with hashed_grouping(db, when=False):  # one grouping set: nothing to cross
        assert tuple(db.execute(setting).one()) == before
    with hashed_grouping(db):
        assert tuple(db.execute(setting).one()) == ("off", HASHED_GROUPING_WORK_MEM)
    assert tuple(db.execute(setting).one()) == before
    assert before[0] == "on" and before[1] != HASHED_GROUPING_WORK_MEM


def test_identity_clusters_keep_postgresqls_own_plan_for_their_crossed_groups(db: Session
                                                                              ) -> None:
    """With sorts disabled, PostgreSQL joined the clusters it cannot estimate by nested
    loops (36 s for the demo's segmented report): their statements keep its settings,
    while plain units still hash their crossed groups. The report is the same either way."""
    experiment = make_experiment(db)
    for number in range(4):
        expose(db, experiment, f"u{number}", experiment.variants[number % 2].key)
    db.commit()
    settings: list[object] = []
    sa.event.listen(db.get_bind(), "before_cursor_execute",
                    lambda *args: settings.append(args[3]) if "set_config('enable_sort'"
                    in args[2] else None)
    metrics = [MetricSpec.of(metric) for metric in experiment.metrics]

    def segmented_units(sources: object) -> dict[str, float]:
        whole, _ = segmented_aggregates(db, experiment.id, metrics, ["country"], hours=24,
                                        cuped=False, sources=sources, rollup=False)
        return {variant: sums["n"] for variant, sums in whole.units.totals().items()}

    plain = identity.analysis_sources(db, experiment.id).sources
    assert plain.hashed_groups and segmented_units(plain) == {"control": 2, "one-page": 2}
    hashed = [{"sort": "off", "work_mem": HASHED_GROUPING_WORK_MEM}]
    assert settings[::2] == (hashed * 2 if db.get_bind().dialect.name == "postgresql" else [])
    db.add(IdentityLink(anonymous_id="u0", user_id="customer-1", occurred_at=T0,
                        created_at=T0))
    db.commit()
    settings.clear()
    clusters = identity.analysis_sources(db, experiment.id).sources
    assert not clusters.hashed_groups
    assert segmented_units(clusters) == {"control": 2, "one-page": 2}
    assert settings == []


def test_stale_planner_statistics_are_refreshed_before_an_analysis(db: Session) -> None:
    """PostgreSQL: tables changed beyond autovacuum's threshold since their last ANALYZE
    (autovacuum off, or not round yet) are analysed first, once; elsewhere nothing."""
    experiment = make_experiment(db)
    for number in range(200):
        expose(db, experiment, f"u{number}", experiment.variants[number % 2].key)
    postgresql = db.get_bind().dialect.name == "postgresql"
    if postgresql:  # this session's counts reach the statistics when it commits
        db.execute(sa.text("SELECT pg_stat_force_next_flush()"))
    db.commit()
    stale = refresh_statistics(db, OWN_TABLES)
    assert ("exposures" in stale) == postgresql and set(stale) <= set(OWN_TABLES)
    assert refresh_statistics(db, OWN_TABLES) == []
    if postgresql:
        assert db.execute(sa.text(
            "SELECT n_mod_since_analyze, last_analyze IS NOT NULL FROM pg_stat_user_tables "
            "WHERE relname = 'exposures'")).one() == (0, True)


def test_a_table_locked_by_a_vacuum_is_left_to_it(db: Session) -> None:
    """A table whose ANALYZE lock is held (another ANALYZE, a VACUUM: autovacuum on it
    already) is skipped after ``lock_wait``, not waited for; the others are analysed."""
    experiment = make_experiment(db)
    for number in range(200):
        expose(db, experiment, f"u{number}", experiment.variants[number % 2].key)
        db.add(IdentityLink(anonymous_id=f"u{number}", user_id=f"c{number}", occurred_at=T0,
                            created_at=T0))
    if db.get_bind().dialect.name != "postgresql":
        db.commit()
        assert refresh_statistics(db, ["exposures", "identity_links"], lock_wait="1ms") == []
        return
    db.execute(sa.text("SELECT pg_stat_force_next_flush()"))
    db.commit()
    with db.get_bind().connect() as holder:  # what a VACUUM of the table holds
        holder.execute(sa.text("LOCK TABLE exposures IN SHARE UPDATE EXCLUSIVE MODE"))
        analysed = refresh_statistics(db, ["exposures", "identity_links"], lock_wait="100ms")
        holder.rollback()
    assert analysed == ["identity_links"]
    assert refresh_statistics(db, ["exposures", "identity_links"]) == ["exposures"]
