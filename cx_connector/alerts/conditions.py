"""What each alert condition matches right now: ``{customer_id: details}``.

A condition is a *state* of a customer, re-read from the database on every run, so
that "fires once until it clears" is a comparison of two sets (see
:mod:`cx_connector.alerts.decide`):

* ``turned_red``: the latest ``cx_health`` is ``red``; clears when it is not.
* ``detractor_nps``: the customer's latest NPS answer within ``within`` is at most
  ``detractor_max`` on the 0-10 scale (answers on another scale, e.g. a HubSpot
  survey property with ``scale_max: 5``, are rescaled as scoring rescales them);
  clears when a later answer is not a detractor, or when the answer is older than
  ``within``.
* ``high_value_at_risk``: ``cx_retention_probability`` is below ``retention_below``
  and the value measure is at least ``value_at_least``: a score field
  (``cx_clv_90d``, ``cx_expected_purchases_90d``) or ``lifetime_revenue`` (every
  purchase so far, net of cancellations and refunds, as the KPIs count revenue);
  clears when either is no longer true.
* ``ticket_reopened``: one of the customer's tickets (``attributes.ticket_id`` within
  its source) has ``times`` or more ``ticket_reopened`` touchpoints, the latest within
  ``within``; clears when no ticket does.

Only customers that are not merged into another count (a merge moves touchpoints
and scores to the survivor). ``details`` carry numbers and platform ids, never
personal data: they are stored and audit-logged.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, and_, select

from cx_connector.alerts.settings import Rule
from cx_connector.models import customers, scores, touchpoints
from cx_connector.scoring.cx_score import nps_points
from cx_connector.scoring.kpis import net_revenue

Matches = dict[int, dict[str, Any]]

t = touchpoints.c
v = scores.c.score_values
#: score fields copied into every score-based alert's details
SCORE_DETAILS = ("cx_health", "cx_score", "cx_churn_risk", "cx_retention_probability", "cx_clv_90d")

_alive_scores = scores.join(
    customers, and_(customers.c.id == scores.c.customer_id, customers.c.merged_into_id.is_(None))
)
_alive_touchpoints = touchpoints.join(
    customers, and_(customers.c.id == t.customer_id, customers.c.merged_into_id.is_(None))
)


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _score_details(values: dict[str, Any], scored_at: datetime) -> dict[str, Any]:
    return {**{k: (values or {}).get(k) for k in SCORE_DETAILS}, "scored_at": _iso(scored_at)}


def turned_red(conn: Connection, rule: Rule, now: datetime) -> Matches:
    rows = conn.execute(
        select(scores.c.customer_id, scores.c.score_values, scores.c.scored_at)
        .select_from(_alive_scores)
        .where(v["cx_health"].as_string() == "red")
    )
    return {cid: _score_details(values, at) for cid, values, at in rows}


def detractor_nps(conn: Connection, rule: Rule, now: datetime) -> Matches:
    rows = conn.execute(
        select(t.customer_id, t.source, t.touchpoint_id, t.occurred_at, t.rating_score, t.rating_scale_max)
        .select_from(_alive_touchpoints)
        .where(
            t.kind == "nps_response",
            t.occurred_at > now - rule.within,
            t.rating_score.is_not(None),
            t.rating_scale_max > 0,
        )
        .order_by(t.customer_id, t.occurred_at, t.id)
    ).all()
    latest = {r.customer_id: r for r in rows}  # ordered by time: the last one wins
    if not latest:
        return {}
    answers = list(latest.values())
    points = nps_points(
        np.array([float(r.rating_score) for r in answers]),
        np.array([float(r.rating_scale_max) for r in answers]),
    )
    out: Matches = {}
    for r, p in zip(answers, points.tolist(), strict=True):
        if p <= rule.detractor_max:
            out[r.customer_id] = {
                "source": r.source,
                "touchpoint_id": r.touchpoint_id,
                "answered_at": _iso(r.occurred_at),
                "score": float(r.rating_score),
                "scale_max": float(r.rating_scale_max),
                "nps": int(p),
                "detractor_max": rule.detractor_max,
            }
    return out


def high_value_at_risk(conn: Connection, rule: Rule, now: datetime) -> Matches:
    retention = v["cx_retention_probability"].as_float()
    q = (
        select(scores.c.customer_id, scores.c.score_values, scores.c.scored_at)
        .select_from(_alive_scores)
        .where(retention < rule.retention_below)
    )
    if rule.value != "lifetime_revenue":
        q = q.where(v[rule.value].as_float() >= rule.value_at_least)
    rows = conn.execute(q).all()
    if rule.value == "lifetime_revenue":
        revenue = net_revenue(conn, [r.customer_id for r in rows], now)
        worth = {cid: value for cid, value in revenue.items() if value >= rule.value_at_least}
    else:
        worth = {r.customer_id: (r.score_values or {}).get(rule.value) for r in rows}
    return {
        r.customer_id: {
            **_score_details(r.score_values, r.scored_at),
            "value_measure": rule.value,
            "value": worth[r.customer_id],
            "value_at_least": rule.value_at_least,
            "retention_below": rule.retention_below,
        }
        for r in rows
        if r.customer_id in worth
    }


def ticket_reopened(conn: Connection, rule: Rule, now: datetime) -> Matches:
    # aggregated here rather than with GROUP BY: PostgreSQL does not see two renderings
    # of a JSON key extraction (each with its own bound key) as the same expression
    ticket = t.attributes["ticket_id"].as_string()
    reopens: dict[tuple[int, str, str], list[datetime]] = {}
    for cid, source, tid, when in conn.execute(
        select(t.customer_id, t.source, ticket, t.occurred_at)
        .select_from(_alive_touchpoints)
        .where(t.kind == "ticket_reopened", ticket.is_not(None))
    ):
        reopens.setdefault((cid, source, tid), []).append(when)
    since = now - rule.within
    tickets: dict[int, list[dict[str, Any]]] = {}
    for (cid, source, tid), times in reopens.items():
        if len(times) >= rule.times and max(times) > since:
            tickets.setdefault(cid, []).append(
                {
                    "source": source,
                    "ticket_id": tid,
                    "reopens": len(times),
                    "last_reopened_at": _iso(max(times)),
                }
            )
    out: Matches = {}
    for cid, items in tickets.items():
        items.sort(key=lambda i: i["last_reopened_at"], reverse=True)
        out[cid] = {**items[0], "times": rule.times, "tickets": items[:5], "tickets_matching": len(items)}
    return out


EVALUATORS: dict[str, Callable[[Connection, Rule, datetime], Matches]] = {
    "turned_red": turned_red,
    "detractor_nps": detractor_nps,
    "high_value_at_risk": high_value_at_risk,
    "ticket_reopened": ticket_reopened,
}


def matches(conn: Connection, rule: Rule, now: datetime) -> Matches:
    """The customers matching ``rule`` now, with the details of why."""
    return EVALUATORS[rule.condition](conn, rule, now)
