"""Retention probability, expected purchases, value and churn risk, through a scoring run."""

from __future__ import annotations

import numpy as np
import pytest

from cx_connector.scoring import retention, run
from cx_connector.scoring.settings import ScoringSettings
from tests.conftest import make_config
from tests.scoring.shop import add, ago, explanation, order, tp, values


def test_few_purchasers_fall_back_to_recency_decay_and_say_so(rt):
    add(rt, order("ann", ago(100), 40, "1"), order("ann", ago(45), 60, "2"))
    report = run.run(rt, full=True)
    assert report["models"]["bgnbd"]["used"] == "recency fallback"
    assert "only 1 customer has purchases" in report["models"]["bgnbd"]["reason"]
    v = values(rt, "ann")
    assert v["cx_retention_probability"] == round(100 * 0.5 ** (45 / 90))  # 71
    # own rate: 2 purchase days over max(101 days as a buyer, 90) x 90 days x retention
    assert v["cx_expected_purchases_90d"] == pytest.approx(round(2 / 101 * 90 * 0.5 ** 0.5, 2))
    assert v["cx_clv_90d"] == pytest.approx(round(2 / 101 * 90 * 0.5 ** 0.5 * 50, 2), abs=0.011)
    e = explanation(rt, "ann")
    assert e["retention"]["method"] == "recency"
    assert "only 1 customer has" in e["model"]["bgnbd_fallback"]
    assert e["value"]["method"] == "own_mean" and e["value"]["per_purchase"] == 50


def test_customers_without_purchases_get_an_engagement_probability(rt):
    add(rt, tp("contact_created", "bob", ago(90)), tp("email_engaged", "bob", ago(30)))
    run.run(rt, full=True)
    v = values(rt, "bob")
    assert v["cx_retention_probability"] == round(100 * 0.5 ** (30 / 60))  # 71
    assert v["cx_expected_purchases_90d"] is None and v["cx_clv_90d"] is None
    assert explanation(rt, "bob")["retention"]["method"] == "engagement"


def test_engagement_half_life_is_configurable(database_url):
    from cx_connector.runtime import build
    from tests.conftest import NOW
    rt = build(make_config(database_url, scoring={"engagement_half_life_days": 30}), clock=lambda: NOW)
    add(rt, tp("email_engaged", "bob", ago(30)))
    run.run(rt, full=True)
    assert values(rt, "bob")["cx_retention_probability"] == 50
    rt.engine.dispose()


def test_no_touchpoints_no_scores(rt):
    from cx_connector import db
    from cx_connector.models import customers
    with db.write(rt.engine) as conn:
        conn.execute(customers.insert().values(created_at=ago(5), updated_at=ago(5), profile_times={},
                                               changed_at=ago(5)))
    report = run.run(rt, full=True)
    assert report["customers_scored"] == 1
    assert report["distribution"]["cx_health"] == {"none": 1}


def test_bgnbd_retention_uses_recency_not_raw_p_alive():
    """With a fitted model, two one-time buyers have P(alive) = 1, but the one who bought
    long ago is far less likely to buy within the horizon."""
    from cx_connector.scoring.bgnbd import BGNBDParams
    from cx_connector.scoring.features import Features
    f = Features(ids=np.array([1, 2]), as_of=None, now_days=20000.0, today=20000)
    f.purchase_days = np.array([1.0, 1.0])
    f.first_day = f.last_day = np.array([19990, 19000])
    f.spend = f.spend_days = f.repeat_spend = f.repeat_spend_days = np.zeros(2)
    f.last_engaged = np.array([19990.0, 19000.0])
    pop = retention.PopulationFit(bgnbd=BGNBDParams(0.243, 4.414, 0.793, 2.426, 0, 2357))
    r = retention.score(f, pop, ScoringSettings())
    assert np.all(r.p_alive == 1)
    assert r.probability[0] > 3 * r.probability[1]
    h = 90 / 7
    T = np.array([10, 1000]) / 7
    assert r.probability == pytest.approx(1 - ((4.414 + T) / (4.414 + T + h)) ** 0.243)


