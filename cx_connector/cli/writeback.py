"""``cx-connector setup``, ``sync`` and ``outbox``: getting scores onto the platforms."""

from __future__ import annotations

from typing import Any

import click

from cx_connector import audit, db, scheduler, sync
from cx_connector.cli.base import Source, State, emit_json, json_option, pass_state, table
from cx_connector.errors import PlatformAPIError
from cx_connector.throttle import Clock, Limiter
from cx_connector.wording import counted

#: setup, sync, outbox retry: only a connector that writes back makes sense
source_option = click.option("--source", "sources", multiple=True, metavar="NAME",
                             type=Source(sync.writes_back, "does not write scores back"),
                             help="Only this platform (repeatable).")
#: the outbox listing may name a connector disabled since its writes were queued
stored_source_option = click.option("--source", "sources", multiple=True, metavar="NAME",
                                    type=Source(enabled=False), help="Only this platform (repeatable).")


# --- setup -------------------------------------------------------------------------------


@click.command("setup")
@click.option("--dry-run", is_flag=True,
              help="Only look: print the exact requests that would create what is missing.")
@source_option
@json_option
@pass_state
def setup(state: State, dry_run: bool, sources: tuple[str, ...], as_json: bool) -> None:
    """Create the score fields on each platform (HubSpot contact properties, Zendesk user
    fields, Shopify customer metafield definitions). Safe to run again: what exists is
    left alone. Exits 1 when a field exists with a conflicting type."""
    rt = state.runtime()
    targets = sync.writers(rt, sources)
    if not targets:
        raise click.ClickException("no enabled connector writes back: configure connectors.hubspot, "
                                   "connectors.zendesk or connectors.shopify")
    reports: list[dict[str, Any]] = []
    failed = False
    for name, connector in targets.items():
        throttle = Limiter(connector.rate_budget(), Clock())
        try:
            report = connector.setup(dry_run=dry_run, throttle=throttle)
        except PlatformAPIError as exc:
            failed = True
            reports.append({"source": name, "error": exc.message, "items": []})
            continue
        items = [{"name": i.name, "status": i.status, "detail": i.detail,
                  "request": None if i.request is None else
                  {"method": i.request.method, "path": i.request.path, "body": i.request.body}}
                 for i in report.items]
        failed = failed or bool(report.conflicts)
        reports.append({"source": name, "items": items, "changed": report.changed})
        if report.changed:
            with db.write(rt.engine) as conn:
                audit.record(conn, actor="cli", action="platform_setup", at=rt.now(), source=name,
                             details={"created": [i.name for i in report.items if i.status == "created"]})
        if not as_json:
            _print_setup(name, report, dry_run)
    if as_json:
        emit_json({"dry_run": dry_run, "platforms": reports})
    else:
        for r in reports:
            if r.get("error"):
                click.echo(f"{r['source']}: error: {r['error']}", err=True)
    if failed:
        raise SystemExit(1)


def _print_setup(name: str, report: Any, dry_run: bool) -> None:
    tally: dict[str, int] = {}
    for item in report.items:
        tally[item.status] = tally.get(item.status, 0) + 1
    for item in report.items:
        if item.status == "exists":
            continue
        click.echo(f"{name}: {item.status:12} {item.name}" + (f"  ({item.detail})" if item.detail else ""))
        if dry_run and item.request is not None:
            click.echo("  " + item.request.render().replace("\n", "\n  "))
    summary = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(tally.items()))
    if not any(s in tally for s in ("created", "would_create", "conflict", "failed")):
        n = len(report.items)
        click.echo(f"{name}: nothing to do, " + (f"the {counted(n, 'field')} already exists" if n == 1 else
                                                  f"all {counted(n, 'field')} already exist"))
    else:
        click.echo(f"{name}: {summary}")


# --- sync --------------------------------------------------------------------------------


@click.command("sync")
@click.option("--dry-run", is_flag=True,
              help="Print what would be sent; call no platform, change no write.")
