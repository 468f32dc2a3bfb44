"""Jobs run under a database lease: never twice at once, every run recorded."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select

from cx_connector import leases, scheduler
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
