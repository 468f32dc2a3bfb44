"""The CX pyramid: outcomes, negative weight, decay, renormalised layers; NPS, CSAT, health."""

from __future__ import annotations

import numpy as np
import pytest

from cx_connector.runtime import build
from cx_connector.scoring import cx_score, run
from cx_connector.scoring.settings import ScoringSettings
from tests.conftest import NOW, make_config
from tests.scoring.shop import add, ago, explanation, order, tp, values


def layers(rt, who):
    return {k: v["score"] for k, v in explanation(rt, who)["cx"].items()}


def test_a_negative_experience_weighs_twice_a_positive_one(rt):
    add(rt, order("ann", ago(3), 10, "1"), tp("order_fulfilled", "ann", ago(2), order_id="1"),
        order("ann", ago(3), 10, "2"), tp("order_cancelled", "ann", ago(2), order_id="2"))
    run.run(rt, full=True)
    assert layers(rt, "ann") == {"needs_met": pytest.approx(33.3)}
    assert values(rt, "ann")["cx_score"] == 33  # the only layer with data
    assert explanation(rt, "ann")["cx"]["needs_met"]["events"] == {"order_fulfilled": 1, "order_cancelled": 1}


def test_experiences_decay_with_a_180_day_half_life(rt):
    add(rt, order("ann", ago(400), 10, "1"), tp("order_fulfilled", "ann", ago(180), order_id="1"),
        tp("refund_issued", "ann", ago(0), value=-1, order_id="1"))
    run.run(rt, full=True)
    # positive weight 0.5 (one half-life old) against negative 2 x 1
    assert layers(rt, "ann")["needs_met"] == pytest.approx(100 * 0.5 / 2.5)


def test_layers_without_data_are_left_out_and_weights_renormalised(rt):
    add(rt, tp("nps_response", "bob", ago(5), rating=(10, 10)))
    add(rt, order("cy", ago(9), 10, "1"), tp("order_fulfilled", "cy", ago(8), order_id="1"),
        tp("csat_rating", "cy", ago(7), rating=(1, 5)))
    run.run(rt, full=True)
    assert values(rt, "bob")["cx_score"] == 100        # not 30: no data is not a bad experience
    assert values(rt, "cy")["cx_score"] == round(0.4 * 100 / 0.7)  # needs met 100, enjoyment 0
    assert "ease" not in explanation(rt, "cy")["cx"]


def test_layer_weights_are_configurable(database_url):
    rt = build(make_config(database_url, scoring={"cx": {"weights": {"needs_met": 1, "ease": 0,
                                                                     "enjoyment": 1}}}), clock=lambda: NOW)
    add(rt, order("cy", ago(9), 10, "1"), tp("order_fulfilled", "cy", ago(8), order_id="1"),
        tp("csat_rating", "cy", ago(7), rating=(1, 5)))
    run.run(rt, full=True)
    assert values(rt, "cy")["cx_score"] == 50
    rt.engine.dispose()


def test_tickets_feed_needs_met_and_ease(rt):
    add(rt,
        tp("ticket_opened", "di", ago(20), ticket_id="fast"),
        tp("ticket_solved", "di", ago(20) + (NOW - ago(0, 2)), ticket_id="fast"),
        tp("ticket_opened", "di", ago(18), ticket_id="slow"),
        tp("ticket_solved", "di", ago(14), ticket_id="slow"),
        tp("ticket_reopened", "di", ago(13), ticket_id="slow"),
        tp("ticket_solved", "di", ago(12), ticket_id="slow"),
        *[tp("ticket_commented", "di", ago(17), ticket_id="slow", author="customer") for _ in range(3)],
        tp("ticket_opened", "di", ago(10), ticket_id="open"),           # waiting 10 days
        tp("ticket_opened", "di", ago(0, 5), ticket_id="new"))         # 5 hours: not late yet
    run.run(rt, full=True)
    e = explanation(rt, "di")["cx"]
    assert e["needs_met"]["events"] == {"ticket_solved": 2, "ticket_overdue": 1}
    assert e["ease"]["events"] == {"resolved_fast": 1, "resolved_slow": 1, "still_waiting": 1,
                                   "ticket_reopened": 1, "many_contacts": 1}


def test_nps_last_answer_and_category(rt):
    add(rt, tp("nps_response", "ed", ago(30), rating=(9, 10)),
        tp("nps_response", "ed", ago(2), rating=(6, 10)),
        tp("nps_response", "fay", ago(2), rating=(4, 5)))            # another scale: 8 of 10
    run.run(rt, full=True)
    assert (values(rt, "ed")["cx_nps_last"], values(rt, "ed")["cx_nps_category"]) == (6, "detractor")
    assert (values(rt, "fay")["cx_nps_last"], values(rt, "fay")["cx_nps_category"]) == (8, "passive")


@pytest.mark.parametrize(("points", "category"), [(0, "detractor"), (6, "detractor"), (7, "passive"),
                                                  (8, "passive"), (9, "promoter"), (10, "promoter")])
def test_nps_categories(points, category):
    assert cx_score.nps_category(np.array([float(points)]))[0] == category


def test_csat_is_the_share_of_satisfied_ratings(rt):
    add(rt, tp("csat_rating", "gus", ago(9), rating=(5, 5)), tp("csat_rating", "gus", ago(8), rating=(4, 5)),
        tp("csat_rating", "gus", ago(7), rating=(2, 5)))
    run.run(rt, full=True)
    assert values(rt, "gus")["cx_csat"] == 67
    assert explanation(rt, "gus")["csat"] == {"ratings": 3, "satisfied": 2}


