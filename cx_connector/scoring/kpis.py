"""Company KPIs, one snapshot per day (``kpi_snapshots``), for trends.

Windowed KPIs cover the ``scoring.kpi_window_days`` (default 90) days up to the
snapshot time, and are compared with the window before it:

* ``nps``: % promoters (9-10) - % detractors (0-6) over the NPS answers in the
  window (each answer counts), and ``nps_change``, in points, against the
  previous window;
* ``csat``: % of CSAT ratings in the window that are satisfied
  (``cx.rating_positive_at`` of the scale or more);
* ``retention_rate``: of the customers who purchased in the previous window, the %
  who purchased again in this one; ``churn_rate`` = 100 - that;
* ``revenue``: net value of the purchases placed in the window (cancelled and fully
  refunded orders left out, partial refunds deducted, as scoring counts purchases),
  and ``revenue_growth`` (%) against the previous window. Amounts are summed as
  they are: with more than one currency, ``currencies`` lists them and the sums
  mix them;
* ``tickets_per_customer``: tickets opened in the window per customer active in it
  (any touchpoint), a cost-of-service proxy, and ``median_resolution_hours`` of the
  tickets solved in it (first opened to last solved; tickets opened more than a
  window before are not looked for);
* ``checkout_conversion``: % of checkouts started in the window whose
  ``checkout_token`` reached an ``order_placed``.

From the latest scores (so they agree with what staff see): ``avg_cx_score``,
``customers_per_stage`` (``cx_journey_stage``), ``repeat_purchase_rate`` (% of
purchasers with purchases on two days or more) and ``cross_sell_rate`` (% of
customers with purchases who bought more than one category or product); for the
admin console's overview, ``customers_per_health``, ``cx_histogram`` (customers per
CX-score band 0-9, 10-19, ..., 90-100) and ``avg_clv_90d``; and ``pain_points``
(:mod:`cx_connector.scoring.painpoints`: the CX points each kind of experience
costs, and where in the journey CX is lower, over the window).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Connection, and_, case, func, select, true

from cx_connector import db
from cx_connector.models import customers, kpi_snapshots, population_models, scores, touchpoints
from cx_connector.runtime import Runtime
from cx_connector.scoring import painpoints
from cx_connector.scoring.cx_score import nps_points
from cx_connector.scoring.features import PURCHASE_KINDS
from cx_connector.scoring.settings import ScoringSettings
from cx_connector.touchpoint import STAGES

t = touchpoints.c
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: ``customers_per_health`` keys; ``none``: scored, but with no health
HEALTH = ("green", "yellow", "red", "none")


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _in(kinds: tuple[str, ...] | str, start: datetime, end: datetime) -> Any:
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    return and_(t.kind.in_(kinds), t.occurred_at > start, t.occurred_at <= end)


def _nps(conn: Connection, start: datetime, end: datetime) -> tuple[float | None, int]:
    rows = conn.execute(select(t.rating_score, t.rating_scale_max).where(
        _in("nps_response", start, end), t.rating_score.is_not(None), t.rating_scale_max > 0)).all()
    if not rows:
        return None, 0
    score = np.array([float(r[0]) for r in rows])
    scale = np.array([float(r[1]) for r in rows])
    points = nps_points(score, scale)
    n = len(points)
    return round(100.0 * ((points >= 9).sum() - (points <= 6).sum()) / n, 1), n


def _purchases(conn: Connection, start: datetime, end: datetime,
               customer_ids: Sequence[int] | None = None) -> list[tuple[int | None, datetime, float]]:
    """(customer, time, net value) of the purchases placed in the range, counted as scoring
    counts them: cancelled or fully refunded orders left out, partial refunds deducted.
    ``customer_ids``: only these customers' purchases (at most a few hundred ids)."""
    order_ref = t.source.concat(":").concat(t.attributes["order_id"].as_string())
    # deal references apart from order ones, as in scoring: order 7 and deal 7 are two purchases
    deal_ref = t.source.concat(":deal:").concat(t.attributes["deal_id"].as_string())
    whose = t.customer_id.in_(list(customer_ids)) if customer_ids is not None else true()
    cancelled: set[str] = set()
    refunds: dict[str, float] = {}
    for kind, ref, value in conn.execute(select(t.kind, order_ref, t.value).where(
            t.kind.in_(("order_cancelled", "refund_issued")), t.occurred_at > start, t.occurred_at <= end,
            whose)):
        if ref is None:
            continue
        if kind == "order_cancelled":
            cancelled.add(ref)
        elif value is not None:
            refunds[ref] = refunds.get(ref, 0.0) + abs(float(value))
    rows = conn.execute(select(t.customer_id, t.occurred_at, t.value,
                               case((t.kind == "deal_won", deal_ref), else_=order_ref))
                        .where(_in(PURCHASE_KINDS, start, end), whose)).all()
    seen: set[str] = set()
    out = []
    for cid, when, value, ref in rows:
        amount = float(value) if value is not None else 0.0
        if ref is not None:
            if ref in cancelled or ref in seen:
                continue
            seen.add(ref)
            refunded = refunds.get(ref, 0.0)
            if amount > 0 and amount - refunded <= 0.005:
                continue
            amount -= refunded
        out.append((cid, when, amount))
    return out