@pytest.mark.parametrize(("pct", "risk"), [(0.294, "high"), (0.296, "medium"), (0.594, "medium"),
                                           (0.596, "low"), (1.0, "low"), (float("nan"), None)])
def test_churn_risk_thresholds_apply_to_the_published_percentage(pct, risk):
    assert retention.churn_risk(np.array([pct]), ScoringSettings())[0] == risk


def test_churn_thresholds_are_configurable(database_url):
    from cx_connector.runtime import build
    from tests.conftest import NOW
    rt = build(make_config(database_url, scoring={"churn": {"high_below": 80, "medium_below": 90}}),
               clock=lambda: NOW)
    add(rt, tp("email_engaged", "bob", ago(30)))
    run.run(rt, full=True)
    assert values(rt, "bob")["cx_churn_risk"] == "high"
    rt.engine.dispose()


def test_orders_undone_in_full_are_named_not_called_no_purchases(rt):
    """A customer whose only order was refunded has no purchases, and the explanation
    says why: "no purchases yet" beside an order the rep can see reads as a mistake."""
    from cx_connector.scoring import explain
    add(rt, order("bob", ago(40), 42, "1"), tp("refund_issued", "bob", ago(30), value=-42, order_id="1"),
        order("cy", ago(60), 20, "2"), order("cy", ago(50), 30, "3"),
        tp("order_cancelled", "cy", ago(49), order_id="3"))
    run.run(rt, full=True)
    e = explanation(rt, "bob")
    assert e["retention"] == {"method": "engagement", "days_since_engagement": 30, "orders_not_counted": 1,
                              "probability": pytest.approx(0.5 ** (30 / 60), abs=1e-4)}
    text = explain.render(e, values(rt, "bob"))["cx_retention_probability"]
    assert text.startswith("No purchases: the one order was cancelled or refunded in full, so this is "
                           "the probability of still being engaged: the last engagement was 30 days ago")
    cy = explain.render(explanation(rt, "cy"), values(rt, "cy"))["cx_retention_probability"]
    assert cy.startswith("Bought on 1 day, the last 60 days ago.")
    assert cy.endswith("0.5^(60/90) = 63%. 1 cancelled or fully refunded order is not counted as a purchase.")
    assert "(1 purchase day over max(" in explain.render(explanation(rt, "cy"), values(rt, "cy"))[
        "cx_expected_purchases_90d"]


def test_expected_purchases_and_value_stay_over_90_days_whatever_the_horizon(rt, database_url):
    """The fields are named ..._90d and labelled "90 days" on every platform: the retention
    horizon changes the retention probability only."""
    from cx_connector.runtime import build
    from cx_connector.scoring import explain
    from tests.conftest import NOW
    add(rt, order("ann", ago(100), 40, "1"), order("ann", ago(45), 60, "2"))
    run.run(rt, full=True)
    before = values(rt, "ann")
    short = build(make_config(database_url, scoring={"horizon_days": 30}), engine=rt.engine,
                  clock=lambda: NOW)
    run.run(short, full=True)
    after = values(rt, "ann")
    assert (after["cx_expected_purchases_90d"], after["cx_clv_90d"]) == (
        before["cx_expected_purchases_90d"], before["cx_clv_90d"])
    words = explain.render(explanation(rt, "ann"), after)["cx_expected_purchases_90d"]
    assert "over max(100 days as a buyer, 90 days)) x 90 days x retention" in words, words


def test_fallback_reasons_count_in_words(rt):
    add(rt, order("ann", ago(10), 40, "1"))
    report = run.run(rt, full=True)
    assert report["models"]["bgnbd"]["reason"].startswith("only 1 customer has purchases;")
    assert explanation(rt, "ann")["model"]["gamma_gamma_fallback"].startswith(
        "no customer has repeat purchases with a value;")


def test_one_day_reads_in_the_singular(rt):
    from cx_connector.scoring import explain
    add(rt, tp("email_engaged", "bob", ago(1)))
    run.run(rt, full=True)
    words = explain.render(explanation(rt, "bob"), values(rt, "bob"))["cx_retention_probability"]
    assert "the last engagement was 1 day ago" in words, words
