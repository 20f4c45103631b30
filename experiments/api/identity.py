"""Identity resource (SPEC §14): links between ids, and the clusters that saw two variants."""

from __future__ import annotations

from flask import Blueprint

from experiments.api.routing import api_route, current_principal
from experiments.db import db_session
from experiments.schemas.identity import ConflictList, IdentifyIn, IdentifyOut
from experiments.services import identity

bp = Blueprint("identity", __name__, url_prefix="/api/v1")
TAGS = ("identity",)


# Idempotent: a stored (anonymous_id, user_id) pair is a duplicate (ON CONFLICT).
@api_route(bp, "/identify", "POST", auth="client", body=IdentifyIn, response=IdentifyOut,
           tags=TAGS, idempotent=True)
def identify(body: IdentifyIn) -> IdentifyOut:
    """Link anonymous ids to customer ids (one link or a batch); append-only, audited."""
    links = [identity.Link(link.anonymous_id, link.user_id, link.occurred_at)
             for link in body.all_links()]
    result = identity.link_ids(db_session(), links, current_principal())
    return IdentifyOut(linked=result.linked, duplicates=result.duplicates)


@api_route(bp, "/experiments/<key>/conflicts", response=ConflictList, errors=(404,), tags=TAGS)
def list_conflicts(key: str) -> ConflictList:
    """Identity clusters exposed to two different variants (left out of the analysis)."""
    return ConflictList.model_validate({"items": identity.conflicts(db_session(), key)})
