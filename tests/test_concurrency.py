"""Several web workers and clock processes on one database work together.

Each "process" here is a thread with its own engine (its own connections, as a
separate process has); tests/test_processes.py runs the same with real gunicorn and
``cx-connector scheduler`` processes. The database is real: SQLite, or PostgreSQL when
``CX_TEST_DATABASE_URL`` is set.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
import responses
from sqlalchemy import event, func, select

from cx_connector import db, outbox, scheduler, sync
from cx_connector.app import create_app
from cx_connector.connector import CustomerRef
from cx_connector.identity import resolve
from cx_connector.models import job_runs, scores, touchpoints, written_values
from cx_connector.models import outbox as outbox_t
from cx_connector.runtime import Runtime, build
from cx_connector.scoring import run as scoring
from cx_connector.throttle import FakeClock
from tests.conftest import NOW, PG_URL, make_config
from tests.scoring import shop
from tests.seeding import rows, written

URL = "https://api.hubapi.test/crm/v3/objects/contacts/batch/update"


@pytest.fixture
def processes(config):
    """``processes(n)``: n runtimes on the same database, each with its own engine."""
    made: list[Runtime] = []

    def make(n: int) -> list[Runtime]:
        for _ in range(n):
            made.append(build(config, clock=lambda: NOW))
        return made[-n:]

    yield make
    for rt in made:
        rt.engine.dispose()


def test_two_clocks_never_run_the_same_job_at_once(processes):
    """Two scheduler loops (think: a deploy overlapping two clock processes) race for the
    same job for a second; the job body itself records when it runs."""
    clocks = processes(2)
    running: list[tuple[int, float, float]] = []
    inside = threading.Lock()
    overlaps: list[str] = []
    stop = time.monotonic() + 1.5

    def job_for(k: int):
        def job(_rt: Runtime) -> dict[str, Any]:
            if not inside.acquire(blocking=False):  # somebody else is inside the job right now
                overlaps.append(f"clock {k} entered while another was running")
                return {}
            try:
                t0 = time.perf_counter()
                time.sleep(random.uniform(0.005, 0.02))
                running.append((k, t0, time.perf_counter()))
            finally:
                inside.release()
            return {"clock": k}
        return job

    def loop(k: int) -> None:
        while time.monotonic() < stop:
            scheduler.run_job(clocks[k], "race", job_for(k))
            time.sleep(random.uniform(0, 0.004))

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not overlaps
    assert {k for k, _, _ in running} == {0, 1}, "both clocks should have had turns"
    with clocks[0].engine.connect() as conn:
        runs = conn.execute(select(job_runs.c.status, job_runs.c.started_at, job_runs.c.finished_at)
                            .where(job_runs.c.job == "race").order_by(job_runs.c.started_at)).all()
    statuses = Counter(r.status for r in runs)
    assert statuses["ok"] == len(running) and statuses["skipped"] > 0
    assert set(statuses) == {"ok", "skipped"}
    done = [r for r in runs if r.status == "ok"]
    for a, b in itertools.pairwise(done):  # as recorded too: each run ends before the next starts
        assert a.finished_at <= b.started_at


def seed(rt: Runtime, ids: list[str], values: dict[str, Any]) -> None:
    with db.write(rt.engine) as conn:
        cids = resolve(conn, "hubspot", [(CustomerRef(i, email=f"{i}@example.com"), NOW) for i in ids],
                       now=NOW)
        outbox.enqueue_many(conn, rt.connectors, [(cids[i], values) for i in ids], now=NOW)


@responses.activate
def test_two_sync_workers_never_send_a_write_twice_and_the_last_value_lands(processes):
    """Two sync runs at once (two clock processes, or the clock and `cx-connector sync`)
    while scoring keeps raising values: no value is sent twice, none out of order, and
    each record ends with the last value scored.

    (A write whose value changes while it is in flight is sent again, with the new
    value: that is one outbox row sent twice, rightly. What must never happen is the
    same value twice, which is what two workers claiming one write would do.)"""
    a, b, scorer = processes(3)
    for rt in (a, b, scorer):
        rt.connectors = {"hubspot": rt.connectors["hubspot"]}
    # more writes than one worker claims before its senders' queue is full (about 1,100
    # for HubSpot: 4 senders, 5 requests ahead), so the second worker always finds some
    ids = [str(700000000000 + i) for i in range(2000)]
    seed(scorer, ids, {"cx_score": 10, "cx_health": "red"})
    sent: dict[str, list[int]] = {}  # the cx_score values each record was sent, in order
    lock = threading.Lock()
    both_claimed = threading.Event()

    def watch_claims() -> None:
        """Opens the platform once both workers hold claimed writes. Without it, under
        load, one worker could claim, send and mark everything before the other's first
        claim (CI saw it: the test then tests nothing)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with scorer.engine.connect() as conn:
                holders = set(conn.execute(select(outbox_t.c.claimed_by).distinct()
                                           .where(outbox_t.c.status == "in_flight")).scalars())
            if {"worker-a", "worker-b"} <= holders:
                break
            time.sleep(0.005)
        both_claimed.set()

    def ok(request):
        data = json.loads(request.body)
        both_claimed.wait(30)
        time.sleep(0.03)  # a platform round trip: the other worker claims meanwhile
        with lock:
            for item in data["inputs"]:
                sent.setdefault(item["id"], []).append(int(item["properties"]["cx_score"]))
        return 200, {}, json.dumps({"status": "COMPLETE",
                                    "results": [{"id": i["id"], "properties": {}} for i in data["inputs"]]})

    responses.add_callback(responses.POST, URL, callback=ok)
    last_value = dict.fromkeys(ids, 10)
    rescoring = threading.Event()

    def rescore() -> None:  # scoring changes values while the writes are in flight
        rng = random.Random(3)
        for step in range(1, 6):
            chosen = rng.sample(ids, 100)
            with db.write(scorer.engine) as conn:
                cids = resolve(conn, "hubspot", [(CustomerRef(i), NOW) for i in chosen], now=NOW)
                outbox.enqueue_many(conn, scorer.connectors, [
                    (cids[i], {"cx_score": 10 + step, "cx_health": "red"}) for i in chosen], now=NOW)
            for i in chosen:
                last_value[i] = 10 + step
            time.sleep(0.01)
        rescoring.set()

    results: dict[str, Any] = {}
    # both runs start in the same instant: under load, a thread started first could
    # otherwise send every write before the other began (nothing would be tested)
    start = threading.Barrier(2)

    def run(n: str, rt: Any) -> None:
        start.wait(10)
        results[n] = sync.sync(rt, worker=f"worker-{n}")

    threads = [threading.Thread(target=run, args=(n, rt)) for n, rt in (("a", a), ("b", b))]
    threads += [threading.Thread(target=rescore), threading.Thread(target=watch_claims)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert rescoring.is_set()
    assert {"a", "b"} <= set(results), "a sync run did not finish"
    assert results["a"]["platforms"]["hubspot"]["landed"] > 0
    assert results["b"]["platforms"]["hubspot"]["landed"] > 0, "the second worker should have sent some"
    # writes queued after both runs had finished their claims go out with the next run
    sync.sync(a, worker="worker-a")

    assert {r["status"] for r in rows(a.engine)} <= {"done", "superseded"}
    twice = {i: values for i, values in sent.items() if values != sorted(set(values))}
    assert not twice, f"sent twice or out of order: {dict(list(twice.items())[:5])}"
    assert {i: values[-1] for i, values in sent.items()} == last_value
    final = written(a.engine)
    assert {i: final[("hubspot", i)]["cx_score"] for i in ids} == last_value


def test_webhooks_are_answered_quickly_while_a_scoring_run_works(database_url):
    """The clock scores 2,000 customers (read, score, store, queue) while a web worker takes
    signed webhooks: every one is answered 200, well inside the platforms' deadline.

    The models' fit is turned off (``min_purchasers`` above the population: the documented
    fallbacks) to keep the test short: it is CPU work, in the clock's own process, that
    does not touch the database; the store phase is what a webhook could wait for."""
    config = make_config(database_url, scoring={"min_purchasers": 1_000_000})
    clock, web = build(config, clock=lambda: NOW), build(config, clock=lambda: NOW)
    try:
        rng = random.Random(5)
        shop.add(clock, *[shop.order(f"c{c}", shop.ago(days=rng.uniform(1, 300)), rng.uniform(5, 200),
                                     f"o{c}", "books", source="generic") for c in range(2000)])
        client = create_app(rt=web, configure_logging=False).test_client()
        connector = web.connectors["generic"]

        report: dict[str, Any] = {}
        scorer = threading.Thread(target=lambda: report.update(scoring.run(clock, full=True)))
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        i = 0
        scorer.start()
        while scorer.is_alive():
            body = json.dumps({"touchpoint_id": f"live:{i}", "occurred_at": "2026-06-01T10:00:00Z",
                               "customer": {"source_id": f"c{i % 50}", "email": f"c{i % 50}@example.com"},
                               "kind": "order_placed", "value": "9.99", "currency": "EUR"}).encode()
            headers = {**connector.sign(body, {}, method="POST", url="", now=NOW),
                       "Content-Type": "application/json"}
            t0 = time.perf_counter()
            statuses[client.post("/webhooks/generic", data=body, headers=headers).status_code] += 1
            latencies.append(time.perf_counter() - t0)
            i += 1
        scorer.join()
        assert report["customers_scored"] == 2000
        assert statuses == {200: i} and i >= 5, statuses
        latencies.sort()
        # the platforms allow 5 s; a webhook waits at most for one scoring write transaction
        assert latencies[-1] < 3.0, latencies[-5:]
        with web.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(scores)).scalar_one() == 2000
            stored = conn.execute(select(func.count()).select_from(touchpoints)
                                  .where(touchpoints.c.touchpoint_id.like("live:%"))).scalar_one()
        assert stored == i
    finally:
        clock.engine.dispose()
        web.engine.dispose()


