"""Session login for the admin UI and role checks (viewer < editor < admin)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import abort, g, session

from experiments.auth import USER_ROLES, Principal
from experiments.db import db_session
from experiments.models import User

ROLE_RANK = {role: rank for rank, role in enumerate(USER_ROLES)}
F = TypeVar("F", bound=Callable[..., Any])


def load_current_user() -> User | None:
    """The active user of this session; re-read each request so role changes apply at once."""
    user_id = session.get("user_id")
    if not isinstance(user_id, int):
        return None
    user = db_session().get(User, user_id)
    if user is None or not user.active or session.get("pw") != user.password_hash[-16:]:
        session.clear()
        return None
    return user


def login_user(user: User) -> None:
    """Start a fresh session (no fixation) bound to the user and their current password."""
    session.clear()
    session.permanent = True
    session["user_id"] = user.id
    # A password change (new hash) ends every other session of that user.
    session["pw"] = user.password_hash[-16:]


def logout_user() -> None:
    """Forget the session entirely."""
    session.clear()


def has_role(role: str) -> bool:
    """Whether the logged-in user has at least ``role``."""
    user = g.get("admin_user")
    return user is not None and ROLE_RANK.get(user.role, -1) >= ROLE_RANK[role]


def requires(role: str) -> Callable[[F], F]:
    """Refuse (403) users below ``role``; the before_request hook already refused anonymous ones."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not has_role(role):
                abort(403, f"this page needs the {role} role")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def principal() -> Principal:
    """The logged-in user as the audit principal of the services."""
    user: User = g.admin_user
    return Principal(kind="user", name=user.email, role=user.role)
