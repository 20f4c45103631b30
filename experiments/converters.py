"""URL converters: ``<int:…>`` path ids never overflow the database's integer columns."""

from __future__ import annotations

from typing import Any

from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter

# Primary keys are 32-bit INTEGER (and the driver casts parameters to the column type).
MAX_ID = 2**31 - 1


class BoundedIntConverter(IntegerConverter):
    """An ``int`` converter capped at INTEGER, so a huge id is a 404, not a driver error."""

    def to_python(self, value: str) -> Any:
        number = super().to_python(value)
        if number > MAX_ID:
            # Not a routing miss (that would turn into 405 on sibling rules): no such resource.
            raise NotFound("no resource with that id")
        return number