@pytest.mark.skipif(not PG_URL, reason="SQLite runs one writer at a time: this interleaving cannot happen")
@pytest.mark.parametrize("many", [False, True], ids=["enqueue", "enqueue_many"])
@responses.activate
def test_a_value_scored_while_its_pending_write_is_sent_is_not_lost(processes, monkeypatch, many):
    """Scoring reads a record's pending write, and before it stores the new value into
    it, a sync worker claims, sends and finishes that write. The new value must still
    reach the platform (it must not land in a write already marked done)."""
    scorer, worker = processes(2)
    for rt in (scorer, worker):
        rt.connectors = {"hubspot": rt.connectors["hubspot"]}
    record = "700000000042"
    seed(scorer, [record], {"cx_score": 10, "cx_health": "red"})
    sent: list[int] = []

    def ok(request):
        data = json.loads(request.body)
        sent.extend(int(i["properties"]["cx_score"]) for i in data["inputs"])
        return 200, {}, json.dumps({"status": "COMPLETE",
                                    "results": [{"id": i["id"], "properties": {}} for i in data["inputs"]]})

    responses.add_callback(responses.POST, URL, callback=ok)
    interleaved = threading.Event()

    def sync_meanwhile() -> None:  # a whole sync run, from another process, right now
        if not interleaved.is_set():
            interleaved.set()
            t = threading.Thread(target=sync.sync, args=(worker,), kwargs={"worker": "other"})
            t.start()
            t.join(15)
            assert not t.is_alive()

    if many:
        raw_many = outbox._raw_many

        def hooked(conn, sql, params):
            if sql.startswith("UPDATE outbox"):
                sync_meanwhile()
            return raw_many(conn, sql, params)

        monkeypatch.setattr(outbox, "_raw_many", hooked)
    else:
        @event.listens_for(scorer.engine, "before_cursor_execute")
        def hook(conn, cursor, statement, *args):
            if statement.startswith("UPDATE outbox"):
                sync_meanwhile()

    with db.write(scorer.engine) as conn:
        cid = resolve(conn, "hubspot", [(CustomerRef(record), NOW)], now=NOW)[record]
        if many:
            outbox.enqueue_many(conn, scorer.connectors, [(cid, {"cx_score": 11, "cx_health": "red"})],
                                now=NOW)
        else:
            outbox.enqueue(conn, scorer.connectors, cid, {"cx_score": 11, "cx_health": "red"}, now=NOW)
    assert interleaved.is_set()
    sync.sync(worker, worker="other")
    assert sent and sent[-1] == 11, sent
    assert written(worker.engine)[("hubspot", record)]["cx_score"] == 11


