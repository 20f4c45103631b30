"""URL converters: ``<int:…>`` path ids never overflow the database's BIGINT."""

from __future__ import annotations

from typing import Any

from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter

MAX_ID = 2**63 - 1


class BoundedIntConverter(IntegerConverter):
    """An ``int`` converter capped at BIGINT, so a huge id is a 404, not a driver error."""

    def to_python(self, value: str) -> Any:
        number = super().to_python(value)
        if number > MAX_ID:
            # Not a routing miss (that would turn into 405 on sibling rules): no such resource.
            raise NotFound("no resource with that id")
        return number
