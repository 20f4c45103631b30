"""The domain tables of SPEC §3–§6 (webhook tables live in ``webhooks.models``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from experiments.db import Base, BigIntId, UtcDateTime, utcnow

EXPERIMENT_STATUSES = ("draft", "running", "paused", "concluded")


class Experiment(Base):
    """A journey experiment: its configuration, lifecycle and outcome."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    hypothesis: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(200), default="")
    journey: Mapped[list[Any]] = mapped_column(default=list)
    traffic: Mapped[float] = mapped_column(Float, default=1.0)
    targeting: Mapped[list[Any]] = mapped_column(default=list)
    layer: Mapped[str | None] = mapped_column(String(64), index=True)
    overrides: Mapped[dict[str, Any]] = mapped_column(default=dict)
    analysis: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # SPEC §13 allocation; null is ``{"type": "fixed"}`` (experiments created before bandits).
    allocation: Mapped[dict[str, Any] | None]
    iteration_of_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    # Hash salt: fixed at creation so assignment never reshuffles units.
    salt: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    concluded_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(32))
    winner: Mapped[str | None] = mapped_column(String(64))
    decision: Mapped[dict[str, Any] | None]
    learnings: Mapped[str] = mapped_column(Text, default="")
    # Optimistic concurrency: a stale writer gets 409 instead of a lost update.
    version: Mapped[int] = mapped_column(Integer, default=1)

    variants: Mapped[list[Variant]] = relationship(
        back_populates="experiment", cascade="all, delete-orphan", order_by="Variant.position"
    )
    metrics: Mapped[list[Metric]] = relationship(
        back_populates="experiment", cascade="all, delete-orphan", order_by="Metric.position"
    )
    iteration_of: Mapped[Experiment | None] = relationship(remote_side=[id])

    __mapper_args__ = {"version_id_col": version}


class Variant(Base):
    """One arm of an experiment."""

    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("experiment_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    weight: Mapped[float] = mapped_column(Float)
    is_control: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    position: Mapped[int] = mapped_column(Integer, default=0)

    experiment: Mapped[Experiment] = relationship(back_populates="variants")


class Metric(Base):
    """A metric the analysis computes for an experiment (SPEC §3 metric kinds)."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("experiment_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))
    direction: Mapped[str] = mapped_column(String(16))
    event: Mapped[str | None] = mapped_column(String(200))
    numerator: Mapped[str | None] = mapped_column(String(200))
    denominator: Mapped[str | None] = mapped_column(String(200))
    friction_kind: Mapped[str | None] = mapped_column(String(32))
    step: Mapped[str | None] = mapped_column(String(64))
    # Winsorisation {"type": "absolute"|"percentile", "value": x} (SPEC §6), or None.
    cap: Mapped[dict[str, Any] | None]
    # Quantile metrics (SPEC §11): the level in [0.01, 0.99] and where the values come from
    # (event_value | unit_value | step_duration); None for every other kind.
    quantile: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str | None] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer, default=0)

    experiment: Mapped[Experiment] = relationship(back_populates="metrics")


class Exposure(Base):
    """The first exposure of a unit to an experiment: its sticky variant."""

    __tablename__ = "exposures"
    __table_args__ = (
        UniqueConstraint("experiment_id", "unit_id", name="uq_exposures_experiment_unit"),
        Index("ix_exposures_experiment_exposed_at", "experiment_id", "exposed_at"),
        Index("ix_exposures_unit_id", "unit_id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    unit_id: Mapped[str] = mapped_column(String(200))
    variant_key: Mapped[str] = mapped_column(String(64))
    # Server clock: the client's time corrected for its clock skew (SPEC §4, §5) and clamped.
    exposed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The time the client sent as ``occurred_at``, uncorrected (null: none was sent).
    client_exposed_at: Mapped[datetime | None]
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Forced (override) units are recorded for debugging but never analysed.
    is_override: Mapped[bool] = mapped_column(Boolean, default=False)


class Event(Base):
    """Something a unit did: conversion, step, friction, NPS answer or custom."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_unit_occurred", "unit_id", "occurred_at"),
        Index("ix_events_name_occurred", "name", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    # Client-chosen id for dedupe; the server generates one when absent.
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    unit_id: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    step: Mapped[str | None] = mapped_column(String(64))
    friction_kind: Mapped[str | None] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)
    # Server clock: corrected by ``received_at − sent_at`` when the batch had ``sent_at``.
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The ``occurred_at`` the client sent, uncorrected (null: none was sent).
    client_occurred_at: Mapped[datetime | None]