def test_a_worker_leaves_writes_another_worker_has_in_flight_to_it(processes):
    """A record's newer write is due while another worker still has its older one in
    flight: it must not go out before the older one has landed, and the second worker
    neither spins on it until its run time is up nor sends it: it looks a few times,
    then leaves it to the next run."""
    a, b = processes(2)
    for rt in (a, b):
        rt.connectors = {"hubspot": rt.connectors["hubspot"]}
    record = "700000000077"
    seed(a, [record], {"cx_score": 10, "cx_health": "red"})
    assert len(sync.claim(a.engine, "hubspot", "worker-a", limit=10, now=NOW)) == 1  # a is sending it
    with db.write(a.engine) as conn:
        cid = resolve(conn, "hubspot", [(CustomerRef(record), NOW)], now=NOW)[record]
        outbox.enqueue(conn, a.connectors, cid, {"cx_score": 11, "cx_health": "red"}, now=NOW)
    clock = FakeClock(NOW)
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(sync.sync(b, clock=clock, worker="worker-b")))
    t.start()
    t.join(20)
    assert not t.is_alive(), "the worker kept waiting for a write that is not its to send"
    assert result["platforms"]["hubspot"]["requests"] == 0
    assert clock.sleeps == [sync.BUSY_POLL] * round(sync.BUSY_GIVE_UP / sync.BUSY_POLL)
    assert sorted(r["status"] for r in rows(b.engine)) == ["in_flight", "pending"]


