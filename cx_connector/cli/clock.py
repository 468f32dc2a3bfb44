"""``cx-connector scheduler``: the clock process (Procfile ``clock``)."""

from __future__ import annotations

import contextlib
import logging
import signal
from typing import Any

import click

from cx_connector import db, logs, scheduler
from cx_connector.cli.base import State, emit_json, pass_state
from cx_connector.errors import DatabaseUnavailable

log = logging.getLogger("cx_connector.clock")


@click.command("scheduler")
@click.option("--once", is_flag=True, help="Run every job once, print the runs and exit.")
@click.option("--job", "only", default=None, help="With --once: run only this job id.")
@pass_state
def scheduler_cmd(state: State, once: bool, only: str | None) -> None:
    """Run the periodic jobs (scoring, write-back, enrichment) until stopped.

    Start exactly one per deployment; a second one is harmless (database leases keep
    each job to one run at a time) but idle.
    """
    rt = state.runtime(migrated=False)
    config = state.config()
    logs.configure(config.logging.level, config.logging.format, config.secrets())
    # every run logs its own "job finished" / "job failed" line; APScheduler's INFO lines
    # ("Running job...", "executed successfully") would only repeat them
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        db.check_migrated(rt.engine)  # a schema mismatch stops here (exit 2)
    except DatabaseUnavailable as exc:
        # a database that is away comes back: the jobs fail and run again at their next tick
        logging.getLogger("cx_connector.scheduler").warning(
            "starting without a database: %s", exc.message)
    jobs = scheduler.jobs()
    if once:
        if only and only not in {j.id for j in jobs}:
            raise click.BadParameter(f"no job {only!r} (jobs: {', '.join(j.id for j in jobs)})",
                                     param_hint="--job")
        runs = [scheduler.run_job(rt, j.id, j.func, lease=j.lease or None)
                for j in jobs if only in (None, j.id)]
        emit_json(runs)
        if any(r["status"] == "failed" for r in runs):
            raise SystemExit(1)
        return
    sched = scheduler.build(rt)

    def stop(signum: int, _frame: Any) -> None:
        # Only unwind here. Shutting the scheduler down inside the handler deadlocked now
        # and then: the handler interrupts the main loop, possibly while it holds one of
        # APScheduler's locks, and waits for the running jobs, whose completion needs that
        # lock (the clock then had to be killed). After unwinding, no lock is held.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    log.info("scheduler running", extra={"jobs": [j.id for j in jobs]})
    try:
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            sched.start()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        if sched.running:
            sched.shutdown(wait=True)  # the running jobs finish (their leases are released)
