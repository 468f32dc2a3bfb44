"""``cx-connector score`` and ``cx-connector kpis``: scoring runs and company KPIs on demand.

Both go through :func:`cx_connector.scheduler.run_job` with the same database lease
as the scheduled jobs, so a run from the command line and one from the clock
process never overlap (the second is skipped and says so).
"""

from __future__ import annotations

from datetime import UTC, date
from typing import Any

import click

from cx_connector import db, identity, scheduler
from cx_connector.cli.base import State, emit_json, json_option, pass_state, shown, table
from cx_connector.wording import counted


def _run(rt: Any, job_id: str, func: Any, lease: str) -> dict[str, Any]:
    record = scheduler.run_job(rt, job_id, func, lease=lease)
    if record["status"] == "skipped":
        raise click.ClickException(f"another process is running the {job_id} job right now (the "
                                   "scheduler?); nothing was done, try again when it has finished")
    if record["status"] == "failed":
        raise click.ClickException(f"the {job_id} job failed: {record.get('error')} "
                                   f"(details in job run {record.get('id')})")
    return record


def _g(value: float) -> str:
    return f"{value:.4g}"


def print_report(report: dict[str, Any]) -> None:
    secs = report.get("duration_ms", 0) / 1000
    if report["mode"] == "as_of":
        # the run's own reason ("as of DAY (report only: nothing stored)") would say "report
        # only" a second time after the mode
        day = report["as_of"].astimezone(UTC).date().isoformat()
        how = f"report-only run as of {day}: nothing stored"
    else:
        mode = {"full": "full pass", "incremental": "incremental run"}[report["mode"]]
        how = f"{mode}: {report['why']}"
    line = f"Scored {counted(report['customers_scored'], 'customer')} ({how}) in {secs:.1f} s"
    if report.get("stored", True) and report["mode"] != "as_of":
        line += (f"; {report.get('changed', 0)} changed, "
                 f"{counted(report.get('outbox_queued', 0), 'write')} queued")
    click.echo(line + ".")
    models = report.get("models")
    if models:
        b, g, c = models["bgnbd"], models["gamma_gamma"], models["cross_sell"]
        if b["used"] == "bgnbd":
            click.echo(f"Retention: BG/NBD fitted on {counted(b['customers'], 'purchasing customer')}: "
                       f"r={_g(b['r'])} alpha={_g(b['alpha'])} a={_g(b['a'])} b={_g(b['b'])} "
                       f"(log-likelihood {b['log_likelihood']:.1f})")
        else:
            click.echo(f"Retention: recency fallback ({b['reason']})")
        if g["used"] == "gamma_gamma":
            click.echo(f"Spend: Gamma-Gamma fitted on {counted(g['customers'], 'repeat buyer')}: "
                       f"p={_g(g['p'])} q={_g(g['q'])} gamma={_g(g['gamma'])} "
                       f"(average purchase {g['population_mean']:.2f})")
        else:
            click.echo(f"Spend: customers' own average purchase ({g['reason']})")
        click.echo(f"Cross-sell by {c['by']}: {counted(c['rules'], 'association')} between "
                   f"{counted(c['items'], 'item')} from {counted(c['customers'], 'customer')}")
    for name, counts in (report.get("distribution") or {}).items():
        click.echo(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for customer in report.get("customers") or []:
        click.echo(f"\ncustomer {customer['id']}:")
        for field, value in customer["scores"].items():
            click.echo(f"  {field}: {shown(value)}")
            click.echo(f"      {customer['explanation'][field]}")


@click.command("score")
@click.option("--full", is_flag=True, help="Refit the population models and rescore every customer.")
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), default=None, metavar="DATE",
              help="Score as of the end of DATE (UTC), ignoring later touchpoints. Report only: "
                   "nothing is stored and nothing is written to the platforms.")
@click.option("--customer", "who", multiple=True, metavar="ID_OR_EMAIL",
              help="Also print this customer's scores and explanation (repeatable).")
