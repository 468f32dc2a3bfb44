"""``cx-connector demo``: the whole pipeline on bundled sample events, offline.

No configuration file and no platform account: every installed connector is
enabled with its demo settings, its bundled sample deliveries are signed and
posted to the real webhook endpoint (in-process), and what was stored is printed.
Then every customer is scored and the company KPIs are computed, as of the day
after the newest sample event (so the output does not change with the calendar),
and the last step shows what the dry-run write-back would send to each platform.
"""

from __future__ import annotations

import re
import shlex
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, literal, select

from cx_connector import db, inbox, logs, registry
from cx_connector.cli.base import emit_json, shown, table
from cx_connector.cli.scoring import KPI_ROWS, stages_line
from cx_connector.config import config_from_mapping
from cx_connector.db import json_dumps
from cx_connector.errors import ConfigError
from cx_connector.models import customers, deliveries, scores, touchpoints
from cx_connector.runtime import Runtime, build
from cx_connector.wording import counted


def demo_config(database_url: str) -> Any:
    sections = {}
    for name, cls in registry.available().items():
        settings = cls.demo_settings()
        if settings:
            sections[name] = settings
    return config_from_mapping({
        "database_url": database_url,
        "admin_token": "demo-admin-token-not-for-production",
        "writeback": {"dry_run": True},
        "logging": {"level": "WARNING"},
        "connectors": sections,
    }, env={}, origin="<demo>")


def ingest_samples(rt: Runtime) -> list[dict]:
    """Sign every bundled sample and POST it to /webhooks/<source>."""
    from cx_connector.app import create_app

    app = create_app(rt=rt, configure_logging=False)
    client = app.test_client()
    results = []
    for name, connector in rt.connectors.items():
        for sample in connector.sample_deliveries():
            url = f"http://localhost/webhooks/{name}"
            headers = dict(sample.headers)
            headers.update(connector.sign(sample.body, headers, method="POST", url=url, now=rt.now()))
            headers.setdefault("Content-Type", "application/json")
            resp = client.post(f"/webhooks/{name}", data=sample.body, headers=headers)
            body = resp.get_json(silent=True) or {}
            results.append({"sample": sample.name, "http": resp.status_code,
                            "status": body.get("status"), "touchpoints": body.get("touchpoints"),
                            "error": body.get("error") or body.get("message")})
    return results


def score_samples(rt: Runtime) -> dict[str, Any]:
    """Score every customer and take a KPI snapshot, as of the day after the newest event."""
    from cx_connector import scheduler
    from cx_connector.scoring import kpis, run

    with db.read(rt.engine) as conn:
        newest = conn.execute(select(func.max(touchpoints.c.occurred_at))).scalar()
    if newest is not None and newest.tzinfo is None:  # SQLite aggregates skip the type decorator
        newest = datetime.fromisoformat(str(newest)).replace(tzinfo=UTC)
    as_of = min(rt.now(), (newest or rt.now()).replace(hour=0, minute=0, second=0, microsecond=0)
                + timedelta(days=1))
    at = Runtime(config=rt.config, engine=rt.engine, connectors=rt.connectors, clock=lambda: as_of)
    scored = scheduler.run_job(at, "score", lambda r: run.run(r, full=True), lease=run.LEASE)
    snap = scheduler.run_job(at, "kpis", lambda r: kpis.snapshot(r, force=True), lease=kpis.LEASE)
    with db.read(rt.engine) as conn:
        rows = conn.execute(select(customers.c.id, customers.c.email, scores.c.score_values)
                            .select_from(customers.join(scores, scores.c.customer_id == customers.c.id))
                            .where(customers.c.merged_into_id.is_(None)).order_by(customers.c.id)).all()
    return {"as_of": as_of, "run": scored.get("details") or {"error": scored.get("error")},
            "customers": [{"id": cid, "email": email, "scores": values} for cid, email, values in rows],
            "kpis": (snap.get("details") or {}).get("kpis")}


