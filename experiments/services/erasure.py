"""Erasure of one unit everywhere (SPEC §3), for data-protection requests.

A unit lives in four places: its events, its exposures (one per experiment, with the
attributes snapshot), its holdout exposures, its identity links (either side) and, on
PostgreSQL, the per-unit rollup rows of those exposures.
All go in one transaction, so a report computed afterwards no longer counts the unit and
no rollup can bring it back. The audit entry keeps a SHA-256 digest of the id, never the
id itself: the trail proves the request was honoured without keeping what was erased.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from experiments.auth import Principal
from experiments.models import Event, Exposure, HoldoutExposure
from experiments.services.audit import record_audit
from experiments.services.identity import unlink_all
from experiments.services.pipeline.rollup import forget_exposures


@dataclass(frozen=True)
class Erased:
    """How many rows of the unit were deleted."""

    unit_id: str
    events: int
    exposures: int


def unit_digest(unit_id: str) -> str:
    """The SHA-256 hex digest the audit keeps instead of the id."""
    return hashlib.sha256(unit_id.encode()).hexdigest()


def erase_unit(session: Session, unit_id: str, principal: Principal) -> Erased:
    """Delete every event, exposure, holdout exposure, identity link and rollup row of
    ``unit_id``, audited, and commit."""
    exposure_ids = list(session.scalars(select(Exposure.id).where(Exposure.unit_id == unit_id)))
    forget_exposures(session, exposure_ids)
    exposures = session.execute(delete(Exposure).where(Exposure.unit_id == unit_id)).rowcount
    events = session.execute(delete(Event).where(Event.unit_id == unit_id)).rowcount
    held = session.execute(
        delete(HoldoutExposure).where(HoldoutExposure.unit_id == unit_id)).rowcount
    links = unlink_all(session, unit_id)
    digest = unit_digest(unit_id)
    record_audit(session, principal, "unit.erased", target_type="unit", target_id=digest,
                 after={"sha256": digest, "events": events, "exposures": exposures,
                        "holdout_exposures": held, "links": links})
    session.commit()
    return Erased(unit_id, int(events), int(exposures))
