"""``cx-connector``: the command-line interface (click). ``--help`` on every command."""

from __future__ import annotations

import click

from cx_connector import __version__
from cx_connector.cli import (
    alerts,
    backfill,
    clock,
    configcheck,
    customers,
    database,
    demo,
    enrich,
    events,
    imports,
    scoring,
    serve,
    writeback,
)
from cx_connector.cli import privacy as privacy_cli
from cx_connector.cli.base import Group, State


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              metavar="PATH",
              help="Configuration file (default: $CX_CONNECTOR_CONFIG, else ./cx-connector.yaml).")
@click.version_option(__version__, prog_name="cx-connector")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Customer-experience scores from HubSpot, Zendesk and Shopify, written back where
    your staff work."""
    ctx.obj = State(config_path)
    ctx.call_on_close(ctx.obj.close)


for command in (configcheck.check_config, database.db_group, serve.serve, demo.demo, imports.import_,
                events.events, customers.customers, clock.scheduler_cmd, scoring.score, scoring.kpis_cmd,
                enrich.enrich_cmd, writeback.setup, writeback.sync_cmd, writeback.outbox,
                privacy_cli.forget, privacy_cli.export, backfill.backfill_cmd, alerts.alerts):
    main.add_command(command)
