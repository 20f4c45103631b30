"""Identity schemas (SPEC §14): links from anonymous ids to customer ids, and conflicts."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from experiments.errors import ValidationFailed
from experiments.schemas import Strict, UnitId
from experiments.schemas.events import ClientTime

MAX_LINKS = 1000


class LinkIn(Strict):
    """One anonymous id (a browser's ``unit_id``) seen as a customer id (after login)."""

    anonymous_id: UnitId = Field(examples=["visitor-42"])
    user_id: UnitId = Field(examples=["customer-981"])
    occurred_at: ClientTime = Field(None, description="When the visitor was identified "
                                    "(RFC 3339); default and latest: received.",
                                    examples=["2026-11-24T10:00:00Z"])


class IdentifyIn(Strict):
    """One link (``anonymous_id``, ``user_id``, ``occurred_at``) or ``{"links": [...]}``."""

    anonymous_id: UnitId | None = Field(None, examples=["visitor-42"])
    user_id: UnitId | None = Field(None, examples=["customer-981"])
    occurred_at: ClientTime = Field(None, description="As in each link.")
    links: list[LinkIn] | None = Field(None, min_length=1, max_length=MAX_LINKS)

    def all_links(self) -> list[LinkIn]:
        """The links of either form; 422 naming the field when the form is mixed or partial."""
        single = {"anonymous_id": self.anonymous_id, "user_id": self.user_id}
        if self.links is not None:
            extra = [name for name in (*single, "occurred_at") if getattr(self, name) is not None]
            if extra:
                raise ValidationFailed.field(extra[0], "send either one link or links, not both")
            return self.links
        for name, value in single.items():
            if value is None:
                raise ValidationFailed.field(name, "required (or send links)")
        # Already validated, field by field, as this model's own fields.
        return [LinkIn.model_construct(anonymous_id=self.anonymous_id, user_id=self.user_id,
                                       occurred_at=self.occurred_at)]


class IdentifyOut(BaseModel):
    """New links stored, and links that were already stored (idempotent resends)."""

    linked: int
    duplicates: int


class ConflictUnit(BaseModel):
    unit_id: str
    variant: str
    exposed_at: datetime


class Conflict(BaseModel):
    """A cluster exposed to two variants: left out of the analysis."""

    cluster: str
    units: list[ConflictUnit]


class ConflictList(BaseModel):
    items: list[Conflict]