def _customer_line(c: dict[str, Any]) -> str:
    v = c["scores"]
    show = shown  # n/a for a missing value, as `customers show` and `score` print it
    parts = [f"CX {show(v.get('cx_score'))} ({show(v.get('cx_health'))})",
             f"retention {show(v.get('cx_retention_probability'), '{}%')} "
             f"(churn risk {show(v.get('cx_churn_risk'))})",
             f"expected purchases {show(v.get('cx_expected_purchases_90d'))}",
             f"90-day value {show(v.get('cx_clv_90d'))}",
             f"cross-sell {show(v.get('cx_cross_sell_score'))} -> {show(v.get('cx_next_best_product'))}",
             f"NPS {show(v.get('cx_nps_last'))} ({show(v.get('cx_nps_category'))})",
             f"CSAT {show(v.get('cx_csat'), '{}%')}", f"stage {show(v.get('cx_journey_stage'))}"]
    return f"#{c['id']} {c['email'] or ''}\n    " + " | ".join(parts)


def stored_touchpoints(rt: Runtime) -> list[dict]:
    with db.read(rt.engine) as conn:
        rows = conn.execute(
            select(touchpoints.c.source, touchpoints.c.touchpoint_id, touchpoints.c.occurred_at,
                   touchpoints.c.kind, touchpoints.c.stage, touchpoints.c.channel,
                   touchpoints.c.value, touchpoints.c.currency, touchpoints.c.rating_type,
                   touchpoints.c.rating_score, touchpoints.c.customer_id,
                   customers.c.email.label("email"))
            .select_from(touchpoints.outerjoin(customers, customers.c.id == touchpoints.c.customer_id))
            .order_by(touchpoints.c.customer_id, touchpoints.c.occurred_at)).mappings().all()
    return [dict(r) for r in rows]


def writeback_preview(rt: Runtime) -> dict[str, Any]:
    """What the dry-run sync would write to each platform for the demo's customers."""
    from cx_connector import sync

    return sync.sync(rt, dry_run=True)["platforms"]


def echo_writeback(preview: dict[str, Any]) -> None:
    click.echo("\nWrite-back (dry run, nothing is sent):")
    if not any(p["writes"] for p in preview.values()):
        click.echo("  nothing to write: no scored customer has a record on a platform that writes back")
        return
    for name, p in preview.items():
        click.echo(f"  {name}: {counted(p['writes'], 'record write')} in "
                   f"{counted(p['requests'], 'request')}")
        for req in p["planned"]:
            click.echo(f"    {req['method']} {req['path']}")
            click.echo("      " + json_dumps(req["body"])[:2000])


def explain_command(database_url: str, who: int | str) -> str:
    """The shell commands that explain a demo customer's scores from the kept database:
    ``customers explain`` reads its database from a configuration file, and the demo has
    none on disk."""
    plain = re.fullmatch(r"[A-Za-z][\w+.-]*://[\w/@.%=?&+,~-]*", database_url)
    line = "database_url: " + (database_url if plain else  # else YAML single-quoted
                               "'" + database_url.replace("'", "''") + "'")
    return (f"echo {shlex.quote(line)} > cx-demo.yaml && "
            f"cx-connector --config cx-demo.yaml customers explain {who}")


#: what makes a database "not empty" for the demo, with the words its refusal uses
HOLDS = ((customers, "customers"), (touchpoints, "touchpoints"), (deliveries, "webhook deliveries"))


def data_held(engine: Any) -> list[str]:
    """What the database already holds of :data:`HOLDS` (nothing: a new file, an empty
    database or one with the tables but no rows). Read before any migration: a database
    the demo refuses must not be changed either, not even its schema. One row is enough to
    tell (no count of a large table)."""
    from sqlalchemy import inspect

    with engine.connect() as conn:
        present = set(inspect(conn).get_table_names())
        return [words for table, words in HOLDS if table.name in present and conn.execute(
            select(literal(1)).select_from(table).limit(1)).first() is not None]


def refuse_data(held: list[str]) -> None:
    """The demo posts sample customers, rescores everyone and leaves sample write-backs
    pending in the outbox, which a real `sync` would later send to the platform ids of the
    samples: in a database with data of its own that is damage, not a demo."""
    what = ", ".join(held[:-1]) + (" and " if len(held) > 1 else "") + held[-1]
    raise click.BadParameter(
        f"this database already holds {what}. The demo adds sample customers, rescores "
        "everyone and queues write-backs that a real `sync` would send, so it only runs on a "
        "new file or an empty database: choose one (e.g. sqlite:///cx-demo-2.db). A database "
        "an earlier demo filled is refused too: the demo runs once per database.",
        param_hint="'--database-url'")


