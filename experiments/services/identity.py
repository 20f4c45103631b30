"""Identity across devices and channels (SPEC §14): links, cluster lookups, clusters in SQL.

A link says an anonymous id (a browser's cookie) was seen as a customer id (a login).
A *cluster* is a customer id with every anonymous id linked to it, or an id linked to
nobody. Three readers use clusters:

- assignment (:func:`cluster_exposures`): the variant already stored anywhere in the
  customer's cluster wins, in one indexed statement;
- the conflicts route (:func:`conflicts`): clusters exposed to two variants;
- the analysis (:func:`analysis_sources`): when links touch the experiment's units, the
  pipeline reads :func:`cluster_sources` — one row per exposed cluster, events keyed by
  cluster — built on :func:`cluster_map` and :func:`exposed_clusters`, so clusters are
  resolved in SQL, never in Python. Every reader of an analysis takes its units there:
  an experiment's report and a bandit's reallocation (in Parcours or a warehouse), and a
  holdout's report (its exposures shaped as an experiment's).

An anonymous id linked to several customers (a shared computer) belongs to the cluster
of its earliest link only, so every id has exactly one cluster key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    String,
    Subquery,
    case,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    union,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import FromClause

from experiments.auth import Principal
from experiments.db import dialect_insert, utcnow
from experiments.models import Event, Exposure, IdentityLink
from experiments.services.audit import record_audit
from experiments.services.exposures import Stored, _execute, autocommit_connection
from experiments.services.lifecycle import get_experiment
from experiments.services.pipeline import PipelineSources, own_sources
from experiments.services.pipeline.dialects import count_if

_LINKS = IdentityLink.__table__
_EXPOSURES = Exposure.__table__


@dataclass(frozen=True)
class IdentityTables:
    """Where the clusters are resolved: Parcours's own tables (:data:`PARCOURS`) or a
    warehouse's copies. ``links``: ``id, anonymous_id, user_id, occurred_at``;
    ``exposures``: ``id, experiment_id, unit_id, variant_key, exposed_at, is_override,
    attributes``; ``events``: the pipeline's event columns."""

    links: FromClause
    exposures: FromClause
    events: FromClause


PARCOURS = IdentityTables(_LINKS, _EXPOSURES, Event.__table__)


@dataclass(frozen=True, slots=True)
class Link:
    """One anonymous id seen as one customer id, at ``occurred_at`` (None: now)."""

    anonymous_id: str
    user_id: str
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class Linked:
    """How many links of a request were new, and how many were stored before."""

    linked: int
    duplicates: int


@cache
def _link_insert(dialect: str) -> Any:
    """The links' INSERT … ON CONFLICT DO NOTHING RETURNING id, one statement object per
    dialect with the rows as parameters: compiled once (``.values(rows)`` in the statement
    was compiled again on every request)."""
    return (dialect_insert(dialect)(_LINKS)
            .on_conflict_do_nothing(index_elements=["anonymous_id", "user_id"])
            .returning(_LINKS.c.id))


def link_ids(session: Session, links: Sequence[Link], principal: Principal) -> Linked:
    """Store the new links (idempotent, append-only) with one audit entry; commits.

    The audit entry is per request, not per link: a batch of 1,000 links is one entry
    with its counts. It keeps no ids, so erasing a unit leaves nothing of it in the trail.
    """
    now = utcnow()
    unique = {(link.anonymous_id, link.user_id): link for link in links}
    rows = [{"anonymous_id": anonymous_id, "user_id": user_id,
             "occurred_at": min(link.occurred_at or now, now), "created_at": now}
            for (anonymous_id, user_id), link in unique.items()]
    linked = len(session.execute(_link_insert(session.get_bind().dialect.name), rows).all())
    result = Linked(linked, len(links) - linked)
    record_audit(session, principal, "identity.linked", target_type="identity",
                 after={"links": len(links), "linked": result.linked,
                        "duplicates": result.duplicates})
    session.commit()
    return result


