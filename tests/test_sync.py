"""The core sender: batching, rate limits, retries, splitting, crash safety, dry run, audit.

HubSpot stands in for "a platform" (its own quirks are tested in
tests/connectors/hubspot); the HTTP API is mocked with ``responses``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import timedelta

import pytest
import requests
import responses
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from cx_connector import db, outbox, scheduler, sync
from cx_connector.models import audit_log, identities
from cx_connector.runtime import build
from cx_connector.throttle import Clock, FakeClock
from tests.conftest import NOW, make_config
from tests.seeding import body, rows, run, seed, written

URL = "https://api.hubapi.test/crm/v3/objects/contacts/batch/update"
IDS = [str(900000000000 + i) for i in range(250)]


def ok(request):
    data = json.loads(request.body)
    return 200, {}, json.dumps(
        {"status": "COMPLETE", "results": [{"id": i["id"], "properties": {}} for i in data["inputs"]]})


@pytest.fixture
def hub(rt):
    """Only HubSpot writes back in these tests."""
    rt.connectors = {"hubspot": rt.connectors["hubspot"]}
    return rt


def audit_entries(engine, action="score_write"):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(audit_log).where(audit_log.c.action == action)
                                              .order_by(audit_log.c.id)).mappings()]


@responses.activate
def test_batches_of_100_minimum_requests_exact_bodies_and_audit(hub):
    seed(hub, "hubspot", IDS)
    responses.add_callback(responses.POST, URL, callback=ok)
    result = run(hub)["platforms"]["hubspot"]
    # ceil(250/100) requests, full ones first (requests go out concurrently: any order)
    assert sorted(len(body(c)["inputs"]) for c in responses.calls) == [50, 100, 100]
    assert [len(body(c)["inputs"]) for c in responses.calls][-1] == 50
    sent = {i["id"]: i for c in responses.calls for i in body(c)["inputs"]}
    assert sorted(sent) == sorted(IDS)
    assert sent[IDS[0]] == {"id": IDS[0], "properties": {"cx_score": "87", "cx_health": "green"}}
    assert result["requests"] == 3 and result["landed"] == 250 and result["dead"] == 0
    assert {r["status"] for r in rows(hub.engine)} == {"done"}
    assert written(hub.engine)[("hubspot", IDS[5])] == {"cx_score": 87, "cx_health": "green"}
    entries = audit_entries(hub.engine)
    assert len(entries) == 250 and sorted(e["external_id"] for e in entries) == sorted(IDS)
    first = next(e for e in entries if e["external_id"] == IDS[0])  # answers come in any order
    assert first["details"]["result"] == "ok"
    assert first["details"]["changes"] == {"cx_score": {"old": None, "new": 87},
                                           "cx_health": {"old": None, "new": "green"}}


@responses.activate
def test_nothing_pending_means_no_request_and_unchanged_scores_queue_nothing(hub):
    cids = seed(hub, "hubspot", IDS[:3])
    responses.add_callback(responses.POST, URL, callback=ok)
    run(hub)
    with db.write(hub.engine) as conn:  # same scores again: nothing changed since the write
        assert outbox.enqueue(conn, hub.connectors, cids[IDS[0]], {"cx_score": 87, "cx_health": "green"},
                              now=NOW) == 0
    assert run(hub)["platforms"]["hubspot"]["requests"] == 0
    assert len(responses.calls) == 1


@responses.activate
def test_429_with_retry_after_is_honoured(hub):
    seed(hub, "hubspot", IDS[:10])
    responses.add(responses.POST, URL, status=429, headers={"Retry-After": "7"},
                  json={"status": "error", "errorType": "RATE_LIMIT",
                        "policyName": "TEN_SECONDLY_ROLLING"})
    responses.add_callback(responses.POST, URL, callback=ok)
    clock = FakeClock(NOW)
    result = run(hub, clock)["platforms"]["hubspot"]
    assert len(responses.calls) == 2 and result["rate_limited"] == 1 and result["landed"] == 10
    assert clock.sleeps == [pytest.approx(7.0)]
    assert all(r["attempts"] == 1 for r in rows(hub.engine))  # a 429 is not the write's fault


@responses.activate
def test_429_without_retry_after_backs_off_exponentially_with_jitter(hub):
    seed(hub, "hubspot", IDS[:10])
    for _ in range(3):
        responses.add(responses.POST, URL, status=429, json={"status": "error"})
    responses.add_callback(responses.POST, URL, callback=ok)
    clock = FakeClock(NOW)
    run(hub, clock)
    assert len(responses.calls) == 4
    assert len(clock.sleeps) == 3
    # full jitter below base * 2^(n-1) (base 2 s)
    assert all(0 < s <= 2 * 2 ** i for i, s in enumerate(clock.sleeps))
    assert {r["status"] for r in rows(hub.engine)} == {"done"}


@responses.activate
def test_a_long_retry_after_parks_the_writes_for_the_next_run(hub):
    seed(hub, "hubspot", IDS[:3])
    responses.add(responses.POST, URL, status=429, headers={"Retry-After": "3600"})
    result = run(hub)["platforms"]["hubspot"]
    assert len(responses.calls) == 1 and result["errors"]
    r = rows(hub.engine)
    assert {x["status"] for x in r} == {"pending"} and {x["attempts"] for x in r} == {0}
    assert r[0]["next_attempt_at"] == NOW + timedelta(seconds=3600)


@responses.activate
def test_500_burst_and_timeouts_are_retried_with_backoff_then_land(hub):
    seed(hub, "hubspot", IDS[:5])
    responses.add(responses.POST, URL, status=500)
    responses.add(responses.POST, URL, body=requests.exceptions.ReadTimeout("slow"))
    responses.add(responses.POST, URL, status=503)
    responses.add_callback(responses.POST, URL, callback=ok)
    clock = FakeClock(NOW)
    result = run(hub, clock)["platforms"]["hubspot"]
    assert len(responses.calls) == 4 and result["landed"] == 5
    assert len(clock.sleeps) == 3 and all(s <= 8 for s in clock.sleeps)
    assert {r["attempts"] for r in rows(hub.engine)} == {4}
    results = [e["details"]["result"] for e in audit_entries(hub.engine) if e["external_id"] == IDS[0]]
    assert results == ["retry", "retry", "retry", "ok"]  # every attempt is in the audit log
    assert "timed out" in audit_entries(hub.engine)[5]["details"]["reason"]


@responses.activate
def test_a_write_that_gets_one_attempt_gave_up_after_1_attempt(hub):
    """The reason the outbox lists reads in the singular: 'after 1 attempts' read as careless."""
    hub.config = make_config(str(hub.engine.url), writeback={"max_attempts": 1})
    seed(hub, "hubspot", IDS[:1])
    responses.add(responses.POST, URL, status=502)
    assert run(hub)["platforms"]["hubspot"]["dead"] == 1
    [dead] = sync.list_writes(hub.engine, dead=True)
    assert dead["last_error"].startswith("gave up after 1 attempt: ")


@responses.activate
def test_persistent_failure_goes_dead_with_its_reason_and_retry_requeues_it(hub):
    hub.config = make_config(str(hub.engine.url), writeback={"max_attempts": 3})
    seed(hub, "hubspot", IDS[:2])
    responses.add(responses.POST, URL, status=502)
    result = run(hub)["platforms"]["hubspot"]
    assert len(responses.calls) == 3 and result["dead"] == 2
    dead = sync.list_writes(hub.engine, dead=True)
    assert len(dead) == 2 and "gave up after 3 attempts" in dead[0]["last_error"]
    assert "502" in dead[0]["last_error"]
    assert sync.requeue_dead(hub.engine, now=NOW) == [d["id"] for d in dead]
    responses.replace(responses.POST, URL,
                      json={"status": "COMPLETE", "results": [{"id": i} for i in IDS[:2]]})
    assert run(hub)["platforms"]["hubspot"]["landed"] == 2
    assert {r["status"] for r in rows(hub.engine)} == {"done"}
    assert len(audit_entries(hub.engine, "score_write_requeued")) == 2


def _batch_with(bad: str):
    def callback(request):
        data = json.loads(request.body)
        if any(i["id"] == bad for i in data["inputs"]):
            return 400, {}, json.dumps({"status": "error", "category": "VALIDATION_ERROR",
                                        "message": "Property values were not valid"})
        return ok(request)
    return callback


@responses.activate
def test_validation_error_inside_a_batch_of_100_is_isolated_and_the_99_land(hub):
    seed(hub, "hubspot", IDS[:100])
    bad = IDS[37]
    responses.add_callback(responses.POST, URL, callback=_batch_with(bad))
    result = run(hub)["platforms"]["hubspot"]
    landed = [i["id"] for c in responses.calls if c.response.status_code == 200 for i in body(c)["inputs"]]
    assert sorted(landed) == sorted(set(IDS[:100]) - {bad})
    assert result["landed"] == 99 and result["dead"] == 1
    # binary split: 1 + 2 per level down to the single bad record (log2(100) ~ 7 levels)
    assert len(responses.calls) <= 1 + 2 * 7
    dead = sync.list_writes(hub.engine, dead=True)
    assert [d["external_id"] for d in dead] == [bad] and "refused as invalid" in dead[0]["last_error"]


@responses.activate
def test_207_partial_failure_is_mapped_to_the_failing_records(hub):
    seed(hub, "hubspot", IDS[:4])
    responses.add(responses.POST, URL, status=207, json={
        "status": "COMPLETE", "numErrors": 2,
        "results": [{"id": IDS[0]}, {"id": IDS[1]}],
        "errors": [{"status": "error", "category": "OBJECT_NOT_FOUND",
                    "message": "Could not get some CONTACT objects", "context": {"ids": [IDS[2]]}},
                   {"status": "error", "category": "VALIDATION_ERROR", "message": "bad value",
                    "context": {"ids": [IDS[3]]}}]})
    result = run(hub)["platforms"]["hubspot"]
    by_id = {r["external_id"]: r for r in rows(hub.engine)}
    assert by_id[IDS[0]]["status"] == "done" and by_id[IDS[1]]["status"] == "done"
    assert by_id[IDS[2]]["status"] == "gone" and by_id[IDS[3]]["status"] == "dead"
    assert "bad value" in by_id[IDS[3]]["last_error"]
    assert result["gone"] == 1 and len(responses.calls) == 1  # a gone record is not retried
    with hub.engine.connect() as conn:
        gone = conn.execute(select(identities.c.gone_at).where(identities.c.value == IDS[2])).scalar()
    assert gone is not None
    with db.write(hub.engine) as conn:  # never queued again
        cid = conn.execute(select(identities.c.customer_id).where(identities.c.value == IDS[2])).scalar()
        assert outbox.enqueue(conn, hub.connectors, cid, {"cx_score": 1}, now=NOW) == 0


@responses.activate
def test_merged_contact_repoints_the_identity_and_records_the_surviving_id(hub):
    seed(hub, "hubspot", ["111"])
    responses.add(responses.POST, URL, json={"status": "COMPLETE", "results": [{"id": "222"}]})
    result = run(hub)["platforms"]["hubspot"]
    assert result["merged"] == 1
    with hub.engine.connect() as conn:
        ids = dict(conn.execute(select(identities.c.value, identities.c.gone_at)
                                .where(identities.c.kind == "id")).all())
    assert ids["111"] is not None and ids["222"] is None
    assert written(hub.engine)[("hubspot", "222")]["cx_score"] == 87


@responses.activate
def test_crash_between_claim_and_send_is_retried_after_the_claim_timeout_and_lands_once(hub):
    seed(hub, "hubspot", IDS[:3])
    claimed = sync.claim(hub.engine, "hubspot", "worker-that-dies", limit=100, now=NOW)
    assert len(claimed) == 3  # ... and the process is killed here, before sending
    responses.add_callback(responses.POST, URL, callback=ok)
    assert run(hub, FakeClock(NOW + timedelta(minutes=5)))["platforms"]["hubspot"]["requests"] == 0
    assert {r["status"] for r in rows(hub.engine)} == {"in_flight"}
    result = run(hub, FakeClock(NOW + timedelta(minutes=11)))["platforms"]["hubspot"]
    assert result["landed"] == 3 and len(responses.calls) == 1
    assert sorted(i["id"] for i in body(responses.calls[0])["inputs"]) == sorted(IDS[:3])
    assert {r["status"] for r in rows(hub.engine)} == {"done"}
    assert run(hub, FakeClock(NOW + timedelta(minutes=12)))["platforms"]["hubspot"]["requests"] == 0
    assert len(audit_entries(hub.engine, "score_write_recovered")) == 3


@responses.activate
def test_dry_run_sends_nothing_changes_nothing_and_a_real_run_later_sends_everything(hub):
    seed(hub, "hubspot", IDS[:150])
    plan = run(hub, dry_run=True)
    assert plan["dry_run"] is True and len(responses.calls) == 0
    p = plan["platforms"]["hubspot"]
    assert p["requests"] == 2 and p["planned"][0]["path"] == "/crm/v3/objects/contacts/batch/update"
    assert p["planned"][0]["body"]["inputs"][0] == {"id": IDS[0], "properties": {"cx_score": "87",
                                                                                  "cx_health": "green"}}
    assert {r["status"] for r in rows(hub.engine)} == {"pending"} and written(hub.engine) == {}
    assert len(audit_entries(hub.engine, "score_write_dry_run")) == 150
    run(hub, dry_run=True)  # the same content is not audited twice
    assert len(audit_entries(hub.engine, "score_write_dry_run")) == 150
    responses.add_callback(responses.POST, URL, callback=ok)
    assert run(hub)["platforms"]["hubspot"]["landed"] == 150 and len(responses.calls) == 2


def test_dry_run_setting_applies_to_the_scheduled_job(rt):
    rt.config = make_config(str(rt.engine.url), writeback={"dry_run": True})
    seed(rt, "hubspot", IDS[:2])
    with responses.RequestsMock():  # any real call would fail the test
        details = sync.job(rt)
    assert details["dry_run"] is True and details["platforms"]["hubspot"]["requests"] == 1


@responses.activate
def test_a_score_change_while_the_write_is_in_flight_is_not_lost(hub):
    cids = seed(hub, "hubspot", ["5"])

    def during_send(request):
        if len(responses.calls) == 0:
            with db.write(hub.engine) as conn:  # scoring runs while the request is on the wire
                outbox.enqueue(conn, hub.connectors, cids["5"], {"cx_score": 40, "cx_health": "green"},
                               now=NOW)
        return ok(request)

    responses.add_callback(responses.POST, URL, callback=during_send)
    run(hub)
    assert [body(c)["inputs"][0]["properties"]["cx_score"] for c in responses.calls] == ["87", "40"]
    assert written(hub.engine)[("hubspot", "5")]["cx_score"] == 40
    assert {r["status"] for r in rows(hub.engine)} <= {"done", "superseded"}


@responses.activate
def test_refused_token_keeps_writes_pending_and_reports_it(hub):
    seed(hub, "hubspot", IDS[:3])
    responses.add(responses.POST, URL, status=401, json={"message": "expired"})
    result = run(hub)["platforms"]["hubspot"]
    assert "access token was refused" in result["errors"][0]
    assert {r["status"] for r in rows(hub.engine)} == {"pending"}
    assert {r["attempts"] for r in rows(hub.engine)} == {0}


def test_gone_records_are_never_sent(hub):
    seed(hub, "hubspot", ["77"])
    with db.write(hub.engine) as conn:
        conn.execute(identities.update().where(identities.c.value == "77").values(gone_at=NOW))
    with responses.RequestsMock():
        result = run(hub)["platforms"]["hubspot"]
    assert result["requests"] == 0 and rows(hub.engine)[0]["status"] == "gone"


@responses.activate
def test_requests_are_paced_by_the_rate_budget(database_url):
    rt = build(make_config(database_url, connectors={"hubspot": {
        "client_secret": "s", "access_token": "t",
        "webhook_url": "https://cx.example.com/webhooks/hubspot", "api_base_url": "https://api.hubapi.test",
        "batch_size": 10, "requests_per_10s": 2}}))
    # one sender: a fake clock cannot order concurrent threads (a thread's fake sleep would
    # jump time past a request another thread is about to send); the concurrent case is
    # tested against the real clock in tests/test_throttle.py
    rt.connectors["hubspot"].write_concurrency = 1
    seed(rt, "hubspot", IDS[:50])
    responses.add_callback(responses.POST, URL, callback=ok)
    clock = FakeClock(NOW)
    result = run(rt, clock)["platforms"]["hubspot"]
    assert result["requests"] == 5
    # 2 per rolling 10 s, counted from each answer: requests at 0, 0, 10, 10, 20
    assert clock.elapsed == pytest.approx(20.0)
    rt.engine.dispose()


def test_two_workers_never_claim_the_same_write(hub):
    seed(hub, "hubspot", IDS[:120])
    got: dict[str, list[int]] = {}

    def worker(name):
        got[name] = [c.id for c in sync.claim(hub.engine, "hubspot", name, limit=80, now=NOW)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(got["a"]) & set(got["b"])
    assert len(got["a"]) + len(got["b"]) == 120


def test_requeue_never_puts_an_older_value_back(hub):
    seed(hub, "hubspot", ["9"])
    with db.write(hub.engine) as conn:
        conn.execute(outbox.outbox.update().values(status="dead", last_error="x"))
        conn.execute(db.upsert(conn, outbox.written_values, ["source", "external_id", "field"],
                               ["value", "written_at"]),
                     [{"source": "hubspot", "external_id": "9", "field": "cx_score", "value": 99,
                       "written_at": NOW + timedelta(hours=1)}])
    sync.requeue_dead(hub.engine, now=NOW + timedelta(hours=2))
    assert rows(hub.engine)[0]["fields"] == {"cx_health": "green"}


def test_scheduler_registers_the_sync_job():
    job = {j.id: j for j in scheduler.jobs()}["sync"]
    assert job.func is sync.job and job.lease == "job:sync"
    assert job.every(make_config("sqlite://")) == timedelta(minutes=5)


def test_packer_fills_every_request_even_across_records():
    from connectors.shopify import ShopifyConnector
    conn = ShopifyConnector(ShopifyConnector.settings_schema().load(
        {"shop": "a.myshopify.com", "access_token": "t", "client_secret": "s"}))
    packer = sync.Packer(conn)
    packer.add([sync.Claimed(i, None, "shopify", str(i), {f"cx_{k}": 1 for k in range(7)}, {}, 0)
                for i in range(10)])  # 70 metafields
    full = packer.full()
    assert [sum(i.units for i in b) for b in full] == [25, 25]
    assert [sum(i.units for i in b) for b in packer.flush()] == [20]


@responses.activate
def test_concurrent_senders_send_every_write_exactly_once(hub):
    ids = [str(800000000000 + i) for i in range(950)]
    seed(hub, "hubspot", ids)
    assert hub.connectors["hubspot"].write_concurrency > 1
    rng = random.Random(5)
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most at once

    def slow_ok(request):
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
        time.sleep(rng.uniform(0.0, 0.03))
        with lock:
            in_flight[0] -= 1
        return ok(request)

    responses.add_callback(responses.POST, URL, callback=slow_ok)
    result = run(hub, Clock())["platforms"]["hubspot"]
    sent = [i["id"] for c in responses.calls for i in body(c)["inputs"]]
    assert sorted(sent) == sorted(ids)  # each once
    assert result["requests"] == 10 and result["landed"] == 950 and in_flight[1] > 1
    assert {r["status"] for r in rows(hub.engine)} == {"done"}
    assert len(audit_entries(hub.engine)) == 950


@responses.activate
def test_results_that_cannot_be_recorded_leave_the_writes_claimed_until_recovered(hub):
    """A crash between sending and marking: the request landed but nothing was committed.
    The writes stay in flight, are recovered after the claim timeout and sent again
    (idempotent): nothing lost, nothing marked done without its audit entry."""
    seed(hub, "hubspot", IDS[:3])

    def landed_then_database_trouble(request):
        if len(responses.calls) == 0:
            with db.write(hub.engine) as conn:  # the marker's INSERT will fail
                conn.exec_driver_sql("ALTER TABLE written_values RENAME TO written_values_away")
        return ok(request)

    responses.add_callback(responses.POST, URL, callback=landed_then_database_trouble)
    with pytest.raises(sa_exc.DBAPIError):
        run(hub)
    assert {r["status"] for r in rows(hub.engine)} == {"in_flight"}
    assert audit_entries(hub.engine) == []
    with db.write(hub.engine) as conn:
        conn.exec_driver_sql("ALTER TABLE written_values_away RENAME TO written_values")
    result = run(hub, FakeClock(NOW + timedelta(minutes=11)))["platforms"]["hubspot"]
    assert result["landed"] == 3 and len(responses.calls) == 2
    assert {r["status"] for r in rows(hub.engine)} == {"done"}
    assert len(audit_entries(hub.engine, "score_write_recovered")) == 3


def test_claim_takes_the_oldest_due_first_and_skips_records_with_a_write_in_flight(hub):
    seed(hub, "hubspot", IDS[:4])
    with db.write(hub.engine) as conn:  # a later write for IDS[0] while one is in flight
        conn.execute(outbox.outbox.update().where(outbox.outbox.c.external_id == IDS[0])
                     .values(status="in_flight", claimed_by="other", claimed_at=NOW))
        conn.execute(outbox.outbox.insert().values(
            customer_id=None, source="hubspot", external_id=IDS[0], fields={"cx_score": 1}, previous={},
            status="pending", attempts=0, next_attempt_at=NOW, created_at=NOW, updated_at=NOW))
        conn.execute(outbox.outbox.update().where(outbox.outbox.c.external_id == IDS[3])
                     .values(next_attempt_at=NOW - timedelta(minutes=1)))
        conn.execute(outbox.outbox.update().where(outbox.outbox.c.external_id == IDS[2])
                     .values(next_attempt_at=NOW + timedelta(minutes=1)))
    got = sync.claim(hub.engine, "hubspot", "me", limit=10, now=NOW)
    assert sorted(c.external_id for c in got) == sorted([IDS[1], IDS[3]])
    assert got[0].fields == {"cx_score": 87, "cx_health": "green"}


@responses.activate
def test_a_missing_property_stops_the_run_instead_of_splitting_every_record(hub):
    """HubSpot refuses the whole batch because cx_score does not exist (setup not run):
    no record is at fault, so the batch is not split into 199 requests and no write dies."""
    seed(hub, "hubspot", IDS[:100])
    responses.add(responses.POST, URL, status=400, json={
        "status": "error", "category": "VALIDATION_ERROR",
        "message": 'Property values were not valid: [{"isValid":false,"message":"Property '
                   '\\"cx_score\\" does not exist","error":"PROPERTY_DOESNT_EXIST","name":"cx_score"}]'})
    result = run(hub)["platforms"]["hubspot"]
    assert len(responses.calls) == 1 and result["splits"] == 0 and result["dead"] == 0
    assert "cx-connector setup" in result["errors"][0]
    r = rows(hub.engine)
    assert {x["status"] for x in r} == {"pending"} and {x["attempts"] for x in r} == {0}


#: migration 0006: the open writes by status, attempts and platform
OPEN_WRITES_INDEX = "ix_outbox_status_attempts_source_next_attempt_at"


def test_the_open_write_counts_and_the_retried_writes_are_read_from_their_index(engine):
    """After a full scoring pass the outbox holds a pending write per platform record
    (100,000 in bench/admin_pages.py): the counts of the Operations page and of
    ``cx-connector outbox`` come from the index alone, and the retried writes (pending
    with attempts) are a range of it, never a read of every pending write's row."""
    from tests.conftest import plans_of

    [(_, counts)] = plans_of(engine, lambda: sync.counts(engine))
    [(_, retrying)] = plans_of(engine, lambda: sync.list_writes(engine, status="retrying", limit=50))
    if db.is_sqlite(engine):
        assert f"COVERING INDEX {OPEN_WRITES_INDEX} (status=?)" in counts
        assert f"INDEX {OPEN_WRITES_INDEX} (status=? AND attempts>?)" in retrying
    else:
        assert f"Index Only Scan using {OPEN_WRITES_INDEX}" in counts
        assert f"using {OPEN_WRITES_INDEX}" in retrying and "attempts > 0" in retrying
