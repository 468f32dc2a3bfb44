"""What each condition matches, on touchpoints stored the way webhooks store them."""

from __future__ import annotations

from cx_connector import db
from cx_connector.alerts import conditions
from tests.alerts.conftest import customer, set_scores
from tests.scoring.shop import add, ago, cid, order, tp

HOOK = {"webhooks": ["ops"]}


def matches(rt, name):
    with db.read(rt.engine) as conn:
        return conditions.matches(conn, rt.config.alerts.rules[name], rt.now())


def test_turned_red_reads_the_latest_health(make):
    rt = make({"red": {"condition": "turned_red", **HOOK}})
    ann, bob, cy = customer(rt, "ann"), customer(rt, "bob"), customer(rt, "cy")
    set_scores(rt, ann, cx_health="red", cx_score=20)
    set_scores(rt, bob, cx_health="yellow")
    assert matches(rt, "red") == {
        ann: {
            "cx_health": "red",
            "cx_score": 20,
            "cx_churn_risk": "medium",
            "cx_retention_probability": 50,
            "cx_clv_90d": 100.0,
            "scored_at": "2026-06-15T12:00:00Z",
        }
    }
    assert cy not in matches(rt, "red")


def test_detractor_nps_is_the_latest_answer_on_its_own_scale(make):
    rt = make({"nps": {"condition": "detractor_nps", **HOOK}})
    add(
        rt,
        tp("nps_response", "ann", ago(2), rating=(3, 10)),
        tp("nps_response", "bob", ago(3), rating=(2, 10)),
        tp("nps_response", "bob", ago(1), rating=(9, 10)),
        tp("nps_response", "cy", ago(1), rating=(3, 5)),  # 6 of 10: a detractor
        tp("nps_response", "dan", ago(1), rating=(4, 5)),  # 8 of 10: passive
        tp("nps_response", "eve", ago(1), rating=(7, 10)),
        tp("nps_response", "fay", ago(40), rating=(0, 10)),
    )  # older than `within` (30 days)
    found = matches(rt, "nps")
    assert set(found) == {cid(rt, "ann"), cid(rt, "cy")}
    assert found[cid(rt, "cy")] == {
        "source": "crm",
        "touchpoint_id": found[cid(rt, "cy")]["touchpoint_id"],
        "answered_at": "2026-06-14T12:00:00Z",
        "score": 3.0,
        "scale_max": 5.0,
        "nps": 6,
        "detractor_max": 6,
    }


def test_detractor_threshold_and_window_are_configurable(make):
    rt = make({"nps": {"condition": "detractor_nps", "detractor_max": 4, "within": "60d", **HOOK}})
    add(
        rt,
        tp("nps_response", "ann", ago(2), rating=(5, 10)),
        tp("nps_response", "fay", ago(40), rating=(0, 10)),
    )
    assert set(matches(rt, "nps")) == {cid(rt, "fay")}


def test_ticket_reopened_counts_reopens_of_the_same_ticket(make):
    rt = make({"reopen": {"condition": "ticket_reopened", **HOOK}})
    add(
        rt,
        tp("ticket_reopened", "ann", ago(5), ticket_id="7001"),
        tp("ticket_reopened", "ann", ago(2), ticket_id="7001"),
        # bob: two reopens, but of two tickets
        tp("ticket_reopened", "bob", ago(5), ticket_id="7002"),
        tp("ticket_reopened", "bob", ago(2), ticket_id="7003"),
        # cy: twice, but the last reopen is older than `within`
        tp("ticket_reopened", "cy", ago(50), ticket_id="7004"),
        tp("ticket_reopened", "cy", ago(45), ticket_id="7004"),
        # dan: one reopen of a ticket of the same id on another platform
        tp("ticket_reopened", "dan", ago(3), ticket_id="7005"),
        tp("ticket_reopened", "dan", ago(2), ticket_id="7005", source="zendesk"),
    )
    found = matches(rt, "reopen")
    assert set(found) == {cid(rt, "ann")}
    assert found[cid(rt, "ann")] == {
        "source": "crm",
        "ticket_id": "7001",
        "reopens": 2,
        "last_reopened_at": "2026-06-13T12:00:00Z",
        "times": 2,
        "tickets_matching": 1,
        "tickets": [
            {"source": "crm", "ticket_id": "7001", "reopens": 2, "last_reopened_at": "2026-06-13T12:00:00Z"}
        ],
    }
    rt3 = make({"reopen": {"condition": "ticket_reopened", "times": 3, **HOOK}})
    assert matches(rt3, "reopen") == {}
    add(rt, tp("ticket_reopened", "ann", ago(1), ticket_id="7001"))
    assert matches(rt3, "reopen")[cid(rt, "ann")]["reopens"] == 3


def test_high_value_at_risk_on_a_score_field(make):
    rt = make(
        {"risk": {"condition": "high_value_at_risk", "value_at_least": 500, "retention_below": 25, **HOOK}}
    )
    ann, bob, cy = customer(rt, "ann"), customer(rt, "bob"), customer(rt, "cy")
    set_scores(rt, ann, cx_retention_probability=20, cx_clv_90d=800.5)
    set_scores(rt, bob, cx_retention_probability=20, cx_clv_90d=499.99)  # not valuable enough
    set_scores(rt, cy, cx_retention_probability=25, cx_clv_90d=5000)  # not below 25
    found = matches(rt, "risk")
    assert set(found) == {ann}
    assert found[ann]["value"] == 800.5 and found[ann]["value_measure"] == "cx_clv_90d"
    assert (found[ann]["value_at_least"], found[ann]["retention_below"]) == (500, 25)


def test_high_value_at_risk_on_lifetime_revenue_net_of_cancellations_and_refunds(make):
    rt = make(
        {
            "risk": {
                "condition": "high_value_at_risk",
                "value": "lifetime_revenue",
                "value_at_least": 1000,
                **HOOK,
            }
        }
    )
    add(
        rt,
        order("ann", ago(300), 700, "o1"),
        order("ann", ago(200), 400, "o2"),
        order("bob", ago(300), 700, "o3"),
        order("bob", ago(200), 600, "o4"),
        tp("order_cancelled", "bob", ago(199), order_id="o4"),
        order("cy", ago(300), 900, "o5"),
        order("cy", ago(200), 300, "o6"),
        tp("refund_issued", "cy", ago(190), value=-250, order_id="o6"),
    )
    for who in ("ann", "bob", "cy"):
        set_scores(rt, cid(rt, who), cx_retention_probability=10, cx_clv_90d=0)
    found = matches(rt, "risk")
    assert set(found) == {cid(rt, "ann")} and found[cid(rt, "ann")]["value"] == 1100.0
    # bob: 700 (o4 cancelled); cy: 900 + 300 - 250 = 950


def test_merged_away_customers_do_not_match(make):
    from sqlalchemy import update

    from cx_connector.models import customers

    rt = make({"red": {"condition": "turned_red", **HOOK}})
    ann, old = customer(rt, "ann"), customer(rt, "old")
    set_scores(rt, old, cx_health="red")
    with db.write(rt.engine) as conn:
        conn.execute(update(customers).where(customers.c.id == old).values(merged_into_id=ann))
    assert matches(rt, "red") == {}
