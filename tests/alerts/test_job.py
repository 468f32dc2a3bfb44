"""The ``alerts`` job in the clock process: its own interval, right after every scoring
run, under its lease, recorded in job_runs; end to end from touchpoints to a POST."""

from __future__ import annotations

import json
from datetime import timedelta

import responses
from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent

from cx_connector import leases, scheduler
from cx_connector.alerts import run
from tests.alerts.conftest import HOOK_URL, audits, deliveries, later
from tests.conftest import NOW
from tests.scoring.shop import add, ago, cid, order, tp


def test_the_job_is_scheduled_on_its_interval_and_after_scoring(make):
    rt = make({"red": {"condition": "turned_red", "webhooks": ["ops"]}}, every="90s")
    jobs = {j.id: j for j in scheduler.jobs()}
    job = jobs["alerts"]
    assert job.func is run.job and job.lease == run.LEASE == "job:alerts" and job.after == ("score",)
    assert job.every(rt.config) == timedelta(seconds=90)
    assert [j.id for j in scheduler.jobs()].index("alerts") == [j.id for j in scheduler.jobs()].index(
        "score"
    ) + 1

    clock = scheduler.Clock(rt)
    sched = clock.sched
    assert sched.get_job("alerts").trigger.interval == timedelta(seconds=90)
    soon = later(rt, hours=1)
    clock.finished(JobExecutionEvent(EVENT_JOB_EXECUTED, "kpis", "default", NOW))
    clock.finished(JobExecutionEvent(EVENT_JOB_EXECUTED, "score", "default", NOW))
    clock.stop()
    clock.serve()  # the clock's main thread: brings the followers forward, then stops
    assert sched.get_job("alerts").next_run_time == soon  # after score (not after kpis)


def test_a_run_holds_the_lease(make):
    rt = make({"red": {"condition": "turned_red", "webhooks": ["ops"]}})
    assert leases.acquire(rt.engine, run.LEASE, "the-scheduler", timedelta(minutes=5))
    assert scheduler.run_job(rt, "alerts", run.job, lease=run.LEASE)["status"] == "skipped"
    leases.release(rt.engine, run.LEASE, "the-scheduler")
    record = scheduler.run_job(rt, "alerts", run.job, lease=run.LEASE)
    assert record["status"] == "ok"
    assert record["details"]["rules"][0]["rule"] == "red" and record["details"]["deliveries"]["claimed"] == 0


@responses.activate
def test_from_touchpoints_through_scoring_to_a_signed_post(make):
    """A buyer who has not come back in ten months is red after scoring, and the alerts
    job, run right after it as the clock does, posts the alert."""
    rt = make(
        {
            "red": {"condition": "turned_red", "webhooks": ["ops"]},
            "nps": {"condition": "detractor_nps", "webhooks": ["ops"]},
        }
    )
    add(rt, tp("contact_created", "bob", ago(400)))
    jobs = {j.id: j for j in scheduler.jobs()}
    for job_id in ("score", "alerts"):  # the first evaluation: the baseline (bob is not red)
        assert scheduler.run_job(rt, job_id, jobs[job_id].func, lease=jobs[job_id].lease)["status"] == "ok"
    responses.add(responses.POST, HOOK_URL, status=200)
    later(rt, minutes=15)
    add(rt, order("ann", ago(300), 80, "o1"), tp("nps_response", "ann", ago(0), rating=(2, 10)), now=rt.now())
    for job_id in ("score", "alerts"):
        record = scheduler.run_job(rt, job_id, jobs[job_id].func, lease=jobs[job_id].lease)
        assert record["status"] == "ok", record
    ann = cid(rt, "ann")
    sent = sorted(json.loads(c.request.body)["condition"] for c in responses.calls)
    assert sent == ["detractor_nps", "turned_red"]
    assert {d["customer_id"] for d in deliveries(rt)} == {ann}
    assert [a["action"] for a in audits(rt, "alert_fired")] == ["alert_fired", "alert_fired"]
