"""Sending alerts: exact webhook requests and signatures, Slack messages, retries with
backoff, failures reported, rate limits, crash recovery; URLs never leak."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
from datetime import timedelta

import pytest
import requests
import responses
from sqlalchemy import update

from cx_connector import db
from cx_connector.alerts import decide, deliver, status
from cx_connector.models import alert_deliveries
from cx_connector.throttle import FakeClock
from tests.alerts.conftest import HOOK_URL, SECRET, SLACK_URL, audits, customer, deliveries, later, set_scores
from tests.conftest import NOW

RED_OPS = {"red": {"condition": "turned_red", "webhooks": ["ops"], "notify_existing": True}}


def fire(rt, **scores):
    """ann (HubSpot contact 501) turns red and the alert is decided."""
    ann = customer(rt, "501", source="hubspot")
    set_scores(
        rt,
        ann,
        **{
            "cx_health": "red",
            "cx_score": 31,
            "cx_churn_risk": "high",
            "cx_retention_probability": 12,
            "cx_clv_90d": 250.5,
            **scores,
        },
    )
    decide.evaluate(rt.engine, list(rt.config.alerts.rules.values()), now=rt.now())
    return ann


def send(rt, clock=None, worker="w1"):
    return deliver.deliver(rt, clock=clock or FakeClock(NOW), rng=random.Random(7), worker=worker)


def verify(secret: str, body: bytes, headers) -> bool:
    """What a receiver does (README, "Alerts"), written from the documentation."""
    timestamp = headers["X-CX-Timestamp"]
    expected = (
        "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )
    return hmac.compare_digest(expected, headers["X-CX-Signature"])


@responses.activate
def test_json_webhook_body_headers_and_signature(make):
    rt = make(RED_OPS)
    responses.add(responses.POST, HOOK_URL, status=200)
    ann = fire(rt)
    stats = send(rt)
    assert stats["delivered"] == 1 and stats["dead"] == 0
    [call] = responses.calls
    req = call.request
    key = f"cx-alert:red:{ann}:{int(NOW.timestamp() * 1000)}"
    assert json.loads(req.body) == {
        "type": "alert.fired",
        "id": f"{key}:fired",
        "alert_key": key,
        "rule": "red",
        "condition": "turned_red",
        "fired_at": "2026-06-15T12:00:00Z",
        "cleared_at": None,
        "title": f"CX alert: 501@example.com (customer #{ann}): turned red",
        "summary": f"501@example.com (customer #{ann}) turned red: CX score 31, churn risk high, "
        "retention probability 12%.",
        "details": {
            "cx_health": "red",
            "cx_score": 31,
            "cx_churn_risk": "high",
            "cx_retention_probability": 12,
            "cx_clv_90d": 250.5,
            "scored_at": "2026-06-15T12:00:00Z",
        },
        "customer": {
            "id": ann,
            "name": None,
            "email": "501@example.com",
            "records": [{"source": "hubspot", "id": "501", "url": None}],
        },
        "sent_at": "2026-06-15T12:00:00Z",
        "attempt": 1,
    }
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-CX-Alert-Id"] == f"{key}:fired" and req.headers["X-CX-Event"] == "alert.fired"
    assert req.headers["X-CX-Timestamp"] == str(int(NOW.timestamp()))
    assert verify(SECRET, req.body, req.headers)
    assert not verify("another-secret-0123456789", req.body, req.headers)
    assert not verify(SECRET, req.body.replace(b"turned red", b"turned blue"), req.headers)
    [d] = deliveries(rt)
    assert (d["status"], d["attempts"], d["result"], d["done_at"]) == ("done", 1, "HTTP 200", NOW)
    [entry] = audits(rt, "alert_deliver")
    assert entry["action"] == "alert_delivered" and entry["customer_id"] == ann
    assert entry["details"]["action"] == "webhook:ops" and entry["details"]["result"] == "HTTP 200"
    assert HOOK_URL not in json.dumps(audits(rt), default=str)


@responses.activate
def test_personal_data_can_be_left_out(make):
    rt = make(RED_OPS, webhooks={"ops": {"url": HOOK_URL, "secret": SECRET, "personal_data": False}})
    responses.add(responses.POST, HOOK_URL, status=204)
    ann = fire(rt)
    send(rt)
    body = json.loads(responses.calls[0].request.body)
    assert body["customer"] == {"id": ann, "records": [{"source": "hubspot", "id": "501", "url": None}]}
    assert "501@example.com" not in responses.calls[0].request.body.decode()
    assert body["summary"].startswith(f"customer #{ann} turned red")


@responses.activate
def test_slack_format(make):
    rt = make(
        {"red": {"condition": "turned_red", "webhooks": ["slack"], "notify_existing": True}},
        connectors={
            "hubspot": {
                "client_secret": "hubspot-test-secret",
                "access_token": "hubspot-test-token",
                "webhook_url": "https://cx.example.com/webhooks/hubspot",
                "api_base_url": "https://api.hubapi.test",
                "portal_id": "4242",
            }
        },
    )
    responses.add(responses.POST, SLACK_URL, body="ok")
    ann = fire(rt)
    send(rt)
    req = responses.calls[0].request
    who = f"501@example.com (customer #{ann})"
    assert json.loads(req.body) == {
        "text": f"CX alert: {who}: turned red",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"CX alert: {who}: turned red"}},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"{who} turned red: CX score 31, churn risk high, retention probability 12%.",
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*CX score*\n31"},
                    {"type": "mrkdwn", "text": "*Health*\nred"},
                    {"type": "mrkdwn", "text": "*Churn risk*\nhigh"},
                    {"type": "mrkdwn", "text": "*Retention probability*\n12%"},
                    {"type": "mrkdwn", "text": "*Expected value (90 days)*\n250.50"},
                ],
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": (
                            "rule `red` · fired 2026-06-15 12:00 UTC · "
                            "<https://app.hubspot.com/contacts/4242/record/0-1/501|HubSpot record>"
                        ),
                    }
                ],
            },
        ],
    }
    assert "X-CX-Signature" not in req.headers  # no secret configured: Slack's URL is its secret


@responses.activate
def test_server_errors_are_retried_with_backoff_then_reported_failed(make, caplog):
    rt = make(RED_OPS, max_attempts=3)
    responses.add(responses.POST, HOOK_URL, status=503, body="upstream down")
    fire(rt)
    clock = FakeClock(NOW)
    caplog.set_level(logging.INFO)
    stats = send(rt, clock)
    assert stats["retried"] == 1 and len(responses.calls) == 1  # once a run
    [d] = deliveries(rt)
    assert d["status"] == "pending" and d["attempts"] == 1 and d["uncertain"] is True
    assert d["last_error"] == "webhook ops: HTTP 503: receiver error; will retry"
    first_wait = d["next_attempt_at"] - NOW
    assert timedelta(0) <= first_wait <= timedelta(seconds=30)  # backoff_base, full jitter
    assert send(rt, clock)["claimed"] == 0  # not due yet
    clock.sleep(first_wait.total_seconds())
    send(rt, clock)
    [d] = deliveries(rt)
    assert d["attempts"] == 2 and d["next_attempt_at"] - clock.now() <= timedelta(seconds=60)
    clock.sleep(3600)
    stats = send(rt, clock)
    assert stats["dead"] == 1
    [d] = deliveries(rt)
    assert d["status"] == "dead" and d["attempts"] == 3
    assert d["last_error"] == "gave up after 3 attempts: webhook ops: HTTP 503: receiver error; will retry"
    assert len(responses.calls) == 3
    assert [a["action"] for a in audits(rt, "alert_deliver")] == [
        "alert_delivery_retry",
        "alert_delivery_retry",
        "alert_delivery_failed",
    ]
    failed = audits(rt, "alert_delivery_failed")[0]["details"]
    assert failed["reason"] == d["last_error"] and failed["attempt"] == 3
    # visible to the admin
    [listed] = status.list_deliveries(rt.engine, statuses=["dead"])
    assert listed["id"] == d["id"] and listed["last_error"] == d["last_error"]
    assert status.summary(rt.engine)["deliveries"] == {"dead": 1}
    everything = json.dumps([deliveries(rt), audits(rt)], default=str) + caplog.text
    assert HOOK_URL not in everything and "/cx/alerts-7f3a9c" not in everything


@responses.activate
@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (404, "webhook ops: HTTP 404: the URL does not exist (any more): check alerts.webhooks.ops.url "
              "(no_service)"),
        (400, "webhook ops: HTTP 400: refused: no_service"),
        (410, "webhook ops: HTTP 410: the URL does not exist (any more): check alerts.webhooks.ops.url "
              "(no_service)"),
    ],
)
def test_refusals_fail_at_once(make, code, reason):
    rt = make(RED_OPS)
    responses.add(responses.POST, HOOK_URL, status=code, body="no_service")
    fire(rt)
    assert send(rt)["dead"] == 1
    [d] = deliveries(rt)
    assert (d["status"], d["attempts"], d["last_error"]) == ("dead", 1, reason)


@responses.activate
def test_a_redirect_is_not_followed(make):
    rt = make(RED_OPS)
    responses.add(responses.POST, HOOK_URL, status=308, headers={"Location": "https://elsewhere.test/x"})
    fire(rt)
    send(rt)
    [d] = deliveries(rt)
    assert d["status"] == "dead" and "the URL redirects" in d["last_error"] and len(responses.calls) == 1


@responses.activate
def test_timeouts_are_retried_and_marked_uncertain(make, caplog):
    rt = make(RED_OPS)
    responses.add(
        responses.POST, HOOK_URL, body=requests.exceptions.ReadTimeout(f"read timed out: {HOOK_URL}")
    )
    fire(rt)
    send(rt)
    [d] = deliveries(rt)
    assert d["status"] == "pending" and d["uncertain"] is True
    assert d["last_error"] == "webhook ops: no answer (timed out); will retry"
    assert HOOK_URL not in caplog.text


@responses.activate
def test_429_is_waited_out_and_sent_again(make):
    rt = make(RED_OPS)
    responses.add(responses.POST, HOOK_URL, status=429, headers={"Retry-After": "2"})
    responses.add(responses.POST, HOOK_URL, status=200)
    fire(rt)
    clock = FakeClock(NOW)
    stats = send(rt, clock)
    assert stats["delivered"] == 1 and stats["rate_limited"] == 1
    assert sum(clock.sleeps) >= 2
    [d] = deliveries(rt)
    assert d["status"] == "done" and d["attempts"] == 1


@responses.activate
def test_a_long_retry_after_leaves_the_target_for_a_later_run(make):
    rt = make({"red": {"condition": "turned_red", "webhooks": ["ops"], "notify_existing": True}})
    responses.add(responses.POST, HOOK_URL, status=429, headers={"Retry-After": "3600"})
    ann = customer(rt, "ann")
    bob = customer(rt, "bob")
    for c in (ann, bob):
        set_scores(rt, c, cx_health="red")
    decide.evaluate(rt.engine, list(rt.config.alerts.rules.values()), now=rt.now())
    stats = send(rt)
    assert stats["released"] == 2 and len(responses.calls) == 1  # bob's was not even tried
    assert all(d["status"] == "pending" and d["attempts"] == 0 for d in deliveries(rt))
    assert deliveries(rt)[0]["next_attempt_at"] == NOW + timedelta(hours=1)
    assert "rate limited" in stats["errors"][0]


@responses.activate
def test_a_webhook_within_its_rate_budget(make):
    rt = make(RED_OPS, webhooks={"ops": {"url": HOOK_URL, "secret": SECRET, "max_per_minute": 1}})
    responses.add(responses.POST, HOOK_URL, status=200)
    for who in ("ann", "bob", "cy"):
        set_scores(rt, customer(rt, who), cx_health="red")
    decide.evaluate(rt.engine, list(rt.config.alerts.rules.values()), now=rt.now())
    clock = FakeClock(NOW)
    assert send(rt, clock)["delivered"] == 3
    assert clock.elapsed >= 120  # one a minute


@responses.activate
def test_a_crash_between_claim_and_mark_loses_nothing_and_the_resend_is_the_same_alert(make):
    rt = make(RED_OPS)
    responses.add(responses.POST, HOOK_URL, status=200)
    fire(rt)
    # a run claims the delivery and dies before sending or marking it
    [claimed] = deliver.claim(rt.engine, "dead-worker", limit=10, now=NOW)
    assert deliveries(rt)[0]["status"] == "in_flight"
    assert send(rt)["claimed"] == 0  # still claimed: not sent by another run
    clock = FakeClock(NOW + timedelta(minutes=11))  # past alerts.claim_timeout
    stats = send(rt, clock)
    assert stats["recovered"] == 1 and stats["delivered"] == 1
    [d] = deliveries(rt)
    assert d["status"] == "done" and d["id"] == claimed.id
    assert [a["action"] for a in audits(rt, "alert_deliver")] == [
        "alert_delivery_recovered",
        "alert_delivered",
    ]
    key = json.loads(responses.calls[0].request.body)["id"]
    assert key.startswith("cx-alert:red:") and responses.calls[0].request.headers["X-CX-Alert-Id"] == key


def test_a_result_coming_back_after_the_claim_was_taken_over_is_not_recorded_twice(make):
    rt = make(RED_OPS)
    fire(rt)
    [row] = deliver.claim(rt.engine, "slow-worker", limit=10, now=NOW)
    with db.write(rt.engine) as conn:  # recovered and claimed by another run meanwhile
        conn.execute(update(alert_deliveries).values(claimed_by="other-worker"))
    run = deliver.Run(rt, clock=FakeClock(NOW), rng=random.Random(1), worker="slow-worker")
    run.mark(row, deliver.Outcome("done", result="HTTP 200"))
    [d] = deliveries(rt)
    assert d["status"] == "in_flight" and d["claimed_by"] == "other-worker"
    assert audits(rt, "alert_deliver")[-1]["action"] == "alert_delivery_claim_lost"


@responses.activate
def test_dead_deliveries_can_be_requeued(make):
    rt = make(RED_OPS)
    responses.add(responses.POST, HOOK_URL, status=404)
    fire(rt)
    send(rt)
    [d] = deliveries(rt)
    assert d["status"] == "dead"
    responses.replace(responses.POST, HOOK_URL, status=200)
    assert status.requeue_dead(rt.engine, now=NOW) == [d["id"]]
    assert audits(rt, "alert_delivery_requeued")[0]["details"]["last_error"] == d["last_error"]
    assert send(rt)["delivered"] == 1
    assert deliveries(rt)[0]["status"] == "done"


def test_a_webhook_removed_from_the_config_fails_its_pending_deliveries(make):
    rt = make({"red": {"condition": "turned_red", "webhooks": ["ops", "slack"], "notify_existing": True}})
    fire(rt)
    rt2 = make(
        {"red": {"condition": "turned_red", "webhooks": ["ops"]}},
        webhooks={"ops": {"url": HOOK_URL, "secret": SECRET}},
    )
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, HOOK_URL, status=200)
        send(rt2)
    by_action = {d["action"]: d for d in deliveries(rt2)}
    assert by_action["webhook:ops"]["status"] == "done"
    assert by_action["webhook:slack"]["status"] == "dead"
    assert (
        by_action["webhook:slack"]["last_error"]
        == "webhook slack is no longer configured under alerts.webhooks"
    )


@responses.activate
def test_cleared_alerts_are_announced_when_asked(make):
    rt = make(
        {
            "red": {
                "condition": "turned_red",
                "webhooks": ["ops"],
                "notify_existing": True,
                "notify_on_clear": True,
            }
        }
    )
    responses.add(responses.POST, HOOK_URL, status=200)
    ann = fire(rt)
    send(rt)
    cleared_at = later(rt, hours=3)
    set_scores(rt, ann, cx_health="green")
    decide.evaluate(rt.engine, list(rt.config.alerts.rules.values()), now=rt.now())
    send(rt, FakeClock(cleared_at))
    body = json.loads(responses.calls[1].request.body)
    assert body["type"] == "alert.cleared" and body["cleared_at"] == "2026-06-15T15:00:00Z"
    assert body["fired_at"] == "2026-06-15T12:00:00Z" and body["id"].endswith(":cleared")
    assert body["title"].startswith("Resolved: ")
    assert responses.calls[1].request.headers["X-CX-Event"] == "alert.cleared"


def test_two_runs_never_claim_the_same_delivery(make):
    rt = make({"red": {"condition": "turned_red", "webhooks": ["ops", "slack"], "notify_existing": True}})
    fire(rt)
    first = deliver.claim(rt.engine, "w1", limit=1, now=NOW)
    second = deliver.claim(rt.engine, "w2", limit=10, now=NOW)
    assert len(first) == 1 and len(second) == 1 and first[0].id != second[0].id
    assert deliver.claim(rt.engine, "w3", limit=10, now=NOW) == []
    assert {(d["id"], d["claimed_by"]) for d in deliveries(rt)} == {(first[0].id, "w1"), (second[0].id, "w2")}


@responses.activate
def test_an_unexpected_error_quoting_the_url_is_retried_without_it(make):
    rt = make(RED_OPS)
    error = requests.exceptions.InvalidHeader(f"bad header for {HOOK_URL}")
    responses.add(responses.POST, HOOK_URL, body=error)
    fire(rt)
    send(rt)
    [d] = deliveries(rt)
    assert d["status"] == "pending" and d["last_error"] == "internal error: InvalidHeader: bad header for " \
                                                          "[webhook ops]"
