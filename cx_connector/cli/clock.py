"""``cx-connector scheduler``: the clock process (Procfile ``clock``)."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from typing import Any

import click

from cx_connector import db, logs, scheduler
from cx_connector.cli.base import State, emit_json, pass_state
from cx_connector.errors import DatabaseUnavailable

log = logging.getLogger("cx_connector.clock")

#: seconds a stopping clock waits for its running jobs (see _shut_down)
STOP_GRACE = 10.0


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
    clock = scheduler.Clock(rt)

    def stop(signum: int, _frame: Any) -> None:
        # Only ask the main loop to return: raising here was lost when it landed in
        # APScheduler code that catches BaseException (see scheduler.Clock)
        clock.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("scheduler running", extra={"jobs": [j.id for j in jobs]})
    try:
        clock.run()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if clock.sched.running:
            _shut_down(clock.sched)


def _shut_down(sched: Any, exit: Any = os._exit) -> None:
    """Let the running jobs finish, for at most :data:`STOP_GRACE` seconds.

    A stop must not hang (the process manager would SIGKILL the clock anyway, after 30 s
    on Heroku, 90 s under systemd). Leaving a job unfinished is safe: every job's work is
    transactional and crash-safe, its lease expires (``scheduler.JOB_LEASE_TTL``) and the
    writes it had claimed return to pending. Past the grace period the clock says so,
    prints every thread's stack to stderr (so a job that hangs can be found) and exits.
    """
    done = threading.Thread(target=sched.shutdown, kwargs={"wait": True}, daemon=True,
                            name="cx-clock-shutdown")
    done.start()
    done.join(STOP_GRACE)
    if done.is_alive():
        log.warning("jobs still running %.0f s after the stop: exiting without them (their work "
                    "is redone by the next clock)", STOP_GRACE)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        logging.shutdown()
        exit(0)  # os._exit: the running jobs' threads would keep the interpreter alive
