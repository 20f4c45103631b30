"""Where the pipeline reads its exposures and events: Parcours's tables or a warehouse's.

The stages never name an ORM table: they read two relations with fixed column names, so
the same queries run over Parcours's own ``exposures``/``events`` tables, over the warehouse
copies ``parcours_exposures``/``parcours_events``, or over a customer's ``events_sql``
subquery (any selectable with those columns).

* exposures: ``exposure_id, unit_id, variant_key, exposed_at`` (already restricted to one
  experiment), plus any :attr:`PipelineSources.grouping` columns;
* events: ``id, unit_id, type, name, step, friction_kind, value, occurred_at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, Select, case, false, func, literal, select
from sqlalchemy.sql import FromClause, visitors
from sqlalchemy.sql.elements import ColumnClause, Label
from sqlalchemy.sql.selectable import Subquery

from experiments.models import Event, Exposure
from experiments.services.pipeline.dialects import json_attribute, utc_instant
from experiments.services.pipeline.rollup import OwnRollup, UnitStore

EXPOSURE_COLUMNS = ("exposure_id", "unit_id", "variant_key", "exposed_at")
EVENT_COLUMNS = ("id", "unit_id", "type", "name", "step", "friction_kind", "value",
                 "occurred_at")


@dataclass(frozen=True)
class PipelineSources:
    """The two relations the pipeline reads.

    ``unique_units``: the exposures hold at most one row per unit (Parcours's own table,
    unique per experiment and unit), so stage 1 need not deduplicate. ``grouping``: extra
    exposure columns carried from each unit's first exposure into every per-unit and
    per-variant row (the one place to add a segment, a bandit weight period, a holdout
    group...). ``unit_store``: where the per-unit values are kept between analyses, when
    they can be (Parcours's PostgreSQL rollup over its own tables, a warehouse's over
    ``parcours_events``): the pass then reads only what arrived since. ``hashed_groups``:
    PostgreSQL may be told to hash, never sort, the crossed groups (``hashed_grouping``) —
    not where the per-unit rows come out of a grouping the planner cannot estimate (identity
    clusters: it counted 67 clusters for 6,000, and with sorts disabled it joined them by
    nested loops, 36 s for the demo's segmented report against 0.16 s with its own plan).
    ``join_back``: with ``unique_units``, the per-unit pass groups the events by exposure id
    alone and joins each unit's exposure columns back afterwards, rather than carrying
    them through its aggregate: a second read of the exposures, cheaper where they are a
    table's rows (DuckDB at 1 M units: 8-10 % of the statement's time, its hash tables
    286 -> 244 MB at their peak), not where they are computed (identity clusters, ranked exposures).
    ``units_per_pass``: a pass over every unit (no kept values to start from) is split into
    statements of about that many units each (at most four statements:
    :data:`~.unit_values.MOST_BUCKETS`), by a hash of the unit id
    (:class:`~.dialects.unit_bucket`), their sums added: each statement's hash tables hold
    its share of the units. For engines running inside Parcours's process (DuckDB, chDB),
    whose memory is the analysis's; None: one statement.
    """

    exposures: FromClause
    events: FromClause
    unique_units: bool = False
    grouping: tuple[str, ...] = ()
    unit_store: UnitStore | None = None
    hashed_groups: bool = True
    join_back: bool = False
    units_per_pass: int | None = None

    def grouped_by(self, **levels: Any) -> PipelineSources:
        """The same sources grouped by expressions over the exposures' columns (e.g.
        :func:`attribute_level`, :func:`period_of`), each added as a column of that name."""
        e = self.exposures
        exposures = select(*e.c, *(expression.label(name) for name, expression in levels.items())
                           ).subquery("grouped_exposures")
        return replace(self, exposures=exposures, grouping=(*self.grouping, *levels))

    def with_grouping(self, *columns: str) -> PipelineSources:
        """The same sources with more grouping columns (they must exist on exposures)."""
        missing = [c for c in columns if c not in self.exposures.c]
        if missing:
            raise ValueError(f"exposures have no column {', '.join(missing)}")
        return replace(self, grouping=(*self.grouping, *columns))


def own_sources(experiment_id: int) -> PipelineSources:
    """Parcours's own tables: the experiment's exposures (override units excluded), with
    their ``attributes`` snapshot (for :func:`attribute_level`)."""
    exposures = (select(Exposure.id.label("exposure_id"), Exposure.unit_id,
                        Exposure.variant_key, Exposure.exposed_at, Exposure.attributes)
                 .where(Exposure.experiment_id == experiment_id,
                        Exposure.is_override == false())
                 .subquery("x"))
    return PipelineSources(exposures, Event.__table__, unique_units=True,
                           unit_store=OwnRollup(experiment_id))


def table_sources(exposures: Any, events: Any, *, experiment: Any = None,
                  experiment_column: str = "experiment_id",
                  grouping: tuple[str, ...] = ()) -> PipelineSources:
    """Sources over arbitrary tables or subqueries (e.g. ``parcours_exposures`` and
    ``parcours_events`` in a warehouse, or an ``events_sql`` subquery); ``experiment``
    keeps the exposure rows whose ``experiment_column`` equals it (and their
    ``attributes`` column, if any); ``grouping`` names exposure columns to carry through
    every stage."""
    if experiment is not None:
        kept = [*EXPOSURE_COLUMNS, *(["attributes"] if "attributes" in exposures.c else []),
                *grouping]
        exposures = (select(*(exposures.c[name] for name in kept))
                     .where(exposures.c[experiment_column] == experiment)
                     .subquery("experiment_exposures"))
    return PipelineSources(exposures, events).with_grouping(*grouping)


NULL_LEVEL = "__null__"


def attribute_level(sources: PipelineSources, name: str) -> Any:
    """A unit's level of a segment dimension: the attribute ``name`` of its exposure's
    ``attributes`` snapshot (JSON), as text; missing or null → ``'__null__'`` (SPEC §11).
    Taken from the first exposure (stage 1), so a later change never moves a unit."""
    return func.coalesce(json_attribute(sources.exposures.c.attributes, literal(name)),
                         NULL_LEVEL)


def period_of(exposed_at: Any, boundaries: Sequence[datetime]) -> Any:
    """The number of the period an exposure time falls in: 0 before the first boundary,
    k from boundary k-1 (inclusive) to boundary k (a bandit's weight periods)."""
    ordered = sorted(boundaries)
    if not ordered:
        return literal(0, Integer())
    return case(*((exposed_at < utc_instant(at, exposed_at.type), number)
                  for number, at in enumerate(ordered)), else_=len(ordered))


def rebased(column: Any, relation: FromClause) -> Any | None:
    """``column`` (of the exposures, e.g. a grouping column) computed from ``relation``'s
    columns of the same names instead: its definition followed through the subqueries that
    built it until each column it reads is one ``relation`` has. None when it reads one
    ``relation`` lacks. A kept per-unit table that carries each unit's exposure columns
    (variant, exposure time, ``attributes``) thus gives any segment level or weight period
    without a join back to the exposures."""
    missing: list[str] = []

    def swap(element: Any) -> Any:
        if not isinstance(element, ColumnClause) or element.table is None:
            return None
        if element.name in relation.c:
            return relation.c[element.name]
        source = element.table
        if isinstance(source, Subquery) and isinstance(source.element, Select):
            defined = source.element.selected_columns[element.name]
            defined = defined.element if isinstance(defined, Label) else defined
            return visitors.replacement_traverse(defined, {}, swap)
        missing.append(element.name)
        return element

    expression = visitors.replacement_traverse(column, {}, swap)
    return None if missing else expression


__all__ = ["EVENT_COLUMNS", "EXPOSURE_COLUMNS", "NULL_LEVEL", "PipelineSources",
           "attribute_level", "own_sources", "period_of", "rebased", "table_sources"]
