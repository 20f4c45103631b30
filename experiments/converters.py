"""URL converters: ``<int:…>`` path ids never overflow the database's BIGINT."""

from __future__ import annotations

from typing import Any

from werkzeug.routing import IntegerConverter, Map

MAX_ID = 2**63 - 1


class BoundedIntConverter(IntegerConverter):
    """An ``int`` converter capped at BIGINT, so a huge id is a 404, not a driver error."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_ID)
        super().__init__(url_map, *args, **kwargs)
