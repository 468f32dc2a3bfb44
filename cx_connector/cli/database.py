"""``cx-connector db ...``: schema migrations."""

from __future__ import annotations

import click

from cx_connector import db
from cx_connector.cli.base import State, pass_state


@click.group("db")
def db_group() -> None:
    """Database schema (Alembic migrations shipped in the package)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_state
def upgrade(state: State, revision: str) -> None:
    """Create or upgrade the tables (safe to run on every release)."""
    rt = state.runtime(migrated=False)
    before, after = db.upgrade(rt.engine, revision)
    if before == after:
        click.echo(f"database already at revision {after}: nothing to do")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after}")


@db_group.command("current")
@pass_state
def current(state: State) -> None:
    """Show the schema revision of the database and the one this release needs."""
    rt = state.runtime(migrated=False)
    click.echo(f"database: {db.current_revision(rt.engine) or 'empty'}")
    click.echo(f"release:  {db.head_revision()}")