def net_revenue(conn: Connection, customer_ids: Sequence[int], end: datetime) -> dict[int, float]:
    """Each customer's revenue up to ``end``: every purchase, net of cancellations and
    refunds, as :func:`_purchases` counts it (alerts' ``lifetime_revenue``)."""
    out = {int(c): 0.0 for c in customer_ids}
    ids = sorted(out)
    for i in range(0, len(ids), 500):
        for cid, _, amount in _purchases(conn, EPOCH, end, ids[i:i + 500]):
            if cid is not None:
                out[cid] += amount
    return {c: round(v, 2) for c, v in out.items()}


def _resolution_hours(conn: Connection, start: datetime, end: datetime, lookback: datetime) -> list[float]:
    ticket = t.source.concat(":").concat(t.attributes["ticket_id"].as_string())
    rows = conn.execute(select(ticket, t.kind, t.occurred_at).where(
        t.kind.in_(("ticket_opened", "ticket_solved")), t.occurred_at > lookback, t.occurred_at <= end,
        t.attributes["ticket_id"].as_string().is_not(None))).all()
    opened: dict[str, datetime] = {}
    solved: dict[str, datetime] = {}
    for key, kind, when in rows:
        if kind == "ticket_opened":
            opened[key] = min(when, opened.get(key, when))
        else:
            solved[key] = max(when, solved.get(key, when))
    return [(solved[k] - opened[k]).total_seconds() / 3600.0 for k in solved
            if k in opened and start < solved[k] <= end and solved[k] >= opened[k]]


def compute(conn: Connection, as_of: datetime, s: ScoringSettings) -> dict[str, Any]:
    """Every KPI as of ``as_of`` (see the module docstring)."""
    w = timedelta(days=s.kpi_window_days)
    start, prev = as_of - w, as_of - 2 * w
    out: dict[str, Any] = {"as_of": as_of, "window_days": s.kpi_window_days}

    nps, n_nps = _nps(conn, start, as_of)
    nps_prev, _ = _nps(conn, prev, start)
    out.update(nps=nps, nps_answers=n_nps, nps_previous=nps_prev,
               nps_change=round(nps - nps_prev, 1) if nps is not None and nps_prev is not None else None)

    rows = conn.execute(select(t.rating_score, t.rating_scale_max).where(
        _in("csat_rating", start, as_of), t.rating_score.is_not(None), t.rating_scale_max > 0)).all()
    satisfied = sum(1 for score, scale in rows if float(score) / float(scale) >= s.cx.rating_positive_at)
    out.update(csat=_pct(satisfied, len(rows)), csat_ratings=len(rows))

    bought = _purchases(conn, prev, as_of)
    before = {cid for cid, when, _ in bought if when <= start and cid is not None}
    now_ = {cid for cid, when, _ in bought if when > start and cid is not None}
    retention_rate = _pct(len(before & now_), len(before))
    out.update(retention_rate=retention_rate,
               churn_rate=round(100.0 - retention_rate, 1) if retention_rate is not None else None,
               retention_base=len(before))
    revenue = sum(v for _, when, v in bought if when > start)
    revenue_prev = sum(v for _, when, v in bought if when <= start)
    currencies = sorted(c for c in conn.execute(select(t.currency).where(
        _in((*PURCHASE_KINDS, "refund_issued"), prev, as_of), t.currency.is_not(None)).distinct()).scalars())
    out.update(revenue=round(revenue, 2), revenue_previous=round(revenue_prev, 2),
               revenue_growth=(round(100.0 * (revenue - revenue_prev) / revenue_prev, 1)
                               if revenue_prev > 0 else None),
               currencies=currencies)

    tickets = conn.execute(select(func.count()).where(_in("ticket_opened", start, as_of))).scalar_one()
    active = conn.execute(select(func.count(func.distinct(t.customer_id))).where(
        t.occurred_at > start, t.occurred_at <= as_of, t.customer_id.is_not(None))).scalar_one()
    hours = _resolution_hours(conn, start, as_of, prev)
    out.update(tickets=tickets, active_customers=active,
               tickets_per_customer=round(tickets / active, 3) if active else None,
               median_resolution_hours=round(float(np.median(hours)), 1) if hours else None,
               resolved_tickets=len(hours))

    token = t.attributes["checkout_token"].as_string()
    started = set(conn.execute(select(token).where(_in("checkout_started", start, as_of),
                                                   token.is_not(None))).scalars())
    ordered = set(conn.execute(select(token).where(_in("order_placed", start, as_of),
                                                   token.is_not(None))).scalars())
    out.update(checkouts=len(started), checkout_conversion=_pct(len(started & ordered), len(started)))
    out.update(from_scores(conn))
    out["pain_points"] = painpoints.compute(conn, since=start, until=as_of, s=s)
    return out