@pytest.mark.parametrize(("cx", "churn", "health"), [
    (80, "low", "green"), (70, "low", "green"), (69, "low", "yellow"), (80, "medium", "yellow"),
    (80, "high", "red"), (39, "low", "red"), (40, "medium", "yellow"), (np.nan, "low", "green"),
    (np.nan, "high", "red"), (90, None, "green"), (np.nan, None, None)])
def test_health_from_cx_and_churn_risk(cx, churn, health):
    out = cx_score.health(np.array([cx], dtype=float), np.array([churn], dtype=object), ScoringSettings())
    assert out[0] == health


def test_health_explained_by_the_rule_it_applied(rt):
    """A lead with no experiences is green on churn risk alone: the sentence says that,
    not the two-part rule (which would read "CX unknown ... green when CX is at least 70")."""
    from cx_connector.scoring import explain
    add(rt, tp("email_engaged", "lead", ago(1)), order("ann", ago(5), 10, "1"),
        tp("order_fulfilled", "ann", ago(4), order_id="1"))
    run.run(rt, full=True)
    lead = explain.render(explanation(rt, "lead"), values(rt, "lead"))["cx_health"]
    assert values(rt, "lead")["cx_health"] == "green"
    assert lead == ("No CX score yet (no experiences recorded), so health rests on the churn risk alone: "
                    "low risk, green (red when high, yellow when medium, green when low).")
    ann = explain.render(explanation(rt, "ann"), values(rt, "ann"))["cx_health"]
    assert ann.startswith("CX score 100 and churn risk low: red when churn risk is high or CX is below 40")
    # the other way round (no retention probability, a CX score), worded from the values
    e = explanation(rt, "ann")
    words = explain.render(e, {"cx_score": 35, "cx_churn_risk": None, "cx_health": "red"})["cx_health"]
    assert words == ("No churn risk (no retention probability), so health rests on the CX score alone: 35, "
                     "red (red below 40, green at 70 or more, yellow between).")


def test_a_layer_weighted_zero_is_not_counted_and_said_so(database_url):
    from cx_connector.scoring import explain
    weights = {"needs_met": 0, "ease": 1, "enjoyment": 1}
    rt = build(make_config(database_url, scoring={"cx": {"weights": weights}}), clock=lambda: NOW)
    add(rt, order("ann", ago(5), 10, "1"), tp("order_fulfilled", "ann", ago(4), order_id="1"),
        order("bo", ago(5), 10, "2"), tp("order_fulfilled", "bo", ago(4), order_id="2"),
        tp("csat_rating", "bo", ago(3), rating=(5, 5)))
    run.run(rt, full=True)
    assert values(rt, "ann")["cx_score"] is None
    ann = explain.render(explanation(rt, "ann"), values(rt, "ann"))["cx_score"]
    assert ann.startswith("CX pyramid: needs met 100 (weight 0, not counted; 1 order fulfilled); ease: "
                          "no data, left out; enjoyment: no data, left out. Every layer with data has "
                          "weight 0 (scoring.cx.weights), so no CX score. Each experience"), ann
    bo = explain.render(explanation(rt, "bo"), values(rt, "bo"))["cx_score"]
    assert "needs met 100 (weight 0, not counted; 1 order fulfilled)" in bo
    assert "CX = 1.00 x 100 = 100." in bo
    rt.engine.dispose()


def test_advocacy_is_reached_by_a_positive_answer_only(rt):
    """A detractor has answered a survey, not recommended anyone: the NPS answer or review
    that is not positive leaves the customer at retention, and the explanation says why;
    the KPI's customers per stage follow."""
    from cx_connector.scoring import explain, kpis
    add(rt, order("det", ago(9), 10, "1"), tp("nps_response", "det", ago(5), rating=(3, 10)),
        order("pro", ago(9), 10, "2"), tp("nps_response", "pro", ago(5), rating=(9, 10)),
        tp("nps_response", "pas", ago(5), rating=(4, 5)),                # 8 of 10: passive
        tp("review_posted", "low", ago(5), rating=(2, 5)), tp("review_posted", "hi", ago(5), rating=(4, 5)),
        tp("review_posted", "plain", ago(5)))                             # no rating: as the source staged it
    run.run(rt, full=True)
    stage = {who: values(rt, who)["cx_journey_stage"] for who in ("det", "pro", "pas", "low", "hi", "plain")}
    assert stage == {"det": "retention", "pro": "advocacy", "pas": "retention", "low": "retention",
                     "hi": "advocacy", "plain": "advocacy"}
    assert explanation(rt, "det")["journey"] == {"stage": "retention", "held_back": True}
    assert explanation(rt, "pro")["journey"] == {"stage": "advocacy"}
    words = explain.render(explanation(rt, "det"), values(rt, "det"))["cx_journey_stage"]
    assert words == ("The furthest journey stage any touchpoint reached: retention. Not advocacy: an NPS "
                     "answer or a review reaches advocacy only when it is positive (a promoter answer, 9-10, "
                     "or a review rated at least 70% of its scale), and theirs was not.")
    per_stage = kpis.snapshot(rt, force=True)["kpis"]["customers_per_stage"]
    assert (per_stage["retention"], per_stage["advocacy"]) == (3, 3)


def test_an_nps_answer_on_another_scale_says_it_was_rescaled(rt):
    from cx_connector.scoring import explain
    add(rt, tp("nps_response", "five", ago(3), rating=(4, 5)),
        tp("nps_response", "ten", ago(3), rating=(8, 10)))
    run.run(rt, full=True)
    five = explain.render(explanation(rt, "five"), values(rt, "five"))["cx_nps_last"]
    assert values(rt, "five")["cx_nps_last"] == 8
    assert five.endswith("was 8. It was answered 4 of 5, rescaled to 0-10 and rounded."), five
    assert "rescaled" not in explain.render(explanation(rt, "ten"), values(rt, "ten"))["cx_nps_last"]
