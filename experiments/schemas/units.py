"""Units resource schemas (SPEC §3): the answer to an erasure."""

from __future__ import annotations

from pydantic import BaseModel

MAX_UNIT_ID_LENGTH = 200  # as UnitId: a longer id was never stored


class ErasedOut(BaseModel):
    """What was erased: the id asked for and the rows deleted."""

    unit_id: str
    events: int
    exposures: int
