"""Jobs run under a database lease: never twice at once, every run recorded."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import select

from cx_connector import leases, runtime, scheduler
from cx_connector.models import job_runs


def test_lease_is_exclusive_until_released_or_expired(engine):
    assert leases.acquire(engine, "job:x", "a", timedelta(minutes=1))
    assert not leases.acquire(engine, "job:x", "b", timedelta(minutes=1))
    assert leases.acquire(engine, "job:x", "a", timedelta(minutes=1))  # re-entrant for its holder
    leases.release(engine, "job:x", "a")
    assert leases.acquire(engine, "job:x", "b", timedelta(seconds=-1))  # taken, already expired
    assert leases.acquire(engine, "job:x", "c", timedelta(minutes=1))  # a dead holder does not block


def test_second_runner_is_skipped_while_the_first_runs(rt):
    started, release = threading.Event(), threading.Event()

    def slow(_rt):
        started.set()
        release.wait(10)
        return {"n": 1}

    results = {}
    t = threading.Thread(target=lambda: results.setdefault("a", scheduler.run_job(rt, "demo", slow)))
    t.start()
    assert started.wait(10)
    second = scheduler.run_job(rt, "demo", lambda _rt: {"n": 2})
    release.set()
    t.join(10)
    assert second["status"] == "skipped"
    assert results["a"]["status"] == "ok" and results["a"]["details"] == {"n": 1}
    with rt.engine.connect() as conn:
        statuses = sorted(conn.execute(select(job_runs.c.status)).scalars())
    assert statuses == ["ok", "skipped"]


def test_failing_job_is_recorded_not_raised(rt):
    def boom(_rt):
        raise ValueError("kaput")

    run = scheduler.run_job(rt, "boom", boom)
    assert run["status"] == "failed" and "kaput" in run["error"]
    with rt.engine.connect() as conn:
        row = conn.execute(select(job_runs)).mappings().one()
    assert row["status"] == "failed" and row["duration_ms"] is not None


def test_a_database_outage_fails_runs_without_stopping_the_clock_and_they_are_recorded_later(rt):
    """The database goes away before one run and in the middle of the next: neither
    raises (the clock process lives on), both are recorded once the database is back,
    and the lease the second could not release does not keep the job waiting."""
    from sqlalchemy import event

    from cx_connector import db

    state = {"away": False}

    @event.listens_for(rt.engine, "do_connect")
    def maybe_away(dialect, record, cargs, cparams):
        if state["away"]:
            raise dialect.loaded_dbapi.OperationalError("could not connect to server: Connection refused")

    def go_away():
        state["away"] = True
        rt.engine.dispose()

    go_away()
    first = scheduler.run_job(rt, "demo", lambda _rt: {"n": 1})
    assert first["status"] == "failed" and "DatabaseUnavailable" in first["error"]

    def dies_half_way(_rt):
        go_away()
        with db.write(_rt.engine):
            pass

    state["away"] = False
    second = scheduler.run_job(rt, "demo", dies_half_way)
    assert second["status"] == "failed" and "DatabaseUnavailable" in second["error"]

    state["away"] = False  # back
    third = scheduler.run_job(rt, "demo", lambda _rt: {"n": 3})
    assert third["status"] == "ok", third  # not "skipped": the stale lease was released
    with rt.engine.connect() as conn:
        runs = conn.execute(select(job_runs.c.id, job_runs.c.status, job_runs.c.error)
                            .order_by(job_runs.c.id)).all()
    assert sorted(r.status for r in runs) == ["failed", "failed", "ok"]
    assert all("DatabaseUnavailable" in r.error for r in runs if r.status == "failed")


def test_a_killed_clock_holds_up_its_job_for_at_most_the_short_lease(rt):
    """A clock killed mid-job (SIGKILL: no release) leaves its lease behind; the next clock
    runs the job once that lease has expired, a minute later, not five (bench/load.py's
    fault run: one killed clock stopped write-back for five minutes)."""
    from datetime import UTC, datetime

    from sqlalchemy import update

    from cx_connector.models import leases as leases_table

    seen = {}

    def job(_rt):
        with _rt.engine.connect() as conn:
            row = conn.execute(select(leases_table).where(leases_table.c.name == "job:sync")).one()
        seen["ttl"] = row.expires_at - row.acquired_at
        return {}

    assert scheduler.run_job(rt, "sync", job, lease="job:sync")["status"] == "ok"
    assert seen["ttl"] == scheduler.JOB_LEASE_TTL <= timedelta(minutes=1)

    # the dead clock's lease, taken just over a lease's length ago and never renewed
    assert leases.acquire(rt.engine, "job:sync", "host:999999:dead", scheduler.JOB_LEASE_TTL)
    assert scheduler.run_job(rt, "sync", job, lease="job:sync")["status"] == "skipped"
    taken = datetime.now(UTC) - scheduler.JOB_LEASE_TTL - timedelta(seconds=1)
    with rt.engine.begin() as conn:
        conn.execute(update(leases_table).where(leases_table.c.name == "job:sync").values(
            acquired_at=taken, expires_at=taken + scheduler.JOB_LEASE_TTL))
    assert scheduler.run_job(rt, "sync", job, lease="job:sync")["status"] == "ok"


def test_a_stopping_clock_waits_for_its_jobs_only_so_long(monkeypatch, caplog, capfd):
    """A job that does not finish must not keep a stopping clock alive until the process
    manager kills it: past the grace period it says so, prints the stacks, and exits 0."""
    from cx_connector.cli import clock

    release = threading.Event()

    class Stuck:
        def shutdown(self, wait: bool) -> None:
            release.wait(30)  # a running job that does not end

    exits: list[int] = []
    monkeypatch.setattr(clock, "STOP_GRACE", 0.3)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="cx_connector.clock"):
        clock._shut_down(Stuck(), exit=exits.append)
    release.set()
    assert exits == [0] and time.monotonic() - started < 5
    assert "jobs still running" in caplog.text
    assert "most recent call first" in capfd.readouterr().err  # every thread's stack


def test_a_job_finishing_while_the_clock_stops_does_not_hold_up_the_stop(config, monkeypatch):
    """A job whose follower is brought forward (``alerts`` after ``score``) and that
    finishes while the clock shuts down must not hang the stop. The follower used to be
    brought forward in the finishing worker thread, which then waited for the job store
    lock that shutdown(wait=True) held while waiting for that very thread: every stop
    during a scoring run took the whole STOP_GRACE (before it, the clock was killed)."""
    from cx_connector.cli import clock as clock_cli

    rt = runtime.build(config)  # on the real time: the jobs are due now
    started, release = threading.Event(), threading.Event()

    def first(_rt):
        started.set()
        release.wait(10)
        return {}

    hour = lambda config: timedelta(hours=1)  # noqa: E731
    clock = scheduler.Clock(rt, [scheduler.Job("first", first, hour),
                                 scheduler.Job("second", lambda _rt: {}, hour, after=("first",))])
    runner = threading.Thread(target=clock.run)
    runner.start()
    assert started.wait(10)
    clock.stop()
    runner.join(5)
    assert not runner.is_alive()
    exits: list[int] = []
    monkeypatch.setattr(clock_cli, "STOP_GRACE", 5.0)
    threading.Timer(0.3, release.set).start()  # "first" ends once the shutdown waits for it
    t0 = time.monotonic()
    clock_cli._shut_down(clock.sched, exit=exits.append)
    assert exits == [] and time.monotonic() - t0 < 4
    assert not clock.sched.running
    rt.engine.dispose()


def test_a_follower_still_running_runs_again_after_it_not_skipped(config, caplog):
    """At start-up every job is due at once: ``score`` ends while ``alerts`` (its follower)
    still runs its own first run. Brought forward then, APScheduler skipped it with a
    warning on every clock start; now it runs again once its own run has finished."""
    rt = runtime.build(config)
    release, runs = threading.Event(), []

    def follower(_rt):
        runs.append(time.monotonic())
        release.wait(10)
        return {}

    hour = lambda config: timedelta(hours=1)  # noqa: E731
    clock = scheduler.Clock(rt, [scheduler.Job("follower", follower, hour, after=("first",)),
                                 scheduler.Job("first", lambda _rt: {}, hour)])
    runner = threading.Thread(target=clock.run, daemon=True)
    with caplog.at_level(logging.WARNING, logger="apscheduler"):
        runner.start()
        try:
            for _ in range(200):  # "first" has ended while the follower runs
                if "follower" in getattr(clock, "deferred", ()):
                    break
                time.sleep(0.02)
            release.set()
            for _ in range(100):
                if len(runs) == 2:
                    break
                time.sleep(0.02)
        finally:
            release.set()
            clock.stop()
            runner.join(5)
            clock.sched.shutdown(wait=True)
    assert len(runs) == 2
    assert "maximum number of running instances" not in caplog.text
    rt.engine.dispose()


def test_kpis_follow_each_scoring_run():
    """The overview's tiles are the KPI snapshot: it is brought up to date right after a
    full pass, not up to an hour later (the job itself skips when nothing changed)."""
    assert "score" in {job.id: job for job in scheduler.jobs()}["kpis"].after


def test_a_run_left_running_by_a_stopped_process_is_marked_interrupted(rt):
    """A clock that stops past its limit (or is SIGKILLed) leaves its run "running" for
    ever; the next run of that job, holding the lease, marks it interrupted."""
    from cx_connector import db
    def running(conn, job):
        row = dict(job=job, started_at=rt.now(), status="running", details={}, host="gone")
        return conn.execute(job_runs.insert().values(**row).returning(job_runs.c.id)).scalar_one()

    with db.write(rt.engine) as conn:
        left, other = running(conn, "score"), running(conn, "sync")
    scheduler.run_job(rt, "score", lambda _rt: {})
    with rt.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(job_runs))}
    assert rows[left].status == "interrupted" and rows[left].finished_at is not None
    assert "stopped before the run finished" in rows[left].error
    assert rows[other].status == "running"  # another job's run: not this lease's to judge
    assert [r.status for r in rows.values() if r.job == "score" and r.id != left] == ["ok"]
