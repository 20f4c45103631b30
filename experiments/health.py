"""Database health for ``/healthz``: reachable, and migrated to the code's schema."""

from __future__ import annotations

import threading
import time
from functools import cache

from sqlalchemy import Connection, Engine, inspect, text

SCHEMA_CHECK_TTL_S = 10.0


@cache
def known_revisions() -> tuple[frozenset[str], frozenset[str]]:
    """(heads, every revision) of the migrations shipped with this code.

    Alembic is imported here, at the first health check, not when a worker boots.
    """
    from alembic.script import ScriptDirectory

    from experiments.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return (frozenset(script.get_heads()),
            frozenset(revision.revision for revision in script.walk_revisions()))


def schema_state(connection: Connection) -> str:
    """``ok`` or ``schema_outdated`` for the database's recorded Alembic revisions.

    A revision this code does not know is a newer one (a rolling deploy migrated ahead
    of this instance): the older code still works against it, so it counts as ok.
    """
    current = _recorded_revisions(connection)
    heads, known = known_revisions()
    if not current or any(revision in known and revision not in heads
                          for revision in current):
        return "schema_outdated"
    return "ok"


def _recorded_revisions(connection: Connection) -> set[str]:
    """The revisions in ``alembic_version`` (none before the first migration).

    Read directly: Alembic's MigrationContext would log two INFO lines per check.
    """
    if not inspect(connection).has_table("alembic_version"):
        return set()
    return set(connection.scalars(text("SELECT version_num FROM alembic_version")))


class DatabaseHealth:
    """One process's view of its database, the schema part re-read every ~10 s.

    A load balancer polls every few seconds per instance; reading ``alembic_version``
    each time would cost little, but the revision only changes at a deploy.
    """

    def __init__(self, engine: Engine, ttl_s: float = SCHEMA_CHECK_TTL_S) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._schema = "schema_outdated"

    def check(self) -> str:
        """``ok``, ``schema_outdated``; raises the driver's error when unreachable."""
        with self.engine.connect() as connection:
            if time.monotonic() - self._checked_at < self.ttl_s:
                connection.execute(text("SELECT 1"))
                return self._schema
            state = schema_state(connection)
        with self._lock:
            self._schema, self._checked_at = state, time.monotonic()
        return state
