"""``cx-connector customers ...``: who the connector knows, across platforms."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import Connection, func, select

from cx_connector import db, identity
from cx_connector.cli.base import State, emit_json, json_option, pass_state, table
from cx_connector.models import customers as customers_t
from cx_connector.models import identities, scores, touchpoints


@click.group("customers")
def customers() -> None:
    """Customers: list, show."""


def _identities(conn: Connection, ids: list[int]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {i: [] for i in ids}
    for r in conn.execute(select(identities.c.customer_id, identities.c.kind, identities.c.source,
                                 identities.c.value, identities.c.gone_at)
                          .where(identities.c.customer_id.in_(ids))
                          .order_by(identities.c.id)).mappings():
        out[r["customer_id"]].append({"kind": r["kind"], "source": r["source"] or None,
                                      "value": r["value"], "gone": r["gone_at"] is not None})
    return out


def customer_summaries(conn: Connection, ids: list[int]) -> list[dict[str, Any]]:
    if not ids:
        return []
    rows = {r["id"]: dict(r) for r in conn.execute(
        select(customers_t.c.id, customers_t.c.email, customers_t.c.phone, customers_t.c.name,
               customers_t.c.created_at, customers_t.c.changed_at, customers_t.c.scored_at)
        .where(customers_t.c.id.in_(ids))).mappings()}
    stats = {r["customer_id"]: r for r in conn.execute(
        select(touchpoints.c.customer_id, func.count().label("touchpoints"),
               func.max(touchpoints.c.occurred_at).label("last_touch"))
        .where(touchpoints.c.customer_id.in_(ids)).group_by(touchpoints.c.customer_id)).mappings()}
    score_rows = {r["customer_id"]: r for r in conn.execute(
        select(scores.c.customer_id, scores.c.score_values).where(scores.c.customer_id.in_(ids))).mappings()}
    idents = _identities(conn, ids)
    out = []
    for cid in ids:
        if cid not in rows:
            continue
        r = rows[cid]
        s = stats.get(cid)
        last = s["last_touch"] if s else None
        if last is not None and last.tzinfo is None:  # SQLite aggregates skip the type decorator
            from datetime import UTC, datetime
            last = datetime.fromisoformat(str(last)).replace(tzinfo=UTC)
        r["touchpoints"] = s["touchpoints"] if s else 0
        r["last_touch"] = last
        r["sources"] = sorted({i["source"] for i in idents[cid] if i["kind"] == "id"})
        r["identities"] = idents[cid]
        r["scores"] = dict(score_rows[cid]["score_values"]) if cid in score_rows else {}
        out.append(r)
    return out


@customers.command("list")
@click.option("--limit", default=50, show_default=True, type=int)
@click.option("--offset", default=0, show_default=True, type=int)
@json_option
@pass_state
def list_(state: State, limit: int, offset: int, as_json: bool) -> None:
    """List customers (merged-away customers are not listed), newest first."""
    rt = state.runtime()
    with db.read(rt.engine) as conn:
        ids = list(conn.execute(select(customers_t.c.id)
                                .where(customers_t.c.merged_into_id.is_(None))
                                .order_by(customers_t.c.id.desc()).limit(limit).offset(offset))
                   .scalars())
        rows = customer_summaries(conn, ids)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no customers yet")
        return
    for r in rows:
        r["sources"] = ",".join(r["sources"])
        for key, value in r["scores"].items():
            r[key] = value
    extra = [c for c in ("cx_score", "cx_health", "cx_retention_probability", "cx_churn_risk")
             if any(c in r for r in rows)]
    table(rows, ["id", "email", "name", "sources", "touchpoints", "last_touch", *extra])


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
        summary = customer_summaries(conn, [cid])[0]
        tps = [dict(r) for r in conn.execute(
            select(touchpoints.c.source, touchpoints.c.touchpoint_id, touchpoints.c.occurred_at,
                   touchpoints.c.kind, touchpoints.c.stage, touchpoints.c.channel,
                   touchpoints.c.value, touchpoints.c.currency, touchpoints.c.rating_type,
                   touchpoints.c.rating_score, touchpoints.c.rating_scale_max)
            .where(touchpoints.c.customer_id == cid)
            .order_by(touchpoints.c.occurred_at.desc(), touchpoints.c.id.desc()).limit(limit)
        ).mappings()]
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
            click.echo(f"    {k}: {v}")
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
    from cx_connector.scoring import explain as words

    rt = state.runtime()
    with db.read(rt.engine) as conn:
        cid = identity.find_customer(conn, who)
        if cid is None:
            raise click.ClickException(f"no customer matches {who!r}")
        row = conn.execute(select(scores.c.scored_at, scores.c.score_values, scores.c.explanation)
                           .where(scores.c.customer_id == cid)).first()
        if row is None:
            raise click.ClickException(f"customer {cid} has not been scored yet: run `cx-connector score`")
        explanation = words.stored(conn, dict(row.explanation or {}))
    values = dict(row.score_values)
    text = words.render(explanation, values)
    if as_json:
        emit_json({"customer_id": cid, "scored_at": row.scored_at,
                   "scores": {name: {"value": values.get(name), "explanation": text[name]}
                              for name in FIELDS},
                   "inputs": explanation})
        return
    click.echo(f"customer {cid}, scored {row.scored_at:%Y-%m-%d %H:%M} UTC")
    for name, field in FIELDS.items():
        value = values.get(name)
        click.echo(f"\n{field.label} ({name}): {'no value' if value is None else value}")
        click.echo(f"  {text[name]}")
