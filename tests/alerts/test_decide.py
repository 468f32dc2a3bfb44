"""Firing and clearing: once per customer per rule until it clears, then again; the
baseline of a rule's first evaluation; merges; every transition in the audit log."""

from __future__ import annotations

from sqlalchemy import update

from cx_connector import db
from cx_connector.alerts import decide
from cx_connector.models import customers
from tests.alerts.conftest import audits, customer, deliveries, later, set_scores, states
from tests.conftest import NOW

RED = {"red": {"condition": "turned_red", "webhooks": ["ops", "slack"], "platforms": ["hubspot"]}}


def evaluate(rt, **kw):
    [report] = decide.evaluate(rt.engine, list(rt.config.alerts.rules.values()), now=rt.now(), **kw)
    return report


def test_first_evaluation_records_the_baseline_without_sending(make):
    rt = make(RED)
    ann = customer(rt, "ann")
    set_scores(rt, ann, cx_health="red", cx_score=31)
    report = evaluate(rt)
    assert report.first_evaluation and report.baseline == [ann] and report.fired == []
    assert deliveries(rt) == []
    [state] = states(rt)
    assert (
        state["customer_id"] == ann and state["cleared_at"] is None and state["details"]["baseline"] is True
    )
    [entry] = audits(rt)
    assert entry["action"] == "alert_baseline" and entry["customer_id"] == ann
    assert entry["details"]["rule"] == "red" and "notify_existing" in entry["details"]["reason"]


def test_fires_once_per_customer_until_it_clears_then_again(make):
    rt = make(RED)
    ann, bob = customer(rt, "ann"), customer(rt, "bob")
    set_scores(rt, bob, cx_health="green")
    assert evaluate(rt).baseline == []  # nobody red: an empty baseline

    later(rt, minutes=5)
    set_scores(rt, ann, cx_health="red", cx_score=31, cx_churn_risk="high", cx_retention_probability=12)
    report = evaluate(rt)
    assert report.fired == [ann] and report.deliveries == 3
    fired_at = rt.now()
    assert [(d["action"], d["event"], d["status"], d["fired_at"]) for d in deliveries(rt)] == [
        ("webhook:ops", "fired", "pending", fired_at),
        ("webhook:slack", "fired", "pending", fired_at),
        ("platform:hubspot", "fired", "pending", fired_at),
    ]
    assert deliveries(rt)[0]["details"] == {
        "cx_health": "red",
        "cx_score": 31,
        "cx_churn_risk": "high",
        "cx_retention_probability": 12,
        "cx_clv_90d": 100.0,
        "scored_at": "2026-06-15T12:05:00Z",
    }

    for _ in range(3):  # still red: nothing new
        later(rt, minutes=5)
        assert evaluate(rt).fired == []
    assert len(deliveries(rt)) == 3

    later(rt, hours=1)
    set_scores(rt, ann, cx_health="yellow")
    report = evaluate(rt)
    assert report.cleared == [ann] and report.deliveries == 0  # notify_on_clear is off
    [state] = states(rt)
    assert state["cleared_at"] == rt.now() and state["fired_at"] == fired_at

    later(rt, days=1)
    set_scores(rt, ann, cx_health="red")
    report = evaluate(rt)
    assert report.fired == [ann] and len(deliveries(rt)) == 6
    [state] = states(rt)
    assert state["fired_at"] == rt.now() and state["cleared_at"] is None
    actions = [(a["action"], a["customer_id"]) for a in audits(rt)]
    assert actions == [("alert_fired", ann), ("alert_cleared", ann), ("alert_fired", ann)]
    fired = audits(rt)[0]["details"]
    assert fired["rule"] == "red" and fired["condition"] == "turned_red"
    assert fired["actions"] == ["webhook:ops", "webhook:slack", "platform:hubspot"]
    assert "ann" not in str(audits(rt))  # ids and numbers only, no personal data


