"""Keyset pagination with opaque cursors (SPEC §2 lists)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from experiments.errors import ApiError

T = TypeVar("T")


def encode_cursor(last_id: int) -> str:
    """Hide the id behind base64 so clients treat cursors as opaque."""
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The id a cursor points after, or 422 for a cursor we did not issue."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, _, value = base64.urlsafe_b64decode(padded).decode().partition(":")
        if kind != "id":
            raise ValueError
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "invalid cursor",
                       details=[{"field": "cursor", "message": "not a cursor this API issued"}]
                       ) from None


def paginate(session: Session, query: Select[Any], id_column: Any, *, limit: int,
             cursor: str | None, descending: bool = False) -> tuple[Sequence[Any], str | None]:
    """Run ``query`` one page at a time, ordered by ``id_column``."""
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(id_column < after if descending else id_column > after)
    query = query.order_by(id_column.desc() if descending else id_column).limit(limit + 1)
    rows = session.scalars(query).all()
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor
