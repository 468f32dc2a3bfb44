"""``cx-connector alerts``: active alerts and their deliveries, ``alerts check`` (evaluate and
send now) and ``alerts retry`` (re-queue failed deliveries)."""

from __future__ import annotations

from typing import Any

import click

from cx_connector import scheduler
from cx_connector.alerts import run as alerts_run
from cx_connector.alerts import status
from cx_connector.cli.base import State, emit_json, json_option, pass_state, table
from cx_connector.wording import counted


@click.group("alerts", invoke_without_command=True)
@click.option("--all", "include_cleared", is_flag=True, help="Cleared alerts too, not only active ones.")
@click.option("--rule", default=None, metavar="NAME", help="Only this rule's alerts.")
@click.option("--customer", "customer_id", type=int, default=None, metavar="ID", help="Only this customer's.")
@click.option("--limit", default=100, show_default=True, type=int)
@json_option
@click.pass_context
def alerts(
    ctx: click.Context,
    include_cleared: bool,
    rule: str | None,
    customer_id: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """List active alerts, newest first, with the state of each action (sent, retrying with
    its last error, failed with its reason), then the deliveries not sent yet or failed.

    `alerts check` evaluates the rules and sends what is due now; `alerts retry` re-queues
    failed deliveries after their cause is fixed."""
    if ctx.invoked_subcommand is not None:
        return
    rt = ctx.find_object(State).runtime()
    rows = status.list_alerts(
        rt.engine,
        include_cleared=include_cleared,
        rule=rule,
        customer_id=customer_id,
        limit=limit,
        configured=rt.config.alerts.rules,
    )
    open_ = status.list_deliveries(rt.engine, limit=limit)
    summary = status.summary(rt.engine)
    if as_json:
        emit_json({"summary": summary, "alerts": rows, "deliveries": open_})
        return
    if not rt.config.alerts.rules:
        click.echo("no alert rules configured (alerts.rules): nothing is watched")
    active = ", ".join(f"{name} {n}" for name, n in summary["active"].items()) or "none"
    sent = ", ".join(f"{n} {s}" for s, n in sorted(summary["deliveries"].items())) or "none yet"
    click.echo(f"active alerts: {active}\ndeliveries: {sent}")
    if rows:
        click.echo()
        table([_alert_row(a) for a in rows], ["rule", "customer", "fired", "status", "actions"])
    if open_:
        click.echo("\ndeliveries not sent yet or failed (`cx-connector alerts retry` re-queues failed ones):")
        table(
            [_delivery_row(d) for d in open_],
            ["id", "rule", "customer", "action", "status", "attempts", "next", "reason"],
        )


def _alert_row(a: dict[str, Any]) -> dict[str, Any]:
    actions = "; ".join(
        f"{d['action']} {d['status'] if d['status'] != 'pending' or not d['attempts'] else 'retrying'}"
        + (f" ({d['event']})" if d["event"] != "fired" else "")
        for d in a["deliveries"]
    )
    state = a["status"] + (" (baseline: not sent)" if a["baseline"] else "")
    if a.get("rule_configured") is False:
        state += " (rule no longer configured)"
    return {
        "rule": a["rule"],
        "customer": f"#{a['customer_id']}",
        "fired": f"{a['fired_at']:%Y-%m-%d %H:%M}",
        "status": state,
        "actions": actions or "-",
    }


def _delivery_row(d: dict[str, Any]) -> dict[str, Any]:
    state = "retrying" if d["status"] == "pending" and d["attempts"] else d["status"]
    return {
        "id": d["id"],
        "rule": d["rule"],
        "customer": f"#{d['customer_id']}",
        "action": d["action"],
        "status": state,
        "attempts": d["attempts"],
        "next": f"{d['next_attempt_at']:%Y-%m-%d %H:%M:%S}" if d["status"] == "pending" else "",
        "reason": d["last_error"] or "",
    }


@alerts.command("check")
@click.option(
    "--dry-run", is_flag=True, help="Only say which alerts would fire and clear; store and send nothing."
)
@json_option
@pass_state
def check(state: State, dry_run: bool, as_json: bool) -> None:
    """Evaluate the alert rules and send due alerts now (the scheduler does this every
    alerts.every and after each scoring run). Runs under the scheduler job's lease.
    Exits 1 when the run failed or a delivery failed for good."""
    rt = state.runtime()
    run = scheduler.run_job(
        rt, "alerts", lambda r: alerts_run.check(r, dry_run=dry_run), lease=alerts_run.LEASE
    )
    if as_json:
        emit_json(run)
    elif run["status"] == "skipped":
        click.echo("another alerts run is going on (its lease is held); nothing done")
    elif run["status"] == "failed":
        click.echo(f"alerts check failed: {run.get('error')}", err=True)
    else:
        _print_check(run["details"])
    delivered = (run.get("details") or {}).get("deliveries") or {}
    if run["status"] == "failed" or delivered.get("dead"):
        raise SystemExit(1)


def _print_check(details: dict[str, Any]) -> None:
    if not details["rules"]:
        click.echo("no alert rules configured (alerts.rules)")
    for r in details["rules"]:
        verb = "would fire" if details["dry_run"] else "fired"
        line = (
            f"{r['rule']} ({r['condition']}): {r['matching']} matching, {r['fired']} {verb}, "
            f"{r['cleared']} {'would clear' if details['dry_run'] else 'cleared'}"
        )
        if r["baseline"]:
            line += f", {r['baseline']} recorded as the baseline (not sent: first evaluation)"
        if r["moved"]:
            line += f", {r['moved']} moved to the customer they were merged into"
        click.echo(line)
        if details["dry_run"] and (r.get("fired_ids") or r.get("cleared_ids") or r.get("baseline_ids")):
            for key in ("fired_ids", "baseline_ids", "cleared_ids"):
                if r.get(key):
                    click.echo(
                        f"  {key.replace('_ids', '')}: "
                        + ", ".join(f"#{c}" for c in r[key][:50])
                        + (" ..." if len(r[key]) > 50 else "")
                    )
    d = details.get("deliveries")
    if d:
        click.echo(
            f"deliveries: {d['delivered']} sent, {d['retried']} to retry, {d['dead']} failed, "
            f"{d['skipped']} skipped"
            + (f", {d['recovered']} recovered from a run that died" if d["recovered"] else "")
        )
        for err in d.get("errors", []):
            click.echo(f"  paused: {err}", err=True)


@alerts.command("retry")
@click.argument("ids", nargs=-1, type=int)
@json_option
@pass_state
def retry(state: State, ids: tuple[int, ...], as_json: bool) -> None:
    """Re-queue failed (dead) deliveries, all or the given IDS, after fixing their cause;
    they are sent with the next alerts run (`cx-connector alerts check` sends them now)."""
    rt = state.runtime()
    requeued = status.requeue_dead(rt.engine, now=rt.now(), ids=ids or None)
    if as_json:
        emit_json({"requeued": requeued})
    elif requeued:
        click.echo(f"re-queued {counted(len(requeued), 'failed delivery')}: {', '.join(map(str, requeued))}")
    else:
        click.echo("no failed deliveries to re-queue")
