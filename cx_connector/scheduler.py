"""The clock process: APScheduler 3 running the periodic jobs.

APScheduler lives only here (``cx-connector scheduler``, the Procfile's ``clock``),
never in gunicorn workers. Every job is a plain function ``job(rt) -> dict`` that
tests and CLI commands call directly; :func:`run_job` wraps it with a database
lease (one run at a time across processes), a ``job_runs`` row (status, duration,
details or error) and logging. Jobs coalesce and never overlap
(``max_instances=1``); each has an explicit id.

The database going away never stops the clock: a run that cannot reach it (at the
start, or half-way) ends ``failed`` with the reason in the log, its ``job_runs``
record is written as soon as the database is back (by the next run of any job in
this process), and the job runs again at its next tick.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from cx_connector import db, enrich, inbox, leases, logs
from cx_connector.config import Config
from cx_connector.errors import DatabaseUnavailable
from cx_connector.http import redact
from cx_connector.metrics import stored
from cx_connector.models import job_runs
from cx_connector.runtime import Runtime

log = logging.getLogger(__name__)

JobFunc = Callable[[Runtime], dict[str, Any]]

#: how often the ``privacy`` job applies the privacy requests webhooks queued: fixed, not
#: configured, so an erasure a platform asked for is carried out within a minute
PRIVACY_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Job:
    id: str
    func: JobFunc
    every: Callable[[Config], timedelta]
    #: the lease that serialises runs; jobs sharing a lease never run together
    lease: str = ""
    #: ids of jobs after each run of which this one also runs at once
    after: tuple[str, ...] = ()


def jobs() -> list[Job]:
    """The periodic jobs, in the order they are first run at start-up."""
    from cx_connector import checkouts, sync
    from cx_connector.alerts import run as alerts

    # scoring is imported here so that numpy and scipy load only where jobs run
    from cx_connector.scoring import kpis
    from cx_connector.scoring import run as scoring

    # in start-up order: queued privacy requests first (nothing erased is scored or sent);
    # enrichment and abandoned checkouts feed scoring; scoring fills the outbox that sync sends
    return [
        Job("privacy", inbox.privacy_job, lambda config: PRIVACY_EVERY),
        Job("enrich", enrich.enrich, lambda config: config.schedule.enrich_every),
        Job("checkouts", checkouts.run, lambda config: config.schedule.score_every),
        Job("score", scoring.job, lambda config: config.schedule.score_every, lease=scoring.LEASE),
        # alerts react to new scores at once, and to new touchpoints (NPS, reopens) on their own
        Job("alerts", alerts.job, lambda config: config.alerts.every, lease=alerts.LEASE, after=("score",)),
        # the overview's tiles come from the snapshot: a new one right after a full pass (the
        # job itself finds out whether a full pass finished since: a cheap check otherwise)
        Job("kpis", kpis.job, lambda config: kpis.CHECK_EVERY, lease=kpis.LEASE, after=("score",)),
        Job("sync", sync.job, lambda config: config.schedule.sync_every, lease="job:sync"),
    ]


#: how long a job's lease outlives its holder. The holder renews it every third of this
#: while the job runs, however long that is, so this bounds only how long a clock that was
#: killed (SIGKILL, OOM, a lost host) keeps the job from running elsewhere: with 5 minutes,
#: one killed clock stopped write-back for 5 minutes (bench/load.py faults). One minute
#: still survives two missed renewals in a row (a database blip).
JOB_LEASE_TTL = timedelta(minutes=1)


def run_job(rt: Runtime, job_id: str, func: JobFunc, *, lease: str | None = None,
            ttl: timedelta = JOB_LEASE_TTL) -> dict[str, Any]:
    """Run one job under its lease and record the run. Returns the run's record.

    ``status`` is ``skipped`` when another process holds the lease. Every log line the
    job writes carries ``job`` (and ``job_run_id``, the ``job_runs`` row).
    """
    with logs.fields(job=job_id):
        return _run_job(rt, job_id, func, lease=lease, ttl=ttl)


def _run_job(rt: Runtime, job_id: str, func: JobFunc, *, lease: str | None,
             ttl: timedelta) -> dict[str, Any]:
    started = rt.now()
    t0 = time.perf_counter()
    record: dict[str, Any] = {"job": job_id, "started_at": started}
    try:
        _flush_unrecorded(rt)
        with leases.Held(rt.engine, lease or f"job:{job_id}", ttl) as ok:
            if not ok:
                record.update(status="skipped", details={"reason": "another process is running it"})
                _record(rt, record, t0)
                log.info("job skipped: lease held elsewhere", extra={"job": job_id})
                return record
            # a run starts once it holds the lease: runs of one lease never overlap in job_runs
            record["started_at"] = started = rt.now()
            with db.write(rt.engine) as conn:
                # a run still "running" with the lease now ours was left by a process that
                # stopped mid-run (the clock's stop limit, SIGKILL): it never will finish
                conn.execute(update(job_runs).where(job_runs.c.job == job_id, job_runs.c.status == "running")
                             .values(status="interrupted", finished_at=started, error=INTERRUPTED))
                record["id"] = conn.execute(job_runs.insert().values(
                    job=job_id, started_at=started, status="running", details={},
                    host=socket.gethostname()).returning(job_runs.c.id)).scalar_one()
            with logs.fields(job_run_id=record["id"]):
                try:
                    details = func(rt) or {}
                    record.update(status="ok", details=details)
                except Exception as exc:
                    if _database_away(exc):
                        log.warning("job failed: database unavailable; it runs again at its next tick",
                                    extra={"job": job_id, "error": f"{type(exc).__name__}: {exc}"})
                    else:
                        log.exception("job failed", extra={"job": job_id})
                    # stored and printed (`scheduler --once`): no configured secret in it, whatever
                    # the exception quoted
                    secrets = sorted(rt.config.secrets(), key=len, reverse=True)
                    record.update(status="failed", error=redact(f"{type(exc).__name__}: {exc}", secrets),
                                  details={"traceback": redact(traceback.format_exc(limit=5), secrets)})
                _record(rt, record, t0)
                if record["status"] == "ok":
                    log.info("job finished", extra={"status": "ok", "duration_ms": record["duration_ms"]})
    except DatabaseUnavailable as exc:  # taking the lease or recording the run
        if "status" not in record:
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          details={"reason": "database unavailable"})
            log.warning("job not run: database unavailable; it runs again at its next tick",
                        extra={"job": job_id, "error": exc.message})
        _record_later(rt, record, t0)
    return record

#: the error of a run whose process stopped before it finished
INTERRUPTED = ("the process running it stopped before the run finished (its work is redone by "
               "the next run)")


def _database_away(exc: BaseException) -> bool:
    return isinstance(exc, DatabaseUnavailable) or db.is_connection_error(exc)


#: runs whose record could not be written (the database was away): written by the next run
_unrecorded: list[dict[str, Any]] = []
_unrecorded_lock = threading.Lock()
#: at most this many are kept (a long outage must not grow the clock's memory)
MAX_UNRECORDED = 200


def _record_later(rt: Runtime, record: dict[str, Any], t0: float) -> None:
    record.setdefault("duration_ms", int((time.perf_counter() - t0) * 1000))
    record.setdefault("finished_at", rt.now())
    with _unrecorded_lock:
        if len(_unrecorded) < MAX_UNRECORDED:
            _unrecorded.append(record)


def _flush_unrecorded(rt: Runtime) -> None:
    with _unrecorded_lock:
        while _unrecorded:
            try:
                _write_record(rt, _unrecorded[0])
            except DatabaseUnavailable:
                raise
            except Exception:  # a record that cannot be written must not block every later run
                log.exception("could not record an earlier job run", extra={"job": _unrecorded[0]["job"]})
            _unrecorded.pop(0)


def _record(rt: Runtime, record: dict[str, Any], t0: float) -> None:
    record["duration_ms"] = int((time.perf_counter() - t0) * 1000)
    record["finished_at"] = rt.now()
    _write_record(rt, record)


def _write_record(rt: Runtime, record: dict[str, Any]) -> None:
    with db.write(rt.engine) as conn:
        values = {"finished_at": record["finished_at"], "status": record["status"],
                  "duration_ms": record["duration_ms"], "details": record.get("details", {}),
                  "error": record.get("error")}
        if "id" in record:
            conn.execute(update(job_runs).where(job_runs.c.id == record["id"]).values(**values))
        else:
            record["id"] = conn.execute(job_runs.insert().values(
                job=record["job"], started_at=record["started_at"], host=socket.gethostname(),
                **values).returning(job_runs.c.id)).scalar_one()
        stored.record_run(conn, record)  # the run's counters commit with its row


class Clock:
    """The clock process's scheduler: APScheduler's ``BackgroundScheduler`` runs the jobs
    in its own threads, and the thread that calls :meth:`run` (the main thread) only
    waits on a queue, for a job to bring forward or for :meth:`stop`.

    Two ways a stopping clock hung until it was killed (SIGKILL), both gone this way:

    * A job's follow-ups (``alerts`` right after ``score``) were brought forward by a
      listener calling ``modify_job``, which takes APScheduler's job store lock, in the
      worker thread that had just finished the job. ``shutdown(wait=True)`` holds that
      same lock while it waits for the worker threads: a job finishing during a stop
      waited for the lock and the stop waited for the job. The listener now only puts
      the follower's id in the queue; the main thread calls ``modify_job``.
    * The SIGTERM handler raised ``SystemExit`` in the main thread, which ran
      APScheduler's ``BlockingScheduler`` loop; APScheduler catches ``BaseException``
      around submitting a job (and around calling listeners), so a SIGTERM arriving then
      was logged as "Error submitting job" and lost. :meth:`stop` raises nothing and
      takes no lock (``SimpleQueue.put`` is reentrant): it is safe in a signal handler,
      wherever the main thread was.
    """

    def __init__(self, rt: Runtime, all_jobs: list[Job] | None = None) -> None:
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_SUBMITTED
        from apscheduler.schedulers.background import BackgroundScheduler

        self.rt = rt
        #: follower job ids to bring forward, then ``None`` (stop)
        self.wake: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        all_jobs = jobs() if all_jobs is None else all_jobs
        self.followers: dict[str, list[str]] = {}
        for job in all_jobs:
            for first in job.after:
                self.followers.setdefault(first, []).append(job.id)
        self.sched = BackgroundScheduler(timezone="UTC", job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": 600})
        for job in all_jobs:
            self.sched.add_job(run_job, "interval", seconds=job.every(rt.config).total_seconds(),
                               id=job.id, name=job.id, args=(rt, job.id, job.func),
                               kwargs={"lease": job.lease or None}, next_run_time=rt.now(),
                               replace_existing=True)
        #: jobs submitted and not finished; followers of a job that were due while they
        #: still ran (brought forward then, APScheduler would skip the run and warn)
        self.running: set[str] = set()
        self.deferred: set[str] = set()
        self.sched.add_listener(self.submitted, EVENT_JOB_SUBMITTED)
        self.sched.add_listener(self.finished, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    def submitted(self, event: Any) -> None:
        self.running.add(event.job_id)

    def finished(self, event: Any) -> None:
        """The listener (in the worker thread that ran the job): queues the job's followers,
        and the job itself if it was wanted again while it ran. It must not touch the
        scheduler (see the class docstring)."""
        self.running.discard(event.job_id)
        if event.job_id in self.deferred:
            self.deferred.discard(event.job_id)
            self.wake.put(event.job_id)
        for job_id in self.followers.get(event.job_id, []):
            self.wake.put(job_id)

    def run(self) -> None:
        """Start the jobs and bring followers forward until :meth:`stop`. The scheduler is
        still running on return: shutting it down is the caller's (``cli.clock``)."""
        self.sched.start()
        self.serve()

    def serve(self) -> None:
        """Bring each queued follower's next run forward to now, until :meth:`stop`."""
        while (job_id := self.wake.get()) is not None:
            if job_id in self.running:  # its own run (at start-up, all are due at once): after it
                self.deferred.add(job_id)
                if job_id in self.running:
                    continue
                self.deferred.discard(job_id)  # it finished meanwhile: bring it forward now
            self.sched.modify_job(job_id, next_run_time=self.rt.now())

    def stop(self) -> None:
        """Make :meth:`run` return. Safe in a signal handler: no lock, no exception."""
        self.wake.put(None)
