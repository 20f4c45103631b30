"""Changing UI accounts (role, deactivation): the rules the users page enforces.

Kept next to the admin UI because it is its only caller; creation and login live in
``experiments.services.accounts``.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from experiments.auth import USER_ROLES, Principal
from experiments.errors import Conflict, NotFound, ValidationFailed
from experiments.models import User
from experiments.services.audit import record_audit


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
    if role not in USER_ROLES:
        raise ValidationFailed.field("role", f"must be one of {', '.join(USER_ROLES)}")
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
