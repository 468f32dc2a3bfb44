"""``cx-connector enrich``: look up platform ids seen without contact details, now."""

from __future__ import annotations

import functools

import click

from cx_connector import enrich as enrichment
from cx_connector import scheduler
from cx_connector.cli.base import Source, State, emit_json, json_option, pass_state, table
from cx_connector.wording import counted


@click.command("enrich")
@click.option("--source", default=None, metavar="NAME",
              type=Source(enrichment.can_look_up, "cannot look records up"),
              help="Only this connector (e.g. hubspot).")
@click.option("--limit", default=None, type=click.IntRange(min=1),
              help="Look up at most this many ids per connector.")
@json_option
@pass_state
def enrich_cmd(state: State, source: str | None, limit: int | None, as_json: bool) -> None:
    """Look up contact details of platform ids seen without them (HubSpot contacts, deals,
    tickets and chats; Zendesk users), in batches, and link them to their customer.

    The scheduler runs the same job every schedule.enrich_every; both share one lease,
    so they never run at once. A rate limit or an outage stops a platform's lookups
    cleanly, keeping every batch done: run the command again later to continue.

    Exit codes: 0 every candidate looked up (or the time budget used up: run it
    again), 1 a platform cut the run short (refused the requests, e.g. a wrong token;
    rate limited; unreachable), 2 usage or configuration error, 3 another process is
    running the job.
    """
    rt = state.runtime()
    run = scheduler.run_job(rt, "enrich", functools.partial(enrichment.enrich, source=source,
                                                            limit=limit))
    details = run["details"] if run["status"] == "ok" else {}
    cut_short = {name: r for name, r in details.items()
                 if r.get("stopped_by") in enrichment.PLATFORM_STOPS}
    if as_json:
        emit_json(run)
    elif run["status"] == "skipped":
        click.echo("another process is running the enrichment job right now; try again later")
    elif run["status"] == "ok":
        rows = [{"source": name, **r} for name, r in details.items()]
        if not rows:
            click.echo("no enabled connector can look records up")
        table(rows, ["source", "candidates", "looked_up", "linked", "gone", "left", "stopped"])
    if run["status"] == "failed":
        if not as_json:
            click.echo(f"error: {run['error']}", err=True)
        raise SystemExit(1)
    if run["status"] == "skipped":
        raise SystemExit(3)
    if cut_short:
        if not as_json:
            for name, r in cut_short.items():
                click.echo(f"error: {name} stopped the lookups, {counted(r['left'], 'id')} left: "
                           f"{r['stopped']}; "
                           "run `cx-connector enrich` again later to continue", err=True)
        raise SystemExit(1)
