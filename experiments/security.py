"""Security headers on every response (CSP without inline scripts, no framing, no sniffing),
and cookie sessions that cost nothing on requests without a session cookie."""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin

# Inline styles stay allowed (Chart.js and Swagger UI set style attributes); scripts never.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
DEFAULT_HEADERS = (("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                   *SECURITY_HEADERS.items())


def init_app(app: Flask) -> None:
    """Add the headers unless a view chose its own (e.g. a page that must be embeddable)."""
    app.session_interface = CookieSessionsOnDemand()

    @app.after_request
    def _secure_headers(response: Response) -> Response:
        headers = response.headers
        # One pass over the few headers already set, instead of a lookup per default.
        chosen = {name.lower() for name, _ in headers}
        headers.extend([(name, value) for name, value in DEFAULT_HEADERS
                        if name.lower() not in chosen])
        return response


class CookieSessionsOnDemand(SecureCookieSessionInterface):
    """Flask's signed cookie sessions, skipped for requests that carry no session cookie.

    API calls never have one, yet Flask would build a signing serializer to open an
    empty session and read seven cookie settings to save nothing, on every request.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        # Without a Cookie header there is no session to read (and no cookie jar to parse).
        if app.secret_key and not request.environ.get("HTTP_COOKIE"):
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: SessionMixin, response: Any) -> None:
        if session or session.modified or session.accessed:
            super().save_session(app, session, response)