@pytest.mark.parametrize("many", [False, True], ids=["enqueue", "enqueue_many"])
def test_a_value_already_in_flight_is_not_queued_again(processes, many):
    """Scoring runs again while a sync worker is sending the record's write, and finds the
    same values: nothing is queued (the platform would get the same write twice). A value
    that differs is queued as usual."""
    (rt,) = processes(1)
    rt.connectors = {"hubspot": rt.connectors["hubspot"]}
    record = "700000000088"
    first = {"cx_score": 10, "cx_health": "red"}
    seed(rt, [record], first)
    assert len(sync.claim(rt.engine, "hubspot", "worker-a", limit=10, now=NOW)) == 1  # being sent

    def rescore(values: dict[str, Any]) -> int:
        with db.write(rt.engine) as conn:
            cid = resolve(conn, "hubspot", [(CustomerRef(record), NOW)], now=NOW)[record]
            if many:
                return outbox.enqueue_many(conn, rt.connectors, [(cid, values)], now=NOW)
            return outbox.enqueue(conn, rt.connectors, cid, values, now=NOW)

    assert rescore(first) == 0
    assert [r["status"] for r in rows(rt.engine)] == ["in_flight"]
    assert rescore({"cx_score": 11, "cx_health": "red"}) == 1
    queued = rows(rt.engine)[-1]
    assert queued["status"] == "pending" and queued["fields"] == {"cx_score": 11}


@pytest.mark.parametrize("many", [False, True], ids=["enqueue", "enqueue_many"])
def test_a_value_going_back_while_another_is_in_flight_is_still_written(processes, many):
    """The record holds 10; 11 is being sent; 12 is pending; scoring now says 10 again.
    10 must be written after 11 lands (the record's current value is not the one it
    will hold)."""
    (rt,) = processes(1)
    rt.connectors = {"hubspot": rt.connectors["hubspot"]}
    record = "700000000099"
    seed(rt, [record], {"cx_score": 10, "cx_health": "red"})
    with db.write(rt.engine) as conn:  # 10 has landed
        conn.execute(outbox_t.update().values(status="done"))
        conn.execute(written_values.insert(), [
            {"source": "hubspot", "external_id": record, "field": f, "value": v, "written_at": NOW}
            for f, v in {"cx_score": 10, "cx_health": "red"}.items()])

    def rescore(score: int) -> None:
        with db.write(rt.engine) as conn:
            cid = resolve(conn, "hubspot", [(CustomerRef(record), NOW)], now=NOW)[record]
            values = {"cx_score": score, "cx_health": "red"}
            if many:
                outbox.enqueue_many(conn, rt.connectors, [(cid, values)], now=NOW)
            else:
                outbox.enqueue(conn, rt.connectors, cid, values, now=NOW)

    rescore(11)
    assert len(sync.claim(rt.engine, "hubspot", "worker-a", limit=10, now=NOW)) == 1  # 11 being sent
    rescore(12)
    rescore(10)
    pending = [r for r in rows(rt.engine) if r["status"] == "pending"]
    assert len(pending) == 1 and pending[0]["fields"] == {"cx_score": 10}