@json_option
@pass_state
def score(state: State, full: bool, as_of: Any, who: tuple[str, ...], as_json: bool) -> None:
    """Score customers now: those changed since the last run, or everyone with --full.

    The scheduler runs this every schedule.score_every, with a full pass once a day
    (schedule.full_score_at). Prints the run: customers scored, duration, and the
    fitted model parameters, or the fallback used and why.
    """
    from cx_connector.scoring import run

    rt = state.runtime()
    ids = []
    with db.read(rt.engine) as conn:
        for ref in who:
            cid = identity.find_customer(conn, ref)
            if cid is None:
                raise click.ClickException(f"no customer matches {ref!r}")
            ids.append(cid)
    day: date | None = as_of.date() if as_of else None
    today = rt.now().astimezone(UTC).date()
    if day is not None and day > today:
        raise click.BadParameter(f"{day.isoformat()} is in the future (today is {today.isoformat()} UTC); "
                                 "scores can only be computed from what has happened", param_hint="'--as-of'")
    record = _run(rt, "score", lambda r: run.run(r, full=full, as_of=day, show=ids), run.LEASE)
    report = record["details"]
    if as_json:
        emit_json(report)
    else:
        print_report(report)


KPI_ROWS = [
    ("nps", "NPS (promoters - detractors, %)"), ("nps_change", "NPS change vs previous window (points)"),
    ("csat", "CSAT (% satisfied)"), ("retention_rate", "Retention rate (%)"),
    ("churn_rate", "Churn rate (%)"),
    ("repeat_purchase_rate", "Repeat-purchase rate (%)"), ("cross_sell_rate", "Cross-sell rate (%)"),
    ("revenue", "Revenue"), ("revenue_growth", "Revenue growth vs previous window (%)"),
    ("tickets_per_customer", "Tickets per active customer"),
    ("median_resolution_hours", "Median resolution time (hours)"),
    ("checkout_conversion", "Checkout-to-order conversion (%)"), ("avg_cx_score", "Average CX score"),
]

#: each customer counts once, in the furthest journey stage they reached: "purchase 0" means
#: everyone who bought went further, not that nobody bought
STAGES_LABEL = "Customers per stage (furthest reached)"


def stages_line(snapshot: dict[str, Any]) -> str:
    """The KPI snapshot's customers per journey stage, as ``kpis`` and the demo print it."""
    return f"{STAGES_LABEL}: " + ", ".join(
        f"{stage} {n}" for stage, n in (snapshot.get("customers_per_stage") or {}).items())


@click.command("kpis")
@click.option("--history", "days", default=7, show_default=True, type=click.IntRange(1, 3650),
              help="How many daily snapshots to show.")
@json_option
@pass_state
def kpis_cmd(state: State, days: int, as_json: bool) -> None:
    """Company KPIs now (stored as today's snapshot) and the trend of earlier days."""
    from cx_connector.scoring import kpis

    rt = state.runtime()
    _run(rt, "kpis", lambda r: kpis.snapshot(r, force=True), kpis.LEASE)
    with db.read(rt.engine) as conn:
        snaps = kpis.history(conn, days)
    if as_json:
        emit_json({"latest": snaps[0] if snaps else None, "history": snaps})
        return
    latest = snaps[0]
    click.echo(f"KPIs as of {latest['as_of']} (rolling {counted(latest['window_days'], 'day')}; "
               f"{counted(latest['customers'], 'customer')}):")
    for key, label in KPI_ROWS:
        click.echo(f"  {label}: {shown(latest.get(key))}")
    if len(latest.get("currencies") or []) > 1:
        click.echo(f"  (revenue mixes currencies: {', '.join(latest['currencies'])})")
    click.echo(f"  {stages_line(latest)}")
    if len(snaps) > 1:
        click.echo("\nTrend:")
        table(snaps, ["day", "nps", "csat", "retention_rate", "revenue", "avg_cx_score",
                      "tickets_per_customer", "checkout_conversion"])