def from_scores(conn: Connection) -> dict[str, Any]:
    """The KPIs read from the latest scores of every customer that is not merged away."""
    v, e = scores.c.score_values, scores.c.explanation
    cx = v["cx_score"].as_float()
    days = e[("retention", "purchase_days")].as_integer()
    bought = e[("cross_sell", "bought")].as_integer()
    alive = scores.join(customers, and_(customers.c.id == scores.c.customer_id,
                                        customers.c.merged_into_id.is_(None)))
    row = conn.execute(select(
        func.count(), func.avg(cx), func.sum(case((days >= 1, 1), else_=0)),
        func.sum(case((days >= 2, 1), else_=0)), func.sum(case((bought >= 1, 1), else_=0)),
        func.sum(case((bought >= 2, 1), else_=0))).select_from(alive)).one()
    n, avg_cx, buyers, repeaters, with_items, multi = row
    stage = v["cx_journey_stage"].as_string()
    stages = dict(conn.execute(select(stage, func.count()).select_from(alive).group_by(stage)).all())
    customers_total = conn.execute(select(func.count()).where(customers.c.merged_into_id.is_(None))
                                   ).scalar_one()
    health, value = v["cx_health"].as_string(), v["cx_clv_90d"].as_float()
    per_health: dict[str, int] = {h: 0 for h in HEALTH}
    histogram = [0] * 10
    value_sum, valued = 0.0, 0
    for h, score, count, total, with_value in conn.execute(
            select(health, cx, func.count(), func.sum(value), func.count(value)).select_from(alive)
            .group_by(health, cx)):
        per_health[h if h in per_health else "none"] += count
        if score is not None:
            histogram[min(int(float(score) // 10), 9)] += count
        value_sum += float(total or 0)
        valued += with_value
    avg_value = value_sum / valued if valued else None
    return {
        "customers": customers_total,
        "scored_customers": n,
        "avg_cx_score": round(float(avg_cx), 1) if avg_cx is not None else None,
        "repeat_purchase_rate": _pct(repeaters or 0, buyers or 0),
        "cross_sell_rate": _pct(multi or 0, with_items or 0),
        "customers_per_stage": {st: int(stages.get(st, 0)) for st in STAGES},
        "customers_per_health": per_health,
        "cx_histogram": histogram,
        "avg_clv_90d": round(float(avg_value), 2) if avg_value is not None else None,
    }


# --- snapshots ------------------------------------------------------------------------------


def snapshot(rt: Runtime, *, force: bool = False) -> dict[str, Any]:
    """Store today's KPI snapshot (the ``kpis`` job). Returns what happened.

    A day's snapshot is (re)computed when it is missing, when ``force``, or when a
    full scoring pass finished after it was computed (so it reflects fresh scores).
    """
    now = rt.now()
    day = now.astimezone(UTC).date()
    with db.read(rt.engine) as conn:
        done = conn.execute(select(kpi_snapshots.c.computed_at).where(kpi_snapshots.c.day == day)).scalar()
        fitted = conn.execute(select(func.max(population_models.c.fitted_at))).scalar()
        if fitted is not None and fitted.tzinfo is None:  # SQLite aggregates skip the type decorator
            fitted = datetime.fromisoformat(str(fitted)).replace(tzinfo=UTC)
        if done is not None and not force and (fitted is None or fitted <= done):
            return {"day": day.isoformat(), "computed": False, "reason": "today's snapshot is up to date"}
        values = compute(conn, now, rt.config.scoring)
    with db.write(rt.engine) as conn:
        conn.execute(db.upsert(conn, kpi_snapshots, ["day"], ["computed_at", "kpi_values"]).values(
            day=day, computed_at=now, kpi_values=values))
    return {"day": day.isoformat(), "computed": True, "kpis": values}


#: the lease of KPI snapshots (job and CLI)
LEASE = "job:kpis"
#: how often the job checks whether today's snapshot is due
CHECK_EVERY = timedelta(hours=1)


def job(rt: Runtime) -> dict[str, Any]:
    """The scheduled ``kpis`` job: today's snapshot, once a day and after each full pass."""
    return snapshot(rt)


def history(conn: Connection, days: int) -> list[dict[str, Any]]:
    """The latest ``days`` snapshots, newest first."""
    rows = conn.execute(select(kpi_snapshots.c.day, kpi_snapshots.c.computed_at, kpi_snapshots.c.kpi_values)
                        .order_by(kpi_snapshots.c.day.desc()).limit(days)).all()
    return [{"day": d.isoformat() if isinstance(d, date) else d, "computed_at": at, **values}
            for d, at, values in rows]