@click.command("demo")
@click.option("--database-url", default=None,
              help="Keep the demo data in this database (default: a temporary SQLite file).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def demo(database_url: str | None, as_json: bool) -> None:
    """Run the pipeline on the bundled sample events (SQLite, no accounts needed).

    With --database-url the database must be new or empty (no customer, touchpoint or
    webhook delivery): the demo refuses one with data, including one it filled before
    (exit code 2)."""
    with tempfile.TemporaryDirectory(prefix="cx-demo-") as tmp:
        url = database_url or f"sqlite:///{Path(tmp) / 'demo.db'}"
        try:
            config = demo_config(url)
        except ConfigError as exc:  # a third-party connector with broken demo settings
            raise click.ClickException(str(exc)) from None
        logs.configure("ERROR", "text", config.secrets())
        rt = build(config)
        held = data_held(rt.engine) if database_url else []
        if held:
            rt.engine.dispose()
            refuse_data(held)
        db.upgrade(rt.engine)
        report: dict[str, Any] = {"database_url": url if database_url else "(temporary)"}
        report["deliveries"] = ingest_samples(rt)
        # privacy requests (erasures, exports) are queued by the webhook and applied by the
        # clock's privacy job within a minute: the demo runs it now, as the clock would
        from cx_connector import scheduler

        report["privacy"] = scheduler.run_job(rt, "privacy", inbox.privacy_job)["details"]
        report["touchpoints"] = stored_touchpoints(rt)
        with db.read(rt.engine) as conn:
            report["inbox"] = dict(conn.execute(
                select(deliveries.c.status, func.count()).group_by(deliveries.c.status)).all())
        report["scoring"] = score_samples(rt)  # fills the outbox ...
        report["writeback"] = writeback_preview(rt)  # ... that this shows
        rt.engine.dispose()
    if as_json:
        emit_json(report)
        return
    click.echo(f"cx-connector demo: {counted(len(report['deliveries']), 'sample delivery')} from "
               f"{', '.join(config.connectors)} posted to /webhooks/<source>\n")
    click.echo("Inbox: " + ", ".join(f"{k} {v}" for k, v in sorted(report["inbox"].items())))
    if report["privacy"].get("queued"):
        click.echo(f"  privacy requests: {report['privacy']['queued']} queued by the webhooks, applied by "
                   "the clock's privacy job (within a minute; here at once)")
    failed = [d for d in report["deliveries"] if d["http"] != 200 or d["status"] == "failed"]
    for d in failed:
        click.echo(f"  {d['sample']}: HTTP {d['http']} {d['status'] or ''} {d['error'] or ''}")
    click.echo(f"\nTouchpoints stored ({len(report['touchpoints'])}):")
    rows = []
    for t in report["touchpoints"]:
        detail = ""
        if t["value"] is not None:
            detail = f"{t['value']} {t['currency'] or ''}".strip()
        if t["rating_type"]:
            detail = f"{t['rating_type']} {t['rating_score']}"
        rows.append({**t, "customer": f"#{t['customer_id']} {t['email'] or ''}".strip(),
                     "when": f"{t['occurred_at']:%Y-%m-%d %H:%M}", "detail": detail})
    table(rows, ["customer", "when", "source", "kind", "stage", "channel", "detail"])
    scoring = report["scoring"]
    run_report = scoring["run"]
    click.echo(f"\nScores as of {scoring['as_of']:%Y-%m-%d} (the day after the newest sample event):")
    if "error" in run_report:
        click.echo(f"  scoring failed: {run_report['error']}")
    else:
        bg = run_report["models"]["bgnbd"]
        click.echo("  retention model: " + ("BG/NBD" if bg["used"] == "bgnbd" else
                                           f"recency fallback ({bg['reason']})"))
    for c in scoring["customers"]:
        click.echo("  " + _customer_line(c))
    if database_url:
        first = next((c["email"] or c["id"] for c in scoring["customers"]), "ID_OR_EMAIL")
        click.echo("  why each score is what it is: a one-line configuration naming this database is "
                   "enough:\n    " + explain_command(database_url, first))
    else:
        click.echo("  (why: run `cx-connector demo --database-url sqlite:///cx-demo.db` to keep the data; "
                   "it prints the command that explains each score)")
    k = scoring["kpis"] or {}
    window = f" (rolling {counted(k['window_days'], 'day')})" if k.get("window_days") else ""
    click.echo(f"\nCompany KPIs{window}:")
    for key, label in KPI_ROWS:
        click.echo(f"  {label}: {shown(k.get(key))}")
    click.echo(f"  {stages_line(k)}")
    echo_writeback(report["writeback"])