@source_option
@json_option
@pass_state
def sync_cmd(state: State, dry_run: bool, sources: tuple[str, ...], as_json: bool) -> None:
    """Send pending score writes now (the scheduler does this every schedule.sync_every).

    Runs under the same lease as the scheduler's sync job, so the two never overlap.
    Exits 1 when a platform refused the run (e.g. a bad token) or the run failed.
    """
    rt = state.runtime()
    dry = dry_run or rt.config.writeback.dry_run
    run = scheduler.run_job(rt, "sync", lambda r: sync.sync(r, dry_run=dry, sources=sources or None),
                            lease="job:sync")
    if as_json:
        emit_json(run)
    elif run["status"] == "skipped":
        click.echo("another sync is running (its lease is held); nothing done")
    elif run["status"] == "failed":
        click.echo(f"sync failed: {run.get('error')}", err=True)
    else:
        _print_sync(run["details"])
    platforms = (run.get("details") or {}).get("platforms", {})
    if run["status"] == "failed" or any(p.get("errors") for p in platforms.values()):
        raise SystemExit(1)


def _print_sync(details: dict[str, Any]) -> None:
    platforms = details.get("platforms", {})
    if not platforms:
        click.echo("no enabled connector writes back")
    for name, p in platforms.items():
        if details.get("dry_run"):
            click.echo(f"{name} (dry run): {counted(p['writes'], 'pending write')}, "
                       f"{counted(p['requests'], 'request')} would be sent:")
            for req in p.get("planned", []):
                click.echo(f"  {req['method']} {req['path']}  ({counted(len(req['records']), 'record')})")
                click.echo("    " + db.json_dumps(req["body"]))
            continue
        click.echo(f"{name}: {counted(p['writes'], 'write')} in {counted(p['requests'], 'request')}: "
                   f"{p['landed']} written, "
                   f"{p['retried']} to retry, {p['dead']} dead, {p['gone']} gone, {p['merged']} merged"
                   + (f"; waited {p['waited_seconds']:.1f}s for the rate limit"
                      if p["waited_seconds"] else "")
                   + (f"; {counted(p['rate_limited'], 'time')} rate limited" if p["rate_limited"] else ""))
        for err in p.get("errors", []):
            click.echo(f"  error: {err}", err=True)


# --- outbox --------------------------------------------------------------------------------


@click.group("outbox", invoke_without_command=True)
@click.option("--dead", is_flag=True, help="Only dead writes (given up; need a person).")
@stored_source_option
@click.option("--limit", default=100, show_default=True, type=int)
@json_option
@click.pass_context
def outbox(ctx: click.Context, dead: bool, sources: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List score writes waiting to be sent, being retried or dead, with their reasons.

    `cx-connector outbox retry` sends dead writes again."""
    if ctx.invoked_subcommand is not None:
        return
    rt = ctx.find_object(State).runtime()
    rows = []
    for source in sources or (None,):
        rows += sync.list_writes(rt.engine, dead=dead, source=source, limit=limit)
    if as_json:
        emit_json({"counts": sync.counts(rt.engine), "writes": rows})
        return
    counts = sync.counts(rt.engine)
    if not rows:
        click.echo("no dead writes" if dead else "the outbox is empty: nothing pending, retried or dead")
        return
    for source, c in sorted(counts.items()):
        click.echo(f"{source}: " + ", ".join(f"{n} {s}" for s, n in sorted(c.items())))
    for r in rows:
        r["record"] = r["external_id"]
        r["status"] = "retrying" if r["status"] == "pending" and r["attempts"] else r["status"]
        r["fields"] = ", ".join(f"{k}={v}" for k, v in (r["fields"] or {}).items())
        r["next"] = f"{r['next_attempt_at']:%Y-%m-%d %H:%M:%S}" if r["status"] != "dead" else ""
        r["reason"] = r["last_error"]
    click.echo()
    table(rows, ["id", "source", "record", "status", "attempts", "next", "fields", "reason"])


@outbox.command("retry")
@click.argument("ids", nargs=-1, type=int)
@source_option
@json_option
@pass_state
def retry(state: State, ids: tuple[int, ...], sources: tuple[str, ...], as_json: bool) -> None:
    """Re-queue dead writes (all, or the given IDS) after fixing their cause."""
    rt = state.runtime()
    requeued: list[int] = []
    for source in sources or (None,):
        requeued += sync.requeue_dead(rt.engine, now=rt.now(), ids=ids or None, source=source)
    if as_json:
        emit_json({"requeued": requeued})
    elif requeued:
        click.echo(f"re-queued {counted(len(requeued), 'dead write')}: {', '.join(map(str, requeued))}; "
                   "they go out with the next sync")
    else:
        click.echo("no dead writes to re-queue")
