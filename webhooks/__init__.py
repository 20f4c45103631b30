"""Webhooks: endpoints, Standard Webhooks signing, transactional outbox and delivery."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the webhook API, CLI and signal subscribers on the app."""
    from webhooks import models  # noqa: F401  (tables must be known to the metadata)
