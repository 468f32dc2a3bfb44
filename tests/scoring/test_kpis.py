"""Company KPIs against numbers worked out by hand."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cx_connector import db
from cx_connector.runtime import Runtime
from cx_connector.scoring import kpis, run
from tests.conftest import NOW, count
from tests.scoring.shop import add, ago, order, tp


@pytest.fixture
def shop(rt):
    add(rt,
        order("ann", ago(120), 40, "A1", "coffee"), order("ann", ago(30), 100, "A2", "tea"),
        tp("nps_response", "ann", ago(20), rating=(10, 10)), tp("csat_rating", "ann", ago(19), rating=(5, 5)),
        tp("ticket_opened", "ann", ago(10), ticket_id="t1"),
        tp("ticket_solved", "ann", ago(10) + timedelta(hours=6), ticket_id="t1"),
        order("bob", ago(110), 60, "B1", "coffee"),
        tp("nps_response", "bob", ago(15), rating=(9, 10)), tp("csat_rating", "bob", ago(14), rating=(4, 5)),
        order("cy", ago(100), 60, "C1", "coffee"),
        tp("nps_response", "cy", ago(12), rating=(7, 10)), tp("csat_rating", "cy", ago(11), rating=(3, 5)),
        tp("ticket_opened", "cy", ago(95), ticket_id="t0"),
        tp("ticket_solved", "cy", ago(80), ticket_id="t0"),
        tp("checkout_started", "dan", ago(20, 1), checkout_token="a"),
        tp("order_placed", "dan", ago(20), value=50, order_id="D1", checkout_token="a",
           products=[{"id": "c", "category": "coffee"}]),
        tp("nps_response", "dan", ago(8), rating=(3, 10)), tp("csat_rating", "dan", ago(7), rating=(1, 5)),
        order("eve", ago(25), 999, "E1", "coffee"), tp("order_cancelled", "eve", ago(24), order_id="E1"),
        tp("checkout_started", "fay", ago(40, 1), checkout_token="b"),
        tp("order_placed", "fay", ago(40), value=80, order_id="F1", checkout_token="b",
           products=[{"id": "c", "category": "coffee"}]),
        tp("refund_issued", "fay", ago(35), value=-30, order_id="F1"),
        tp("ticket_opened", "fay", ago(5), ticket_id="t2"),
        tp("ticket_solved", "fay", ago(4), ticket_id="t2"),
        tp("checkout_started", "gil", ago(3), checkout_token="c"),
        tp("nps_response", "gil", ago(150), rating=(10, 10)),
        tp("nps_response", "gil", ago(160), rating=(2, 10)))
    return rt


def test_kpis_from_touchpoints(shop):
    run.run(shop, full=True)
    with db.read(shop.engine) as conn:
        k = kpis.compute(conn, NOW, shop.config.scoring)
    assert (k["nps"], k["nps_answers"], k["nps_previous"], k["nps_change"]) == (25.0, 4, 0.0, 25.0)
    assert (k["csat"], k["csat_ratings"]) == (50.0, 4)
    # bought in the previous window: ann, bob, cy; again in this one: ann
    assert (k["retention_rate"], k["churn_rate"], k["retention_base"]) == (33.3, 66.7, 3)
    # 100 (ann) + 50 (dan) + 80 - 30 (fay); eve's order was cancelled; before: 40 + 60 + 60
    assert (k["revenue"], k["revenue_previous"], k["revenue_growth"]) == (200.0, 160.0, 25.0)
    assert k["currencies"] == ["EUR"]
    # t1 and t2 opened; 7 customers active; solved: 6 h, 24 h and t0 after 15 days
    assert (k["tickets"], k["active_customers"], k["tickets_per_customer"]) == (2, 7, 0.286)
    assert (k["median_resolution_hours"], k["resolved_tickets"]) == (24.0, 3)
    assert (k["checkouts"], k["checkout_conversion"]) == (3, 66.7)
    # from the scores: ann bought on two days and two categories, of five purchasers
    assert (k["repeat_purchase_rate"], k["cross_sell_rate"]) == (20.0, 20.0)
    assert k["customers"] == k["scored_customers"] == 7
    assert sum(k["customers_per_stage"].values()) == 7
    assert k["avg_cx_score"] is not None


def test_snapshot_once_a_day_and_again_after_a_full_pass(shop):
    assert kpis.snapshot(shop)["computed"] is True
    assert kpis.snapshot(shop)["computed"] is False
    later = Runtime(config=shop.config, engine=shop.engine, connectors=shop.connectors,
                    clock=lambda: NOW + timedelta(hours=1))
    run.run(later, full=True)
    assert kpis.snapshot(later)["computed"] is True
    assert count(shop.engine, "kpi_snapshots") == 1
    tomorrow = Runtime(config=shop.config, engine=shop.engine, connectors=shop.connectors,
                       clock=lambda: NOW + timedelta(days=1))
    assert kpis.snapshot(tomorrow)["computed"] is True
    with db.read(shop.engine) as conn:
        days = [h["day"] for h in kpis.history(conn, 7)]
    assert days == ["2026-06-16", "2026-06-15"]


def test_kpis_of_an_empty_shop_are_none_not_errors(rt):
    with db.read(rt.engine) as conn:
        k = kpis.compute(conn, NOW, rt.config.scoring)
    assert k["nps"] is None and k["revenue"] == 0 and k["revenue_growth"] is None
    assert k["avg_cx_score"] is None and k["customers"] == 0


def test_revenue_counts_a_deal_and_an_order_sharing_an_id_as_two_purchases(rt):
    add(rt, tp("deal_won", "hal", ago(10), value=1000, deal_id="7"), order("hal", ago(9), 25, "7", "tea"),
        tp("deal_won", "hal", ago(8), value=1000, deal_id="7", touchpoint_id="again"))   # the same deal
    with db.read(rt.engine) as conn:
        k = kpis.compute(conn, NOW, rt.config.scoring)
    assert k["revenue"] == 1025.0
