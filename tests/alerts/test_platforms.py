"""Alerts on the customer's platform records go through the connector contract
(:meth:`Connector.post_alert`): HubSpot tasks and Zendesk notes end to end, a record
that does not exist, the platform's rate budget, and ``maybe_sent`` after a crash."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import responses

from cx_connector.alerts import decide, deliver
from cx_connector.connector import Connector, RateBudget, RecordAlert, Throttle
from cx_connector.errors import PlatformUnavailable
from cx_connector.throttle import FakeClock
from tests.alerts.conftest import audits, customer, deliveries, set_scores
from tests.conftest import NOW, TEST_CONNECTORS
from tests.scoring.shop import add, tp

API = "https://api.hubapi.test"


def rules(*platforms, condition="turned_red", **extra):
    return {"red": {"condition": condition, "platforms": list(platforms), "notify_existing": True, **extra}}


def decide_all(rt):
    decide.evaluate(rt.engine, list(rt.config.alerts.rules.values()), now=rt.now())


def send(rt, clock=None):
    return deliver.deliver(rt, clock=clock or FakeClock(NOW), rng=random.Random(3), worker="w")


class Recorder(Connector):
    """A platform that takes alerts and records what the core gave it."""

    name = "hubspot"
    title = "Recorder"
    alert_target = "task"

    def __init__(self, fail: int = 0) -> None:
        super().__init__({})
        self.calls: list[RecordAlert] = []
        self.fail = fail

    def rate_budget(self) -> RateBudget:
        return RateBudget("window", 100, 10.0)

    def writable_record(self, source_id: str) -> bool:
        return source_id.isdigit()

    def post_alert(self, alert: RecordAlert, throttle: Throttle) -> str:
        throttle.wait()
        self.calls.append(alert)
        if self.fail:
            self.fail -= 1
            raise PlatformUnavailable("recorder: timed out; will retry", platform="hubspot")
        return f"T{len(self.calls)}"


def test_the_core_calls_the_contract_with_the_customers_record(make):
    rt = make(rules("hubspot"))
    recorder = rt.connectors["hubspot"] = Recorder()
    ann = customer(rt, "501", source="hubspot")
    set_scores(rt, ann, cx_health="red", cx_score=22)
    decide_all(rt)
    assert send(rt)["delivered"] == 1
    [call] = recorder.calls
    assert call.external_id == "501" and call.at == NOW and call.maybe_sent is False
    assert call.key == f"cx-alert:red:{ann}:{int(NOW.timestamp() * 1000)}"
    assert call.title == f"CX alert: 501@example.com (customer #{ann}): turned red"
    assert (
        call.lines[0] == f"501@example.com (customer #{ann}) turned red: CX score 22, churn risk medium, "
        "retention probability 50%."
    )
    assert call.lines[-1] == f"Reference: {call.key}"
    [d] = deliveries(rt)
    assert (d["status"], d["external_id"], d["result"]) == ("done", "501", "task: T1")
    entry = audits(rt, "alert_delivered")[0]
    assert (entry["source"], entry["external_id"]) == ("hubspot", "501")


def test_after_an_uncertain_failure_the_platform_is_told_to_look_first(make):
    rt = make(rules("hubspot"))
    recorder = rt.connectors["hubspot"] = Recorder(fail=1)
    set_scores(rt, customer(rt, "501", source="hubspot"), cx_health="red")
    decide_all(rt)
    clock = FakeClock(NOW)
    send(rt, clock)
    clock.sleep(3600)
    send(rt, clock)
    assert [c.maybe_sent for c in recorder.calls] == [False, True]
    assert len({c.key for c in recorder.calls}) == 1
    assert deliveries(rt)[0]["status"] == "done"


def test_a_customer_without_a_record_there_is_skipped_and_reported(make):
    rt = make(rules("hubspot", "zendesk"))
    set_scores(rt, customer(rt, "ann"), cx_health="red")
    decide_all(rt)
    stats = send(rt)
    assert stats["skipped"] == 2 and stats["delivered"] == 0
    reasons = {d["action"]: (d["status"], d["last_error"]) for d in deliveries(rt)}
    assert reasons == {
        "platform:hubspot": ("skipped", "the customer has no HubSpot record to put a task on"),
        "platform:zendesk": ("skipped", "the customer has no Zendesk record to put a user note on"),
    }
    assert [a["action"] for a in audits(rt, "alert_deliver")] == ["alert_delivery_skipped"] * 2


@responses.activate
def test_hubspot_task_end_to_end_within_the_rate_budget(make):
    rt = make(rules("hubspot"), connectors={"hubspot": {**TEST_CONNECTORS["hubspot"], "requests_per_10s": 1}})
    responses.add(
        responses.GET,
        f"{API}/crm/v3/objects/contacts/501?properties=hubspot_owner_id",
        json={"id": "501", "properties": {"hubspot_owner_id": "42"}},
    )
    responses.add(
        responses.GET,
        f"{API}/crm/v3/objects/contacts/502?properties=hubspot_owner_id",
        json={"id": "502", "properties": {}},
    )
    responses.add(responses.POST, f"{API}/crm/v3/objects/tasks", status=201, json={"id": "9001"})
    for who in ("501", "502"):
        set_scores(rt, customer(rt, who, source="hubspot"), cx_health="red")
    decide_all(rt)
    clock = FakeClock(NOW)
    assert send(rt, clock)["delivered"] == 2
    assert clock.elapsed >= 30  # four requests at one per 10 s
    posted = [json.loads(c.request.body) for c in responses.calls if c.request.method == "POST"]
    assert [p["associations"][0]["to"]["id"] for p in posted] == ["501", "502"]
    assert (
        posted[0]["properties"]["hubspot_owner_id"] == "42"
        and "hubspot_owner_id" not in posted[1]["properties"]
    )


@responses.activate
def test_hubspot_429_is_waited_out(make):
    hub = {**TEST_CONNECTORS["hubspot"], "alert_task_owner": "none"}
    rt = make(rules("hubspot"), connectors={"hubspot": hub})
    responses.add(
        responses.POST,
        f"{API}/crm/v3/objects/tasks",
        status=429,
        headers={"Retry-After": "5"},
        json={"status": "error", "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"},
    )
    responses.add(responses.POST, f"{API}/crm/v3/objects/tasks", status=201, json={"id": "9001"})
    set_scores(rt, customer(rt, "501", source="hubspot"), cx_health="red")
    decide_all(rt)
    clock = FakeClock(NOW)
    assert send(rt, clock)["delivered"] == 1 and sum(clock.sleeps) >= 5


@responses.activate
def test_zendesk_note_end_to_end(make):
    rt = make(rules("zendesk", condition="ticket_reopened"))
    add(
        rt,
        tp("ticket_reopened", "9001", NOW - timedelta(days=2), source="zendesk", ticket_id="7002"),
        tp("ticket_reopened", "9001", NOW - timedelta(days=1), source="zendesk", ticket_id="7002"),
    )
    user = "https://acme.zendesk.test/api/v2/users/9001.json"
    responses.add(responses.GET, user, json={"user": {"id": 9001, "active": True, "notes": "Key account."}})
    responses.add(responses.PUT, user, json={"user": {"id": 9001}})
    decide_all(rt)
    assert send(rt)["delivered"] == 1
    notes = json.loads(responses.calls[1].request.body)["user"]["notes"]
    assert notes.startswith("Key account.\n\n[2026-06-15 12:00 UTC] CX alert: 9001@example.com (customer #")
    assert "ticket 7002 (zendesk) was reopened 2 times, last on 2026-06-14." in notes
    assert "Reopened: 2 times" in notes and "Reference: cx-alert:red:" in notes
    assert deliveries(rt)[0]["result"] == "user note: note appended"


@responses.activate
def test_a_refused_platform_call_fails_with_the_platforms_reason(make):
    rt = make(rules("zendesk"))
    user = "https://acme.zendesk.test/api/v2/users/9001.json"
    responses.add(responses.GET, user, status=404, json={"error": "RecordNotFound"})
    set_scores(rt, customer(rt, "9001", source="zendesk"), cx_health="red")
    decide_all(rt)
    assert send(rt)["dead"] == 1
    [d] = deliveries(rt)
    assert d["status"] == "dead" and "404" in d["last_error"] and "does not exist" in d["last_error"]
    assert audits(rt, "alert_delivery_failed")[0]["details"]["reason"] == d["last_error"]
