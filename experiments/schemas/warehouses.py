"""Warehouse resource schemas (SPEC §15)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

from experiments.schemas import Strict, Text

EventsSql = Annotated[Text, Field(min_length=1, max_length=100_000)]


class WarehouseSourcesIn(Strict):
    """One ``events_sql``, or several combined with UNION ALL."""

    events_sql: EventsSql | Annotated[list[EventsSql], Field(min_length=1, max_length=20)]

    def statements(self) -> list[str]:
        """The sources as a list, whichever form was sent."""
        return [self.events_sql] if isinstance(self.events_sql, str) else list(self.events_sql)


class SourceOut(BaseModel):
    """A stored source and the result of its ``LIMIT 0`` probe."""

    events_sql: str
    validation: dict[str, Any]


class PerUnitValuesOut(BaseModel):
    """Whether the experiment's per-unit values are kept in the warehouse between analyses,
    and why not (``status.per_unit_values``)."""

    kept: bool
    why: str


class WarehouseExperimentOut(BaseModel):
    """An experiment whose ``analysis.warehouse`` names the warehouse."""

    key: str
    name: str
    status: str
    per_unit_values: PerUnitValuesOut


class WarehouseOut(BaseModel):
    """A configured warehouse (never its URL)."""

    name: str
    dialect: str
    timeout_seconds: float
    sync_events: bool
    last_sync_at: datetime | None
    last_sync_error: str | None
    lag: dict[str, int]
    sources: list[SourceOut]
    # Additive (not in SPEC §15): the experiments analysed in it, whatever their status.
    experiments: list[WarehouseExperimentOut]


class WarehouseList(BaseModel):
    """Every configured warehouse."""

    items: list[WarehouseOut]