def cluster_exposures(session: Session, unit_id: str, user_id: str,
                      experiment_ids: Iterable[int]) -> Stored:
    """The variant stored first in each experiment for any id of ``user_id``'s cluster.

    One statement, by index: exposures of the unit, the user id, and the anonymous ids
    linked to the user (``ix_identity_links_user_id``, then ``ix_exposures_unit_id``).
    Outside a caller's transaction it runs on an autocommit connection on PostgreSQL:
    one round trip, no BEGIN/COMMIT.
    """
    ids = sorted(experiment_ids)
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    if engine.dialect.name == "postgresql" and not session.in_transaction():
        # The driver directly, as the exposure store reads: half the time of a Core execute.
        with autocommit_connection(engine) as connection:
            rows = _execute(connection, _cluster_sql(len(ids)), (unit_id, user_id, *ids))
    else:
        rows = [tuple(row) for row in session.execute(cluster_statement(unit_id, user_id, ids))]
    # Newest first, so the earliest exposure of each experiment is written last and wins.
    return {experiment_id: variant_key for experiment_id, variant_key in rows}


@lru_cache(maxsize=256)
def _cluster_sql(count: int) -> str:
    """:func:`cluster_statement` for PostgreSQL's driver: ``$1`` unit, ``$2`` user, ids."""
    ids = ", ".join(f"${index + 3}" for index in range(count))
    return ("SELECT experiment_id, variant_key FROM exposures "
            f"WHERE experiment_id IN ({ids}) AND unit_id IN ("
            "SELECT anonymous_id FROM identity_links WHERE user_id = $2 "
            "UNION ALL SELECT $1 UNION ALL SELECT $2) "
            "ORDER BY exposed_at DESC, id DESC")


def cluster_statement(unit_id: str, user_id: str, experiment_ids: Iterable[int]) -> Select[Any]:
    """The exposures of a cluster in the experiments, newest first (see cluster_exposures)."""
    # One IN over a UNION ALL, not an OR of two INs: PostgreSQL plans the OR as a scan
    # of every exposure (300 ms at a million rows), the union as index lookups (0.1 ms).
    cluster = union_all(select(_LINKS.c.anonymous_id).where(_LINKS.c.user_id == user_id),
                        select(literal(unit_id, String)), select(literal(user_id, String)))
    return (
        select(_EXPOSURES.c.experiment_id, _EXPOSURES.c.variant_key)
        .where(_EXPOSURES.c.experiment_id.in_(sorted(experiment_ids)),
               _EXPOSURES.c.unit_id.in_(cluster))
        .order_by(_EXPOSURES.c.exposed_at.desc(), _EXPOSURES.c.id.desc()))


# --- clusters as selectables (the analysis pipeline joins these) ----------------------------

def cluster_map(tables: IdentityTables = PARCOURS) -> Subquery:
    """Every linked id → its cluster key (``unit_id``, ``cluster_key``).

    A customer id is its own key; an anonymous id takes the customer of its earliest
    link. Ids absent from it are clusters of their own: join with an outer join and
    ``coalesce(cluster_key, unit_id)`` (see :func:`cluster_of`).
    """
    links = tables.links
    ranked = select(
        links.c.anonymous_id.label("unit_id"), links.c.user_id.label("cluster_key"),
        func.row_number().over(partition_by=links.c.anonymous_id,
                               order_by=(links.c.occurred_at, links.c.id)).label("rank"),
    ).subquery("ranked_links")
    anonymous = select(ranked.c.unit_id, ranked.c.cluster_key).where(ranked.c.rank == 1)
    customers = select(links.c.user_id.label("unit_id"), links.c.user_id.label("cluster_key"))
    return union(anonymous, customers).subquery("cluster_map")


def cluster_of(unit_column: Any, mapping: Subquery) -> Any:
    """The cluster key of ``unit_column`` once ``mapping`` (:func:`cluster_map`) is outer-joined."""
    return func.coalesce(mapping.c.cluster_key, unit_column)


def exposed_units(experiment_id: int, tables: IdentityTables = PARCOURS) -> Subquery:
    """Each analysed exposure of an experiment with its cluster's first exposure and variant.

    Columns: ``exposure_id``, ``unit_id``, ``variant_key`` (the unit's own),
    ``cluster_key``, ``cluster_exposed_at`` and ``cluster_variant`` (the cluster's first
    exposure), ``conflict`` (true when the cluster saw two variants), ``linked`` (1 when the
    unit's id is in a link, else 0). Override exposures
    are left out, as the analysis leaves them out.
    """
    exposures, mapping = tables.exposures, cluster_map(tables)
    key = cluster_of(exposures.c.unit_id, mapping)
    window = {"partition_by": key}
    first = {"partition_by": key, "order_by": (exposures.c.exposed_at, exposures.c.id)}
    return (
        select(
            exposures.c.id.label("exposure_id"), exposures.c.unit_id,
            exposures.c.variant_key, key.label("cluster_key"),
            case((mapping.c.cluster_key.is_not(None), 1), else_=0).label("linked"),
            func.min(exposures.c.exposed_at).over(**window).label("cluster_exposed_at"),
            func.first_value(exposures.c.variant_key).over(**first).label("cluster_variant"),
            (func.min(exposures.c.variant_key).over(**window)
             != func.max(exposures.c.variant_key).over(**window)).label("conflict"),
        )
        .select_from(exposures.outerjoin(mapping, mapping.c.unit_id == exposures.c.unit_id))
        .where(exposures.c.experiment_id == experiment_id,
               exposures.c.is_override == false())
        .subquery("exposed_units"))


