"""``cx-connector customers ...``: who the connector knows, across platforms."""

from __future__ import annotations

import click

from cx_connector import customers as people
from cx_connector import db, identity
from cx_connector.cli.base import State, emit_json, json_option, pass_state, shown, table
from cx_connector.wording import counted


@click.group("customers")
def customers() -> None:
    """Customers: list, show."""


@customers.command("list")
@click.option("--limit", default=50, show_default=True, type=int)
@click.option("--offset", default=0, show_default=True, type=int)
@click.option("--health", type=click.Choice(people.HEALTH_FILTERS), default=None,
              help="Only customers of this cx_health (none: not scored, or no health).")
@json_option
@pass_state
def list_(state: State, limit: int, offset: int, health: str | None, as_json: bool) -> None:
    """List customers (merged-away customers are not listed), newest first.

    When more customers match than are shown, a last line says how many (the JSON output
    is a bare list, kept as it was: it cannot say so without breaking its readers)."""
    rt = state.runtime()
    with db.read(rt.engine) as conn:
        rows = people.summaries(conn, people.listing(conn, health=health, limit=limit, offset=offset))
        # counted only when the page is full: a short page is the end of the list
        total = people.count(conn, health=health) if rows and len(rows) >= limit else None
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no customers yet" if health is None and not offset else "no customers match")
        return
    for r in rows:
        r["sources"] = ",".join(r["sources"])
        for key, value in r["scores"].items():
            r[key] = shown(value)  # a scored customer's missing value; not scored: blank
    extra = [c for c in ("cx_score", "cx_health", "cx_retention_probability", "cx_churn_risk")
             if any(c in r for r in rows)]
    table(rows, ["id", "email", "name", "sources", "touchpoints", "last_touch", *extra])
    if total is not None and offset + len(rows) < total:
        which = f" with cx_health {health}" if health else ""
        first = f"{offset + 1:,}-{offset + len(rows):,}" if offset else f"{len(rows):,}"
        more = f"--offset {offset + len(rows)}" if offset else f"--limit N or --offset {len(rows)}"
        click.echo(f"{first} of {counted(total, 'customer')}{which} shown; {more} for more")


@customers.command("show")
@click.argument("who")
@click.option("--touchpoints", "limit", default=50, show_default=True, type=int,
              help="How many of the newest touchpoints to show.")
@json_option
@pass_state
def show(state: State, who: str, limit: int, as_json: bool) -> None:
    """One customer by id, email, phone or SOURCE:ID (e.g. shopify:7064...)."""
    rt = state.runtime()
    with db.read(rt.engine) as conn:
        cid = identity.find_customer(conn, who)
        if cid is None:
            raise click.ClickException(f"no customer matches {who!r}")
        summary = people.summaries(conn, [cid])[0]
        tps = people.timeline(conn, cid, limit=limit)
    summary["timeline"] = tps
    if as_json:
        emit_json(summary)
        return
    click.echo(f"customer {cid}: {summary['name'] or ''} <{summary['email'] or 'no email'}>")
    if summary["phone"]:
        click.echo(f"  phone: {summary['phone']}")
    click.echo("  identities:")
    for i in summary["identities"]:
        label = f"{i['source']}:{i['value']}" if i["kind"] == "id" else f"{i['kind']}:{i['value']}"
        click.echo(f"    {label}{' (gone)' if i['gone'] else ''}")
    if summary["scores"]:
        click.echo("  scores:")
        for k, v in summary["scores"].items():
            click.echo(f"    {k}: {shown(v)}")
    click.echo(f"  touchpoints ({summary['touchpoints']}, newest first):")
    for t in tps:
        rating = (f" {t['rating_type']}={t['rating_score']}/{t['rating_scale_max']}"
                  if t["rating_type"] else "")
        value = f" {t['value']} {t['currency'] or ''}".rstrip() if t["value"] is not None else ""
        click.echo(f"    {t['occurred_at']:%Y-%m-%d %H:%M}  {t['source']:8} {t['kind']:18} "
                   f"{t['stage']:13} {t['channel']:6}{value}{rating}")


@customers.command("explain")
@click.argument("who")
@json_option
@pass_state
def explain(state: State, who: str, as_json: bool) -> None:
    """Every score of one customer with the inputs and weights that made it.

    WHO is an id, email, phone or SOURCE:ID. The explanation is the one stored by the
    scoring run that computed the scores, so it shows how they were made even if the
    configuration changed since.
    """
    from cx_connector.fields import FIELDS

    rt = state.runtime()
    with db.read(rt.engine) as conn:
        cid = identity.find_customer(conn, who)
        if cid is None:
            raise click.ClickException(f"no customer matches {who!r}")
        out = people.explained(conn, cid)
    if out is None:
        raise click.ClickException(f"customer {cid} has not been scored yet: run `cx-connector score`")
    if as_json:
        emit_json(out)
        return
    click.echo(f"customer {cid}, scored {out['scored_at']:%Y-%m-%d %H:%M} UTC")
    for name, field in FIELDS.items():
        value = out["scores"][name]["value"]
        click.echo(f"\n{field.label} ({name}): {shown(value)}")
        click.echo(f"  {out['scores'][name]['explanation']}")
