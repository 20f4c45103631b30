"""``flask --app wsgi webhooks deliver``: send the due deliveries now (SPEC §1)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from webhooks.delivery import deliver_due

webhooks_cli = AppGroup("webhooks", help="Webhook deliveries.")


@webhooks_cli.command("deliver")
def deliver() -> None:
    """Send the webhook deliveries that are due, once each, and print the outcome."""
    totals = deliver_due(current_app._get_current_object())  # type: ignore[attr-defined]
    summary = ", ".join(f"{count} {status}" for status, count in sorted(totals.items()))
    click.echo(f"webhook deliveries: {summary or 'nothing due'}")