def exposed_clusters(experiment_id: int, tables: IdentityTables = PARCOURS) -> Subquery:
    """One row per exposed cluster: ``cluster_key``, ``exposure_id`` (its lowest, a key),
    ``exposed_at`` (first), ``variant_key`` (first), ``units`` (exposed ids), ``linked_units``
    (exposed ids named in a link), ``conflict``; the pipeline's analysis unit."""
    units = exposed_units(experiment_id, tables)
    return (
        select(units.c.cluster_key, func.min(units.c.exposure_id).label("exposure_id"),
               func.min(units.c.cluster_exposed_at).label("exposed_at"),
               func.min(units.c.cluster_variant).label("variant_key"),
               func.count().label("units"),
               func.sum(units.c.linked).label("linked_units"),
               (func.max(case((units.c.conflict, 1), else_=0)) > 0).label("conflict"))
        .group_by(units.c.cluster_key)
        .subquery("exposed_clusters"))


def cluster_sources(experiment_id: int, tables: IdentityTables = PARCOURS) -> PipelineSources:
    """The pipeline's sources with the identity cluster as the analysis unit (SPEC §14).

    Exposures: one row per exposed cluster, keyed by its cluster key, with the cluster's
    first exposure time and variant; conflicting clusters (two variants) are left out.
    Events: the events of every id that can belong to an exposed cluster, ``unit_id``
    replaced by the cluster key, so events under any id of a cluster (a back-office event
    under the customer id) join its row,
    inside the window from the cluster's first exposure. Not rolled up: a new link can
    move past events into another cluster, so the pass is computed in full.
    """
    clusters, exposures = exposed_clusters(experiment_id, tables), tables.exposures
    # Segments read the attribute snapshot of the cluster's first stored exposure.
    analysed = (select(clusters.c.exposure_id, clusters.c.cluster_key.label("unit_id"),
                       clusters.c.variant_key, clusters.c.exposed_at, exposures.c.attributes)
                .join(exposures, exposures.c.id == clusters.c.exposure_id)
                .where(clusters.c.conflict == false())
                .subquery("cluster_exposures"))
    # Every id that can belong to an exposed cluster → its key: the linked ids, and the
    # experiment's unlinked units as themselves. Events join it by their own unit_id, so
    # the pass reads them by index (ix_events_unit_occurred), never by a computed key.
    members = union(
        select(cluster_map(tables)),
        select(exposures.c.unit_id, exposures.c.unit_id)
        .where(exposures.c.experiment_id == experiment_id,
               exposures.c.unit_id.not_in(select(tables.links.c.anonymous_id))),
    ).subquery("cluster_members")
    events = tables.events
    keyed = (select(events.c.id, members.c.cluster_key.label("unit_id"),
                    events.c.type, events.c.name, events.c.step, events.c.friction_kind,
                    events.c.value, events.c.occurred_at)
             .select_from(events.join(members, members.c.unit_id == events.c.unit_id))
             .subquery("cluster_events"))
    return PipelineSources(analysed, keyed, unique_units=True, hashed_groups=False)


def links_touch(session: Session, experiment_id: int,
                exposures: FromClause = _EXPOSURES) -> bool:
    """Whether any link names one of the experiment's exposed units, on either side.

    ``exposures``: Parcours's relation shaped as :attr:`IdentityTables.exposures` (the
    experiments' own, or a holdout's). One indexed semi-join per side
    (``uq_exposures_experiment_unit`` probed from the links, or ``ix_identity_links_user_id``
    / the links' unique key probed from the exposures, whichever the planner finds
    cheaper). False: every unit is a cluster of its own and no event moves, so the plain
    sources give the same numbers.
    """
    def side(column: Any) -> Any:
        return exists().where(exposures.c.experiment_id == experiment_id,
                              exposures.c.unit_id == column)
    return bool(session.scalar(select(
        exists(select(_LINKS.c.id).where(side(_LINKS.c.anonymous_id)))
        | exists(select(_LINKS.c.id).where(side(_LINKS.c.user_id))))))


