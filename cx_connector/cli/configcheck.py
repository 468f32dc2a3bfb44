"""``cx-connector check-config``."""

from __future__ import annotations

import click

from cx_connector.cli.base import State, pass_state


@click.command("check-config")
@pass_state
def check_config(state: State) -> None:
    """Validate the configuration file; exit 2 naming every bad key."""
    from sqlalchemy.engine import make_url

    config = state.config()
    click.echo(f"configuration OK ({config.origin})")
    click.echo(f"  database:   {make_url(config.database_url).render_as_string(hide_password=True)}")
    click.echo(f"  connectors: {', '.join(config.connectors) or 'none enabled'}")
    click.echo(f"  admin:      {'token set' if config.admin_token else 'disabled (no admin_token)'}")
    metrics = ("metrics.token or admin_token" if config.metrics.token else
               "admin_token" if config.admin_token else "disabled (no metrics.token nor admin_token)")
    click.echo(f"  /metrics:   {metrics}")
    click.echo(f"  write-back: {'dry run' if config.writeback.dry_run else 'live'}")
    rules = ", ".join(f"{r.name} ({r.condition})" for r in config.alerts.rules.values())
    click.echo(f"  alerts:     {rules or 'no rules'}")  # never the webhooks' URLs: they are secrets
