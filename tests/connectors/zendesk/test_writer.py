"""Zendesk write-back: update_many bodies, following the job status, per-user results."""

from __future__ import annotations

import json

import pytest
import responses

from connectors.zendesk import ZendeskConnector
from cx_connector.connector import RecordWrite
from cx_connector.throttle import FakeClock, Limiter
from tests.conftest import NOW, TEST_CONNECTORS
from tests.seeding import rows, run, seed, written

BASE = "https://acme.zendesk.test"
PUT = f"{BASE}/api/v2/users/update_many.json"
JOB = f"{BASE}/api/v2/job_statuses/J1.json"


@pytest.fixture
def zendesk():
    return ZendeskConnector(ZendeskConnector.settings_schema().load(TEST_CONNECTORS["zendesk"]))


def job(status, results=None):
    return {"job_status": {"id": "J1", "url": JOB, "status": status, "results": results}}


@responses.activate
def test_exact_body_then_the_job_is_followed_until_completed(zendesk):
    clock = FakeClock(NOW)
    responses.add(responses.PUT, PUT, json=job("queued"))
    responses.add(responses.GET, JOB, json=job("working"))
    responses.add(responses.GET, JOB, json=job("completed", [
        {"id": 8447388090494, "status": "Updated"},
        {"id": 2, "status": "Failed", "error": "PermissionDenied", "details": "suspended"},
        {"id": 3, "status": "Failed", "error": "UserNotFound", "details": "no such user"}]))
    out = zendesk.write_batch([
        RecordWrite("8447388090494", {"cx_score": 87, "cx_health": "red",
                                      "cx_scored_at": "2026-06-15T12:00:00Z",
                                      "cx_clv_90d": 12.5, "cx_next_best_product": None}),
        RecordWrite("2", {"cx_score": 1}), RecordWrite("3", {"cx_score": 1}),
    ], Limiter(zendesk.rate_budget(), clock))
    assert json.loads(responses.calls[0].request.body)["users"][0] == {
        "id": 8447388090494, "user_fields": {"cx_score": 87, "cx_health": "cx_health_red",
                                             "cx_scored_at": "2026-06-15", "cx_clv_90d": 12.5,
                                             "cx_next_best_product": None}}
    assert responses.calls[0].request.headers["Authorization"].startswith("Basic ")
    assert {k: v.status for k, v in out.items()} == {"8447388090494": "ok", "2": "failed", "3": "gone"}
    assert "suspended" in out["2"].reason
    assert clock.sleeps == [1.0, 2.0]  # polls spaced out: each one costs a request


@responses.activate
def test_failed_job_retries_every_user(zendesk):
    responses.add(responses.PUT, PUT, json=job("queued"))
    responses.add(responses.GET, JOB,
                  json={"job_status": {"id": "J1", "status": "failed", "message": "boom"}})
    out = zendesk.write_batch([RecordWrite("1", {"cx_score": 1})],
                              Limiter(zendesk.rate_budget(), FakeClock(NOW)))
    assert out["1"].status == "retry" and "boom" in out["1"].reason


@responses.activate
def test_sync_to_zendesk_counts_job_polls_as_requests(rt):
    rt.connectors = {"zendesk": rt.connectors["zendesk"]}
    ids = [str(i) for i in range(1, 151)]
    seed(rt, "zendesk", ids)

    jobs = iter(["J1", "J2"])

    def put(request):
        jid = next(jobs)
        users = json.loads(request.body)["users"]
        responses.add(responses.GET, f"{BASE}/api/v2/job_statuses/{jid}.json", json={"job_status": {
            "id": jid, "status": "completed",
            "results": [{"id": u["id"], "status": "Updated"} for u in users]}})
        return 200, {}, json.dumps({"job_status": {"id": jid, "status": "queued"}})

    responses.add_callback(responses.PUT, PUT, callback=put)
    result = run(rt)["platforms"]["zendesk"]
    puts = [c for c in responses.calls if c.request.method == "PUT"]
    assert [len(json.loads(c.request.body)["users"]) for c in puts] == [100, 50]
    assert result["requests"] == 4 and result["landed"] == 150  # 2 updates + 2 status polls
    assert {r["status"] for r in rows(rt.engine)} == {"done"}
    assert written(rt.engine)[("zendesk", "7")]["cx_health"] == "green"


def test_budget_is_per_minute(zendesk):
    b = zendesk.rate_budget()
    assert (b.kind, b.limit, b.per_seconds) == ("window", 200, 60.0)


@responses.activate
def test_a_refused_or_failed_poll_asks_the_job_again_never_the_update(zendesk):
    clock = FakeClock(NOW)
    responses.add(responses.PUT, PUT, json=job("queued"))
    responses.add(responses.GET, JOB, status=429, headers={"Retry-After": "7"}, body="Too Many Requests")
    responses.add(responses.GET, JOB, status=503)
    responses.add(responses.GET, JOB,
                  json=job("completed", [{"id": 1, "status": "Updated", "success": True}]))
    out = zendesk.write_batch([RecordWrite("1", {"cx_score": 1})], Limiter(zendesk.rate_budget(), clock))
    assert out["1"].status == "ok"
    assert [c.request.method for c in responses.calls] == ["PUT", "GET", "GET", "GET"]
    assert 7.0 in [pytest.approx(s) for s in clock.sleeps]  # Retry-After honoured


@responses.activate
def test_results_are_matched_by_index_when_a_failed_user_has_no_id(zendesk):
    responses.add(responses.PUT, PUT, json=job("queued"))
    responses.add(responses.GET, JOB, json=job("completed", [
        {"id": 11, "action": "update", "success": True, "status": "Updated", "errors": ""},
        {"index": 1, "action": "update", "success": False, "status": "Failed",
         "errors": "InvalidValue", "details": "cx_score: is not a number"}]))
    out = zendesk.write_batch([RecordWrite("11", {"cx_score": 1}), RecordWrite("12", {"cx_score": 2})],
                              Limiter(zendesk.rate_budget(), FakeClock(NOW)))
    assert out["11"].status == "ok"
    assert out["12"].status == "failed" and "InvalidValue" in out["12"].reason
    assert "is not a number" in out["12"].reason