class IdentityLink(Base):
    """An anonymous id seen as a customer id (SPEC §14): append-only, one row per pair."""

    __tablename__ = "identity_links"
    __table_args__ = (
        UniqueConstraint("anonymous_id", "user_id", name="uq_identity_links_pair"),
        # Both directions: a customer's anonymous ids (assignment) and an id's customer.
        Index("ix_identity_links_user_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    anonymous_id: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[str] = mapped_column(String(200))
    # Client time of the link (when the visitor logged in); the server's is created_at.
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# Per-unit rollup slots (see experiments.services.pipeline.rollup): packed flag words, sums, first
# times and last answers of the analysis pass, kept between analyses on PostgreSQL.
ROLLUP_SLOTS = {"w": 8, "v": 16, "t": 4, "a": 4}

# Derived data, written a million rows at a time: no foreign keys (their per-row checks
# tripled the cost of a first fold). Nothing can dangle: exposures are deleted only by a
# unit's erasure, which deletes their rollup rows with them, and only drafts, which have no
# exposures and so no rollup, can be deleted.
unit_rollups = Table(
    "unit_rollups", Base.metadata,
    Column("exposure_id", BigIntId, primary_key=True, autoincrement=False),
    Column("experiment_id", Integer, nullable=False, index=True),
    Column("variant_key", String(64), nullable=False),
    Column("exposed_at", UtcDateTime, nullable=False),
    *[Column(f"w{i}", BigInteger) for i in range(ROLLUP_SLOTS["w"])],
    *[Column(f"v{i}", Float) for i in range(ROLLUP_SLOTS["v"])],
    *[Column(f"t{i}", UtcDateTime) for i in range(ROLLUP_SLOTS["t"])],
    *[Column(f"a{i}", ARRAY(BigInteger).with_variant(Text(), "sqlite"))
      for i in range(ROLLUP_SLOTS["a"])],
)


class RollupState(Base):
    """How far an experiment's per-unit rollup goes: the event and exposure ids it has
    folded (``*_through``) and the newest ids it saw (``*_seen``, folded once settled)."""

    __tablename__ = "rollup_states"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    plan_key: Mapped[str] = mapped_column(String(64))
    events_through: Mapped[int] = mapped_column(BigInteger, default=0)
    exposures_through: Mapped[int] = mapped_column(BigInteger, default=0)
    events_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    exposures_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    seen_at: Mapped[datetime | None]


class AllocationPeriod(Base):
    """One weight period of a bandit (SPEC §13): from ``started_at`` until the next period,
    new units are split by ``weights``; ``p_best`` (null for period 0) and the seed of its
    draws make every update reproducible."""

    __tablename__ = "allocation_periods"
    __table_args__ = (UniqueConstraint("experiment_id", "period",
                                       name="uq_allocation_periods_experiment_period"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    period: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    weights: Mapped[dict[str, Any]]
    p_best: Mapped[dict[str, Any] | None]
    seed: Mapped[int] = mapped_column(BigInteger)


class Report(Base):
    """One analysis run's report (SPEC §6), kept as history."""

    __tablename__ = "reports"
    __table_args__ = (Index("ix_reports_experiment_computed", "experiment_id", "computed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)
    method: Mapped[str] = mapped_column(String(16))
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Decision(Base):
    """A decision taken on an experiment, automatic or manual, with its reasons."""

    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_experiment_decided", "experiment_id", "decided_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    report_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id", ondelete="SET NULL"))
    outcome: Mapped[str] = mapped_column(String(32))
    winner: Mapped[str | None] = mapped_column(String(64))
    reasons: Mapped[list[Any]] = mapped_column(default=list)
    automatic: Mapped[bool] = mapped_column(Boolean, default=True)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


class GuardrailNotification(Base):
    """A guardrail breach already announced (``guardrail.breached`` goes once per metric and
    variant, not with every report that still shows it)."""

    __tablename__ = "guardrail_notifications"
    __table_args__ = (UniqueConstraint("experiment_id", "metric_key", "variant_key",
                                       name="uq_guardrail_notifications_breach"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    metric_key: Mapped[str] = mapped_column(String(64))
    variant_key: Mapped[str] = mapped_column(String(64))
    report_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id", ondelete="SET NULL"))
    notified_at: Mapped[datetime] = mapped_column(default=utcnow)


class Holdout(Base):
    """A share of units kept away from every in-scope experiment for months (SPEC §12)."""

    __tablename__ = "holdouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    percent: Mapped[float] = mapped_column(Float)
    # {"experiments": ["*"]} | {"experiments": [keys]} | {"layers": [layers]}
    scope: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Experiment metric definitions (SPEC §3), as JSON: the holdout has no variants to join.
    metrics: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="running")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The assignment cache's fingerprint reads it: a change is seen by every worker.
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    concluded_at: Mapped[datetime | None]


class HoldoutExposure(Base):
    """The first time a ``holdout`` or ``measure`` unit met an in-scope experiment."""

    __tablename__ = "holdout_exposures"
    __table_args__ = (
        UniqueConstraint("holdout_id", "unit_id", name="uq_holdout_exposures_holdout_unit"),
        Index("ix_holdout_exposures_unit_id", "unit_id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    holdout_id: Mapped[int] = mapped_column(ForeignKey("holdouts.id", ondelete="CASCADE"))
    unit_id: Mapped[str] = mapped_column(String(200))
    group: Mapped[str] = mapped_column(String(16))  # holdout | measure
    exposed_at: Mapped[datetime] = mapped_column(default=utcnow)


class HoldoutReport(Base):
    """One analysis of a holdout (SPEC §12): the experiment report's shape, kept as history."""

    __tablename__ = "holdout_reports"
    __table_args__ = (Index("ix_holdout_reports_holdout_computed", "holdout_id", "computed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    holdout_id: Mapped[int] = mapped_column(ForeignKey("holdouts.id", ondelete="CASCADE"))
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)


class User(Base):
    """An admin UI account (argon2 password hash)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key, stored as a SHA-256 digest: shown once, never retrievable."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class AuditEntry(Base):
    """Who changed what, when: before/after snapshots of every privileged change."""

    __tablename__ = "audit_entries"
    __table_args__ = (Index("ix_audit_experiment_at", "experiment_key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(254))
    action: Mapped[str] = mapped_column(String(64))
    experiment_key: Mapped[str | None] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]


class SchedulerLease(Base):
    """A named lease so only one scheduler process runs jobs at a time."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]
    renewed_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobRun(Base):
    """One run of a scheduled job per interval slot: makes 'exactly once' checkable."""

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job", "slot", name="uq_job_runs_job_slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    slot: Mapped[int] = mapped_column(BigIntId)
    holder: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class WarehouseSource(Base):
    """An ``events_sql`` of a warehouse (SPEC §15), as validated by its ``LIMIT 0`` probe."""

    __tablename__ = "warehouse_sources"
    __table_args__ = (UniqueConstraint("warehouse", "position",
                                       name="uq_warehouse_sources_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    warehouse: Mapped[str] = mapped_column(String(64), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    events_sql: Mapped[str] = mapped_column(Text)
    # The probe's result: column name -> the engine's type name.
    columns: Mapped[dict[str, Any]] = mapped_column(default=dict)
    validated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WarehouseSync(Base):
    """What the last sync into a warehouse copied (the resumable mark lives in the warehouse)."""

    __tablename__ = "warehouse_syncs"

    warehouse: Mapped[str] = mapped_column(String(64), primary_key=True)
    exposures_through: Mapped[int] = mapped_column(BigInteger, default=0)
    events_through: Mapped[int] = mapped_column(BigInteger, default=0)
    identity_links_through: Mapped[int] = mapped_column(BigInteger, default=0,
                                                        server_default="0")
    # The last ``unit.erased`` audit entry applied to the warehouse's copies.
    erasures_through: Mapped[int] = mapped_column(Integer, default=0)
    last_sync_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
