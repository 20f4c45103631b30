"""Golden SQL (SPEC §15): the pipeline's queries compiled for BigQuery and Snowflake.

No connection: the dialect objects of sqlalchemy-bigquery and snowflake-sqlalchemy compile
every stage with literal binds; the text must equal the golden file (a change to the
pipeline shows up as a reviewable diff: ``PARCOURS_UPDATE_GOLDEN=1`` rewrites the files)
and every statement must parse with sqlglot in that dialect.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlglot
from snowflake.sqlalchemy.snowdialect import SnowflakeDialect
from sqlalchemy_bigquery import BigQueryDialect

from experiments.services.capping import CAPPED_PARTS, needs_ranking
from experiments.services.pipeline import (
    Plan,
    UnitPass,
    friction_outside_query,
    table_sources,
    units_query,
    variant_day_query,
)
from experiments.services.pipeline.exposures import multi_variant_units
from experiments.services.pipeline.quantiles import (
    QuantileSpec,
    cluster_sums_query,
    order_statistics_query,
    quantile_values,
)
from tests.test_pipeline_parity import HOURS, JOURNEY, METRICS, plain_tables

GOLDEN = Path(__file__).parent / "golden"
DIALECTS = {"bigquery": BigQueryDialect, "snowflake": SnowflakeDialect}


def pipeline_queries() -> dict[str, Any]:
    """Every query of one warehouse report, by name (the same builders the run uses)."""
    exposures, events = plain_tables(None, sa.DateTime(timezone=True))
    sources = table_sources(exposures, events, experiment=7)
    plan = Plan.of(METRICS, JOURNEY, True, sources.events)
    unit: Any = UnitPass.of(sources, plan, hours=HOURS).query().subquery("u")
    if needs_ranking(plan.metrics):
        unit = sa.select(*unit.c).cte("unit_values")
    # A copy found unique per unit (Parcours's sync): the exposure columns joined back.
    unique = replace(sources, unique_units=True, join_back=True)
    return {"units": units_query(sources),
            "variant_days": variant_day_query(plan, unit, units=5200),
            "unit_values_joined_back": UnitPass.of(unique, plan, hours=HOURS).query(),
            "friction_outside": friction_outside_query(sources, JOURNEY, hours=HOURS),
            "multi_variant_units": multi_variant_units(sources),
            **quantile_queries(sources)}


def quantile_queries(sources: Any) -> dict[str, Any]:
    """A step_duration metric's order statistics, an event_value one's clusters."""
    steps = quantile_values(sources, QuantileSpec("t", "step_duration", 0.9, step="cart"),
                            JOURNEY, hours=HOURS)
    orders = quantile_values(sources, QuantileSpec("o", "event_value", 0.5, event="purchase"),
                             JOURNEY, hours=HOURS)
    return {"quantile_order_statistics": order_statistics_query(steps, ["variant_key"], [0.9],
                                                                alpha=0.05),
            "quantile_clusters": cluster_sums_query(orders, ["variant_key"], {
                ("control",): 59.5, ("treatment",): 61.25})}


def compiled(dialect: str) -> str:
    parts = []
    for name, query in pipeline_queries().items():
        sql = str(query.compile(dialect=DIALECTS[dialect](),
                                compile_kwargs={"literal_binds": True}))
        parts.append(f"-- {name}\n{sql.strip()};\n")
    return "\n".join(parts)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_golden_sql_is_stable_and_parses(dialect: str) -> None:
    sql = compiled(dialect)
    path = GOLDEN / f"pipeline_{dialect}.sql"
    if os.environ.get("PARCOURS_UPDATE_GOLDEN"):
        path.write_text(sql)
    assert sql == path.read_text()
    statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    assert len(statements) == len(pipeline_queries())
    assert all(s.find(sqlglot.exp.Select) is not None for s in statements)


def test_each_percentile_cap_ranks_the_units_once() -> None:
    """A percentile threshold ranks every unit's value: it is computed once and joined, not
    written into each capped sum (this fixture's query held 35 copies, each ranking every
    unit again)."""
    percentile_parts = sum(len(CAPPED_PARTS[m.kind]) for m in METRICS
                           if m.cap_type == "percentile")
    assert percentile_parts == 3  # the fixture's capped count and ratio (numerator, denominator)
    sql = compiled("bigquery").split("-- variant_days")[1].split("-- friction_outside")[0]
    assert sql.count("sum(`cap_values`.`w`) OVER") == percentile_parts