@dataclass(frozen=True)
class IdentitySummary:
    """The report's ``identity`` field: exposed clusters, exposed ids named in a link
    (devices and customer ids), clusters exposed to two variants."""

    clusters: int
    linked_units: int
    conflicts: int


def identity_summary(connection: Session | Connection, experiment_id: int,
                     tables: IdentityTables = PARCOURS) -> IdentitySummary:
    """Counts for the report's ``identity`` field, in one query."""
    clusters = exposed_clusters(experiment_id, tables)
    row = connection.execute(select(
        func.count(),
        func.coalesce(func.sum(clusters.c.linked_units), 0),
        count_if(clusters.c.conflict == true()),
    ).select_from(clusters)).one()
    return IdentitySummary(int(row[0]), int(row[1]), int(row[2]))


def identity_section(summary: IdentitySummary | None,
                     units: Mapping[str, int]) -> dict[str, int]:
    """A report's ``identity`` field; without links every unit is a cluster of its own."""
    if summary is None:
        return {"clusters": sum(units.values()), "linked_units": 0, "conflicts": 0}
    return {"clusters": summary.clusters, "linked_units": summary.linked_units,
            "conflicts": summary.conflicts}


@dataclass(frozen=True)
class AnalysisUnits:
    """What an analysis reads (SPEC §14): ``sources`` over identity clusters resolved in
    ``clusters`` when links touch the exposed units, else the plain sources (``clusters``
    None: every unit is a cluster of its own). The report, a bandit's reallocation and a
    holdout's report all take theirs from :func:`analysis_sources`."""

    experiment_id: int
    sources: PipelineSources
    clusters: IdentityTables | None = None

    def summary(self, connection: Session | Connection) -> IdentitySummary | None:
        """The report's identity counts, one query on ``connection`` (where the clusters
        are resolved); None without links."""
        if self.clusters is None:
            return None
        return identity_summary(connection, self.experiment_id, self.clusters)


def analysis_sources(session: Session, experiment_id: int,
                     plain: PipelineSources | None = None,
                     tables: IdentityTables = PARCOURS, *,
                     asked: FromClause | None = None) -> AnalysisUnits:
    """What the analysis of an experiment reads (or of a holdout: ``tables`` over its
    exposures, ``plain`` its sources), wherever it runs.

    Whether links touch the units (:func:`links_touch`, one cheap query) is asked of
    Parcours (``session``) over ``asked`` (default ``tables.exposures``; a warehouse's
    experiment asks Parcours's exposures: the same rows, indexed). Without links: ``plain``
    (default :func:`own_sources`, which keeps the PostgreSQL rollup). With links:
    :func:`cluster_sources` over ``tables``.
    """
    if not links_touch(session, experiment_id,
                       tables.exposures if asked is None else asked):
        return AnalysisUnits(experiment_id, plain or own_sources(experiment_id))
    return AnalysisUnits(experiment_id, cluster_sources(experiment_id, tables), tables)


def conflicts(session: Session, experiment_key: str) -> list[dict[str, Any]]:
    """Clusters of the experiment exposed to two variants, with their units (404 if unknown)."""
    experiment = get_experiment(session, experiment_key)
    units = exposed_units(experiment.id)
    rows = session.execute(
        select(units.c.cluster_key, units.c.unit_id, units.c.variant_key,
               _EXPOSURES.c.exposed_at)
        .join(_EXPOSURES, _EXPOSURES.c.id == units.c.exposure_id)
        .where(units.c.conflict.is_(True))
        .order_by(units.c.cluster_key, _EXPOSURES.c.exposed_at, units.c.unit_id))
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(row.cluster_key, []).append(
            {"unit_id": row.unit_id, "variant": row.variant_key, "exposed_at": row.exposed_at})
    return [{"cluster": key, "units": members} for key, members in found.items()]


def unlink_all(session: Session, unit_id: str) -> int:
    """Delete every link naming ``unit_id`` on either side (erasure only); rows deleted."""
    return int(session.execute(_LINKS.delete().where(
        or_(_LINKS.c.anonymous_id == unit_id, _LINKS.c.user_id == unit_id))).rowcount)

