"""API-key and password hashing, and request authentication by role."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.models import ApiKey

API_ROLES: tuple[str, ...] = ("client", "admin")
USER_ROLES: tuple[str, ...] = ("viewer", "editor", "admin")
_KEY_PREFIX = {"client": "pk_", "admin": "sk_"}
T = TypeVar("T")
_password_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key (by name) or a UI user (by email)."""

    kind: Literal["api_key", "user", "system"]
    name: str
    role: str

    @property
    def actor(self) -> str:
        """The label written into audit entries."""
        return f"{self.kind}:{self.name}"


SYSTEM = Principal(kind="system", name="parcours", role="admin")


def hash_api_key(raw_key: str) -> str:
    """SHA-256 is right for random 256-bit keys: fast on the hot path, not reversible."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def generate_api_key(role: str) -> str:
    """A new random key whose prefix tells client (public) from admin (secret) keys."""
    return _KEY_PREFIX[role] + secrets.token_urlsafe(32)


def hash_password(password: str) -> str:
    """Argon2id hash of a UI password."""
    return _beside_the_event_loop(_password_hasher.hash, password)


def verify_password(password_hash: str, password: str) -> bool:
    """Constant-time check of a password against its argon2 hash."""
    try:
        return _beside_the_event_loop(_password_hasher.verify, password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _beside_the_event_loop(function: Callable[..., T], *args: Any) -> T:
    """Run argon2 (~0.1 s of CPU in C, without the GIL) where it cannot stall a worker.

    In a gevent worker (gunicorn.conf.py on PostgreSQL) a call made here would hold the
    worker's only thread, and every request it serves would wait; gevent's thread pool
    runs it in a real thread instead. Threaded workers already run it beside the others.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        return gevent.get_hub().threadpool.apply(function, args)
    return function(*args)


class ApiKeyCache:
    """Short-lived in-process cache of key digests so assignment does not hit the DB per call.

    A revoked key stops working within ``ttl_s`` on every worker (immediately on the
    worker that revoked it, which calls :meth:`clear`).
    """

    def __init__(self, ttl_s: float = 5.0) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, session: Session, raw_key: str) -> Principal | None:
        digest = hash_api_key(raw_key)
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        principal = _load_principal(session, digest)
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[digest] = (now + self.ttl_s, principal)
        return principal

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _load_principal(session: Session, digest: str) -> Principal | None:
    row = session.execute(
        select(ApiKey.name, ApiKey.role, ApiKey.key_hash).where(
            ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return Principal(kind="api_key", name=row.name, role=row.role)
