"""Pain points: the CX points each experience costs add up to what customers miss, and
the drag of kinds and channels points at the unhappy ones."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from cx_connector import db
from cx_connector.scoring import painpoints, run
from tests.conftest import NOW
from tests.scoring.shop import add, ago, order, tp


def losses(rt) -> dict:
    with db.read(rt.engine) as conn:
        out = painpoints.losses(conn, rt.config.scoring)
    out["by_event"] = {e["event"]: e for e in out["experiences"]}
    return out


def test_one_layer_all_the_shortfall_goes_to_the_bad_experience(rt):
    # two orders of the same day: one fulfilled (+1), one cancelled (0, weighing 2):
    # needs met = 100 x 1 / 3 = 33.3, the only layer, so CX 33 and 66.7 points lost
    add(rt, order("ann", ago(10), 20, "1"), tp("order_fulfilled", "ann", ago(10), order_id="1"),
        order("ann", ago(10), 30, "2"), tp("order_cancelled", "ann", ago(10), order_id="2"))
    run.run(rt)
    lost = losses(rt)
    assert lost["customers"] == 1 and lost["mean_cx"] == 33
    cancelled = lost["by_event"]["order_cancelled"]
    assert cancelled["points"] == pytest.approx(100 - 100 / 3, abs=0.05)
    assert (cancelled["customers"], cancelled["count"], cancelled["mean_cx"]) == (1, 1, 33)
    assert (cancelled["kind"], cancelled["stage"], cancelled["layer"]) == ("order_cancelled", "purchase",
                                                                          "needs_met")
    assert sum(e["points"] for e in lost["experiences"]) == pytest.approx(cancelled["points"])


def test_layers_share_the_shortfall_by_their_renormalised_weights(rt):
    # needs met 33.3 (weight 0.4) and enjoyment 0 (a detractor; weight 0.3), no ease data:
    # CX = (0.4 x 33.3 + 0.3 x 0) / 0.7 = 19; cancelled costs 0.4/0.7 x 66.7, the detractor 0.3/0.7 x 100
    add(rt, order("bo", ago(10), 20, "1"), tp("order_fulfilled", "bo", ago(10), order_id="1"),
        order("bo", ago(10), 30, "2"), tp("order_cancelled", "bo", ago(10), order_id="2"),
        tp("nps_response", "bo", ago(10), rating=(3, 10)))
    run.run(rt)
    lost = losses(rt)
    assert lost["by_event"]["order_cancelled"]["points"] == pytest.approx(0.4 / 0.7 * 200 / 3, abs=0.05)
    assert lost["by_event"]["nps_detractor"]["points"] == pytest.approx(0.3 / 0.7 * 100, abs=0.05)
    assert lost["by_event"]["nps_detractor"]["stage"] == "advocacy"
    total = sum(e["points"] for e in lost["experiences"])
    assert total == pytest.approx(100 - (0.4 * 100 / 3) / 0.7, abs=0.05)  # 100 - CX before rounding


def test_within_a_layer_a_negative_counts_twice_a_neutral(rt):
    # ease: one ticket solved a bit late (0.5) and one reopen (0, weighing 2): shares 0.5 : 2
    t = ago(20)
    add(rt, tp("ticket_opened", "cy", t, ticket_id="1"),
        tp("ticket_solved", "cy", t + timedelta(hours=48), ticket_id="1"),
        tp("ticket_reopened", "cy", t + timedelta(hours=50), ticket_id="1"),
        tp("ticket_solved", "cy", t + timedelta(hours=60), ticket_id="1"))
    run.run(rt)
    e = losses(rt)["by_event"]
    late, reopened = e["resolved_ok"]["points"], e["ticket_reopened"]["points"]
    assert late > 0 and reopened == pytest.approx(4 * late, rel=0.01)


def test_no_cx_scores_no_losses(rt):
    add(rt, tp("email_engaged", "dee", ago(3)))
    run.run(rt)
    lost = losses(rt)
    assert lost["customers"] == 0 and lost["mean_cx"] is None
    assert all(e["points"] == 0 and e["customers"] == 0 for e in lost["experiences"])


def test_the_drag_shows_the_channel_where_unhappy_customers_are(rt):
    def rating(who: str, score: int, channel: str):
        return replace(tp("csat_rating", who, ago(5), rating=(score, 5)), channel=channel)

    touch = []
    for i in range(6):  # happy on the web, unhappy on the phone
        touch += [rating(f"web{i}", 5, "web"), rating(f"tel{i}", 1, "phone")]
    touch += [rating("chat0", 1, "chat")]  # one customer: too few to rank
    add(rt, *touch)
    run.run(rt)
    with db.read(rt.engine) as conn:
        lost = painpoints.losses(conn, rt.config.scoring)
        found = painpoints.contrasts(conn, since=NOW - timedelta(days=90), until=NOW,
                                     customers=lost["customers"], mean_cx=lost["mean_cx"])
    channels = {c["channel"]: c for c in found["channels"]}
    assert set(channels) == {"web", "phone"}
    phone = channels["phone"]
    assert (phone["stage"], phone["customers"], phone["mean_cx"]) == ("retention", 6, 0)
    assert phone["gap"] == pytest.approx(-lost["mean_cx"], abs=0.1)
    assert lost["mean_cx"] == pytest.approx(600 / 13, abs=0.01)  # 6 of 13 customers at 100
    assert phone["drag"] == pytest.approx(-600 / 13 * 6 / 13, abs=0.01)
    assert found["channels"][0]["channel"] == "phone" and channels["web"]["drag"] > 0
    assert {(k["kind"], k["channel"]) for k in found["kinds"]} == {("csat_rating", "web"),
                                                                  ("csat_rating", "phone")}


def test_the_kpi_snapshot_carries_the_pain_points(rt):
    from cx_connector.scoring import kpis

    add(rt, order("ann", ago(10), 20, "1"), tp("order_cancelled", "ann", ago(9), order_id="1"))
    run.run(rt)
    values = kpis.snapshot(rt, force=True)["kpis"]
    pain = values["pain_points"]
    assert pain["losses"]["customers"] == 1 and pain["since"] == NOW - timedelta(days=90)
    assert values["customers_per_health"] == {"green": 0, "yellow": 0, "red": 1, "none": 0}
    assert values["cx_histogram"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
