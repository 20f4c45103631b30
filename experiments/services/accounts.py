"""API keys and UI users: creation, lookup and revocation."""

from __future__ import annotations

import secrets
from functools import cache

from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.auth import (
    API_ROLES,
    SYSTEM,
    USER_ROLES,
    Principal,
    generate_api_key,
    hash_api_key,
    hash_password,
    verify_password,
)
from experiments.db import utcnow
from experiments.errors import Conflict, NotFound, ValidationFailed
from experiments.models import ApiKey, User
from experiments.schemas import text_problem
from experiments.services.audit import record_audit


def create_api_key(session: Session, *, name: str, role: str,
                   principal: Principal) -> tuple[ApiKey, str]:
    """Store a new key's digest and return the raw key, which is never shown again."""
    if role not in API_ROLES:
        raise ValidationFailed.field("role", f"must be one of {', '.join(API_ROLES)}")
    if not name.strip() or len(name) > 200:
        raise ValidationFailed.field("name", "must be 1 to 200 characters")
    if (problem := text_problem(name)) is not None:
        raise ValidationFailed.field("name", problem)
    raw_key = generate_api_key(role)
    api_key = ApiKey(name=name.strip(), role=role, prefix=raw_key[:10],
                     key_hash=hash_api_key(raw_key))
    session.add(api_key)
    session.flush()
    record_audit(session, principal, "api_key.create", target_type="api_key",
                 target_id=str(api_key.id), after={"name": api_key.name, "role": role,
                                                    "prefix": api_key.prefix})
    session.commit()
    return api_key, raw_key


def list_api_keys(session: Session) -> list[ApiKey]:
    """Every key, newest first (digests only)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id.desc())))


def revoke_api_key(session: Session, key_id: int, principal: Principal) -> ApiKey:
    """Revoke a key; caches drop it within their TTL."""
    api_key = session.get(ApiKey, key_id)
    if api_key is None:
        raise NotFound(f"no API key with id {key_id}")
    if api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
        record_audit(session, principal, "api_key.revoke", target_type="api_key",
                     target_id=str(api_key.id), before={"name": api_key.name})
        session.commit()
    return api_key


def create_user(session: Session, *, email: str, password: str, role: str,
                principal: Principal) -> User:
    """Create a UI account with an argon2 password hash."""
    email = email.strip().lower()
    _check_user_role(role)
    if "@" not in email or len(email) > 254 or text_problem(email) is not None:
        raise ValidationFailed.field("email", "must be an email address")
    if len(password) < 8:
        raise ValidationFailed.field("password", "must be at least 8 characters")
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"a user with email {email!r} already exists")
    user = User(email=email, password_hash=hash_password(password), role=role)
    session.add(user)
    session.flush()
    record_audit(session, principal, "user.create", target_type="user", target_id=str(user.id),
                 after={"email": email, "role": role})
    session.commit()
    return user


def _check_user_role(role: str) -> None:
    if role not in USER_ROLES:
        raise ValidationFailed.field("role", f"must be one of {', '.join(USER_ROLES)}")


def _user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    return user


def _not_self(user: User, principal: Principal, what: str) -> None:
    """Nobody can lock themselves out: another admin must do it."""
    if user.email == principal.name:
        raise Conflict(f"you cannot {what} your own account")


def change_role(session: Session, user_id: int, role: str, principal: Principal) -> User:
    """Give a user another role; audited."""
    _check_user_role(role)
    user = _user(session, user_id)
    if user.role != role:
        _not_self(user, principal, "change the role of")
        record_audit(session, principal, "user.role", target_type="user", target_id=str(user.id),
                     before={"email": user.email, "role": user.role},
                     after={"email": user.email, "role": role})
        user.role = role
        session.commit()
    return user


def set_active(session: Session, user_id: int, active: bool, principal: Principal) -> User:
    """Deactivate (sessions end at their next request) or reactivate a user; audited."""
    user = _user(session, user_id)
    if user.active != active:
        _not_self(user, principal, "deactivate" if not active else "reactivate")
        record_audit(session, principal, "user.activate" if active else "user.deactivate",
                     target_type="user", target_id=str(user.id),
                     before={"email": user.email, "active": user.active},
                     after={"email": user.email, "active": active})
        user.active = active
        session.commit()
    return user


def authenticate_user(session: Session, email: str, password: str) -> User | None:
    """The active user with these credentials, or None (constant-time hash check)."""
    # An email PostgreSQL could not even compare (NUL) matches no account.
    user = (None if text_problem(email) is not None
            else session.scalar(select(User).where(User.email == email.strip().lower())))
    if user is None or not user.active:
        verify_password(_dummy_hash(), password)  # same cost whether or not the user exists
        return None
    return user if verify_password(user.password_hash, password) else None


@cache
def _dummy_hash() -> str:
    return hash_password("parcours-timing-equaliser")


DEV_ADMIN_EMAIL = "admin@parcours.local"


def dev_credentials(session: Session, kept: dict[str, str] | None) -> dict[str, str]:
    """``make run``'s local admin login and API keys: ``kept`` (what an earlier run wrote)
    when they still open this database, else new ones (the admin's password reset).

    Why checked: the file outlives the database it was made for (a database deleted, or
    ``PARCOURS_DATABASE_URL`` pointed elsewhere for a while), and printing a login that
    does not work is worse than printing none."""
    if kept is not None and _credentials_hold(session, kept):
        return kept
    credentials = {"admin_email": DEV_ADMIN_EMAIL,
                   "admin_password": secrets.token_urlsafe(12)}
    session.execute(User.__table__.delete().where(User.email == DEV_ADMIN_EMAIL))
    create_user(session, email=DEV_ADMIN_EMAIL, password=credentials["admin_password"],
                role="admin", principal=SYSTEM)
    for role, name in (("admin", "make-run admin"), ("client", "make-run client")):
        credentials[f"{role}_api_key"] = create_api_key(session, name=name, role=role,
                                                        principal=SYSTEM)[1]
    return credentials


def _credentials_hold(session: Session, kept: dict[str, str]) -> bool:
    """The kept login authenticates and both kept keys are live keys of their roles."""
    try:
        email, password = kept["admin_email"], kept["admin_password"]
        keys = {role: kept[f"{role}_api_key"] for role in API_ROLES}
    except (KeyError, TypeError):
        return False
    user = authenticate_user(session, email, password)
    if user is None or user.role != "admin":
        return False
    live = {row.key_hash: row.role for row in session.execute(
        select(ApiKey.key_hash, ApiKey.role).where(
            ApiKey.key_hash.in_([hash_api_key(key) for key in keys.values()]),
            ApiKey.revoked_at.is_(None)))}
    return all(live.get(hash_api_key(key)) == role for role, key in keys.items())