def test_notify_existing_and_notify_on_clear(make):
    rt = make({"red": {**RED["red"], "notify_existing": True, "notify_on_clear": True}})
    ann = customer(rt, "ann")
    set_scores(rt, ann, cx_health="red")
    report = evaluate(rt)
    assert report.first_evaluation and report.fired == [ann] and report.baseline == []
    fired_at = rt.now()
    later(rt, hours=2)
    set_scores(rt, ann, cx_health="green")
    evaluate(rt)
    cleared = [d for d in deliveries(rt) if d["event"] == "cleared"]
    # the webhooks hear that it cleared; no task is created for that
    assert [(d["action"], d["fired_at"]) for d in cleared] == [
        ("webhook:ops", fired_at),
        ("webhook:slack", fired_at),
    ]


def test_a_baseline_alert_clearing_is_not_announced(make):
    rt = make({"red": {**RED["red"], "notify_on_clear": True}})
    ann = customer(rt, "ann")
    set_scores(rt, ann, cx_health="red")
    evaluate(rt)
    later(rt, hours=1)
    set_scores(rt, ann, cx_health="green")
    assert evaluate(rt).cleared == [ann]
    assert deliveries(rt) == []


def test_changing_a_rules_condition_starts_a_new_baseline(make):
    rt = make(RED)
    ann, bob = customer(rt, "ann"), customer(rt, "bob")
    set_scores(rt, ann, cx_health="red", cx_retention_probability=10, cx_clv_90d=900)
    evaluate(rt)
    rt2 = make({"red": {"condition": "high_value_at_risk", "value_at_least": 500, "webhooks": ["ops"]}})
    set_scores(rt2, bob, cx_retention_probability=5, cx_clv_90d=700)
    report = evaluate(rt2)
    assert report.first_evaluation and sorted(report.baseline) == [bob] and report.fired == []
    assert report.active_before == 1 and report.cleared == []  # ann matches the new condition too


def test_dry_run_changes_nothing(make):
    rt = make(RED)
    ann = customer(rt, "ann")
    evaluate(rt)
    set_scores(rt, ann, cx_health="red")
    report = evaluate(rt, dry_run=True)
    assert report.fired == [ann] and report.as_dict(ids=True)["fired_ids"] == [ann]
    assert states(rt) == [] and deliveries(rt) == [] and audits(rt) == []
    assert evaluate(rt).fired == [ann]


def test_an_alert_follows_a_merge_instead_of_firing_twice(make):
    rt = make(RED)
    ann, ann2 = customer(rt, "ann"), customer(rt, "ann2")
    evaluate(rt)
    set_scores(rt, ann2, cx_health="red")
    assert evaluate(rt).fired == [ann2]
    # ann2 turns out to be ann: the merge moves touchpoints and scores to the survivor
    with db.write(rt.engine) as conn:
        conn.execute(update(customers).where(customers.c.id == ann2).values(merged_into_id=ann))
    set_scores(rt, ann, cx_health="red")
    later(rt, minutes=5)
    report = evaluate(rt)
    assert report.moved == [(ann2, ann)] and report.fired == [] and report.cleared == []
    by_customer = {s["customer_id"]: s for s in states(rt)}
    assert by_customer[ann]["cleared_at"] is None and by_customer[ann]["fired_at"] == NOW
    assert by_customer[ann2]["cleared_at"] == rt.now()
    assert [a["action"] for a in audits(rt)][-2:] == ["alert_moved", "alert_cleared"]
    assert len(deliveries(rt)) == 3  # only the first firing's


def test_rules_are_independent(make):
    rt = make(
        {
            **RED,
            "risk": {
                "condition": "high_value_at_risk",
                "value_at_least": 500,
                "webhooks": ["ops"],
                "notify_existing": True,
            },
        }
    )
    ann = customer(rt, "ann")
    set_scores(rt, ann, cx_health="red", cx_retention_probability=10, cx_clv_90d=900)
    reports = decide.evaluate(rt.engine, list(rt.config.alerts.rules.values()), now=rt.now())
    assert [(r.rule, r.baseline, r.fired) for r in reports] == [("red", [ann], []), ("risk", [], [ann])]
    assert {(s["rule"], s["customer_id"]) for s in states(rt)} == {("red", ann), ("risk", ann)}
