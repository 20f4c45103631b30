"""Events resource (SPEC §5): thin view over ``services.events``."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from experiments.api.routing import api_route
from experiments.db import db_session
from experiments.errors import ValidationFailed, byte_size, error_response
from experiments.schemas.events import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, EventBatch, IngestOut
from experiments.services.events import ingest_events

bp = Blueprint("events", __name__, url_prefix="/api/v1")


@bp.before_request
def _limit_body() -> None:
    """Batches are capped at 1 MiB, below the app-wide limit (413 before anything is parsed)."""
    request.max_content_length = MAX_BATCH_BYTES


@bp.errorhandler(RequestEntityTooLarge)
def _batch_too_large(exc: RequestEntityTooLarge) -> Response:
    """The 413 says the batch limit and what to do about it (SPEC §5: split the batch)."""
    return error_response(413, f"a batch is at most {byte_size(MAX_BATCH_BYTES)} of JSON: "
                               "split it into smaller batches and send each")


# Idempotent: a resent event_id is a duplicate (ON CONFLICT), never a second row.
@api_route(bp, "/events", "POST", auth="client", body=EventBatch, response=IngestOut,
           tags=("events",), idempotent=True)
def post_events(body: EventBatch) -> IngestOut:
    """Ingest a batch of events; answered only after the accepted ones are committed."""
    if len(body.events) > MAX_BATCH_EVENTS:
        # 422 (not 413): the body is well-formed but breaks the documented maxItems.
        raise ValidationFailed.field(
            "events", f"at most {MAX_BATCH_EVENTS} events per batch (got {len(body.events)})")
    # One id per request, kept when the idempotent route runs again after a lost connection.
    batch_id = g.setdefault("event_batch_id", uuid.uuid4())
    result = ingest_events(db_session(), body.events, sent_at=body.sent_at, batch_id=batch_id)
    return IngestOut.model_validate(
        {"accepted": result.accepted, "duplicates": result.duplicates,
         "rejected": result.rejected})
