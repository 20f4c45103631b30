"""The portable analysis pipeline (SPEC §15): exposures → per-unit values → per-variant
sufficient statistics, in SQLAlchemy Core, run on SQLite, PostgreSQL, DuckDB and ClickHouse
and compiled for BigQuery and Snowflake.

Stages: :mod:`.sources` (what is read), :mod:`.exposures` (1: first exposure per unit),
:mod:`.unit_values` (2: per-unit values in the window), :mod:`.variant_stats` (3: per
variant/day sums), :mod:`.journey` (funnel, friction matrix), :mod:`.quantiles` (order
statistics of quantile metrics, time on step), :mod:`.run` (running them on a connection);
:mod:`.rollup` keeps the per-unit values between analyses on PostgreSQL (and
``experiments.services.warehouses.rollup`` in a warehouse); :mod:`.dialects` holds every
dialect difference.
"""

from experiments.services.pipeline.journey import JourneyCounts, friction_outside_query
from experiments.services.pipeline.quantiles import (
    ORDER_STATISTIC_KINDS,
    QuantileSpec,
    quantile_specs,
    quantile_stats,
    sum_specs,
    time_on_step,
    with_order_statistics,
)
from experiments.services.pipeline.run import (
    PASS_VERSION,
    Daily,
    ExperimentAggregates,
    Group,
    aggregate_dimensions,
    aggregate_experiment,
    aggregate_grouped,
    combine,
    marginal,
)
from experiments.services.pipeline.sources import (
    NULL_LEVEL,
    PipelineSources,
    attribute_level,
    own_sources,
    period_of,
    rebased,
    table_sources,
)
from experiments.services.pipeline.unit_values import (
    CUPED_KINDS,
    MetricSpec,
    Plan,
    UnitPass,
    match_condition,
)
from experiments.services.pipeline.variant_stats import to_stats, units_query, variant_day_query

__all__ = [
    "CUPED_KINDS",
    "NULL_LEVEL",
    "ORDER_STATISTIC_KINDS",
    "PASS_VERSION",
    "Daily",
    "ExperimentAggregates",
    "Group",
    "JourneyCounts",
    "MetricSpec",
    "PipelineSources",
    "Plan",
    "QuantileSpec",
    "UnitPass",
    "aggregate_dimensions",
    "aggregate_experiment",
    "aggregate_grouped",
    "attribute_level",
    "combine",
    "friction_outside_query",
    "marginal",
    "match_condition",
    "own_sources",
    "period_of",
    "quantile_specs",
    "quantile_stats",
    "rebased",
    "sum_specs",
    "table_sources",
    "time_on_step",
    "to_stats",
    "units_query",
    "variant_day_query",
    "with_order_statistics",
]
