"""``cx-connector events ...``: the webhook inbox (received, queued, failed, ignored; replay)."""

from __future__ import annotations

import click
from sqlalchemy import func, select

from cx_connector import db, inbox
from cx_connector.cli.base import Source, State, emit_json, json_option, pass_state, table
from cx_connector.models import deliveries, touchpoints
from cx_connector.wording import counted


@click.group("events")
def events() -> None:
    """Inbound webhook deliveries: list, show, replay."""


@events.command("list")
@click.option("--failed", "status", flag_value="failed", help="Only failed deliveries.")
@click.option("--ignored", "status", flag_value="ignored", help="Only ignored deliveries.")
@click.option("--queued", "status", flag_value="queued",
              help="Only deliveries whose privacy request the clock has not applied yet.")
@click.option("--status", "status",
              type=click.Choice(["processed", "queued", "failed", "ignored", "received"]))
@click.option("--source", default=None, metavar="NAME", type=Source(enabled=False),
              help="Only this connector.")
@click.option("--limit", default=50, show_default=True, type=int)
@json_option
@pass_state
def list_(state: State, status: str | None, source: str | None, limit: int, as_json: bool) -> None:
    """List the newest deliveries with their status and error."""
    rt = state.runtime()
    with db.read(rt.engine) as conn:
        rows = inbox.list_deliveries(conn, status=status, source=source, limit=limit)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no deliveries" + (f" with status {status}" if status else ""))
        return
    table(rows, ["id", "received_at", "source", "topic", "status", "touchpoints", "error"])


@events.command("show")
@click.argument("delivery_id", type=int)
@json_option
@pass_state
def show(state: State, delivery_id: int, as_json: bool) -> None:
    """Show one delivery: headers, body and outcome."""
    rt = state.runtime()
    with db.read(rt.engine) as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).mappings().first()
        n = conn.execute(select(func.count()).where(touchpoints.c.delivery_id == delivery_id)).scalar()
    if row is None:
        raise click.ClickException(f"no delivery {delivery_id}")
    out = dict(row)
    out["touchpoints"] = n
    out["body"] = None if row["body"] is None else bytes(row["body"]).decode("utf-8", "replace")
    if as_json:
        emit_json(out)
        return
    for key in ("id", "source", "topic", "received_at", "status", "attempts", "touchpoints",
                "processed_at", "error"):
        click.echo(f"{key:12} {out[key]}")
    click.echo("headers:")
    for k, v in (out["headers"] or {}).items():
        click.echo(f"  {k}: {v}")
    click.echo("body:")
    click.echo(out["body"] if out["body"] is not None else "  (erased for privacy)")


@events.command("replay")
@click.argument("delivery_id", type=int, required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Replay every failed delivery.")
@click.option("--source", default=None, metavar="NAME", type=Source(),
              help="With --failed: only this connector.")
@json_option
@pass_state
def replay(state: State, delivery_id: int | None, all_failed: bool, source: str | None,
           as_json: bool) -> None:
    """Normalise stored deliveries again (after fixing the cause of a failure).

    A queued delivery's privacy request is applied at once (not left to the clock).
    Exits 1 when a replayed delivery fails again.
    """
    if (delivery_id is None) == (not all_failed):
        raise click.UsageError("give a delivery ID or --failed (not both)")
    rt = state.runtime()
    if all_failed:
        results = inbox.replay_failed(rt.engine, rt.connectors, source=source, now=rt.now())
    else:
        results = [inbox.replay(rt.engine, rt.connectors, delivery_id, now=rt.now())]
    if as_json:
        emit_json([r.__dict__ for r in results])
    else:
        if not results:
            click.echo("no failed deliveries to replay")
        for r in results:
            line = f"delivery {r.delivery_id}: {r.status}"
            if r.status == "processed":
                line += f" ({counted(r.touchpoints, 'new touchpoint')})"
            if r.error:
                line += f": {r.error}"
            click.echo(line)
    if any(r.status not in ("processed", "ignored") for r in results):
        raise SystemExit(1)
