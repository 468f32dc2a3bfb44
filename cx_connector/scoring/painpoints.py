"""Pain points: which experiences, touchpoint kinds and channels pull CX scores down, per
journey stage. Computed with each KPI snapshot (:mod:`cx_connector.scoring.kpis`) and
shown by the admin console's pain-point page.

Two measures, each one SQL aggregate whatever the number of customers:

**CX points lost** (:func:`losses`): additive, from the stored explanations. A
customer's CX score is the weighted mean of their pyramid layers' scores,
``CX = sum_l share_l x score_l`` (``share_l``: the layer's weight over the weights of
the layers they have data in), so the points they miss, ``100 - CX``, split exactly
into ``share_l x (100 - score_l)`` per layer. Within a layer the shortfall comes only
from neutral and negative experiences; it is split between them in proportion to
``count x (1 - outcome) x negative_weight``. (The explanation keeps each kind's count,
not each experience's age, so this split ignores how old each one is; each layer's
total is exact.) Summed over customers and divided by the number of customers with a
CX score, an experience's figure is how many points of the *average* CX score it
costs; the figures add up to ``100 - average CX``. Each experience comes from one
touchpoint kind (a reopen from ``ticket_reopened``, a detractor answer from
``nps_response``), and so belongs to that kind's journey stage.

**Where CX is lower** (:func:`contrasts`): correlational, for every touchpoint kind and
channel. Over the touchpoints of the KPI window: the customers who had a touchpoint of
that kind (or on that channel) at that stage, their mean CX score against the mean of
all customers with one, and the *drag*: that gap times their share of those customers,
the points of the average CX score it accounts for. A negative drag is where the
journey disconnects; it says where unhappy customers are, not why (customers with
problems open more tickets).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, text

from cx_connector.models import scores, touchpoints
from cx_connector.scoring.cx_score import EVENTS
from cx_connector.scoring.settings import LAYERS, ScoringSettings
from cx_connector.touchpoint import KINDS

#: the touchpoint kind each CX experience comes from (see cx_score.events)
EVENT_KIND: dict[str, str] = {
    "order_cancelled": "order_cancelled", "refund_issued": "refund_issued",
    "ticket_overdue": "ticket_opened", "still_waiting": "ticket_opened",
    "resolved_ok": "ticket_solved", "resolved_slow": "ticket_solved",
    "ticket_reopened": "ticket_reopened", "many_contacts": "ticket_commented",
    "ces_neutral": "ces_response", "ces_negative": "ces_response",
    "csat_neutral": "csat_rating", "csat_negative": "csat_rating",
    "nps_passive": "nps_response", "nps_detractor": "nps_response",
    "review_neutral": "review_posted", "review_negative": "review_posted",
}
#: the experiences that cost points: (event, layer, outcome), outcome below 1
COSTLY: tuple[tuple[str, str, float], ...] = tuple(e for e in EVENTS if e[2] < 1.0)
#: a kind or channel reached by fewer customers than this is not ranked (too few to say)
MIN_CUSTOMERS = 5


def _path(dialect: str, column: str, *keys: str) -> str:
    if dialect == "sqlite":
        return f"json_extract({column}, '$.{'.'.join(keys)}')"
    return f"({column} #>> '{{{','.join(keys)}}}')::float8"


def _cost(outcome: float, s: ScoringSettings) -> float:
    """How much one experience of this outcome weighs in its layer's shortfall."""
    return (1.0 - outcome) * (s.cx.negative_weight if outcome == 0.0 else 1.0)


def loss_sql(dialect: str, s: ScoringSettings) -> str:
    """The one aggregate of :func:`losses`. Each explanation is read once (its small ``cx``
    part is taken out first and materialised), every figure then comes from that part."""
    cx_part = "json_extract(explanation, '$.cx')" if dialect == "sqlite" else "(explanation -> 'cx')"
    score = ("json_extract(score_values, '$.cx_score')" if dialect == "sqlite"
             else "(score_values ->> 'cx_score')::float8")
    w = s.cx.weights
    cols = ["score"] + [f"{_path(dialect, 'cx', layer, 'score')} AS s_{layer}" for layer in LAYERS]
    cols += [f"coalesce({_path(dialect, 'cx', layer, 'events', event)}, 0) AS c_{event}"
             for event, layer, _ in COSTLY]
    present = " + ".join(f"(CASE WHEN s_{layer} IS NULL THEN 0 ELSE {float(w[layer])!r} END)"
                         for layer in LAYERS)
    denominators = []
    for layer in LAYERS:
        terms = [f"c_{e} * {_cost(o, s)!r}" for e, lay, o in COSTLY if lay == layer]
        denominators.append(f"({' + '.join(terms) if terms else '0'}) AS d_{layer}")
    sums = ["count(*) AS customers", "avg(score) AS mean_cx"]
    for event, layer, outcome in COSTLY:
        share = (f"(100.0 - s_{layer}) * {float(w[layer])!r} / wsum * c_{event} * {_cost(outcome, s)!r} "
                 f"/ d_{layer}")
        sums += [f"sum(CASE WHEN c_{event} > 0 AND d_{layer} > 0 AND wsum > 0 THEN {share} ELSE 0 END) "
                 f"AS lost_{event}",
                 f"sum(CASE WHEN c_{event} > 0 THEN 1 ELSE 0 END) AS n_{event}",
                 f"sum(c_{event}) AS e_{event}",
                 f"avg(CASE WHEN c_{event} > 0 THEN score END) AS cx_{event}"]
    return (f"WITH parts AS MATERIALIZED (SELECT {cx_part} AS cx, {score} AS score FROM scores), "
            f"counts AS MATERIALIZED (SELECT {', '.join(cols)} FROM parts "
            f"WHERE cx IS NOT NULL AND score IS NOT NULL), "
            f"weighed AS (SELECT *, ({present}) AS wsum, {', '.join(denominators)} FROM counts) "
            f"SELECT {', '.join(sums)} FROM weighed")


def losses(conn: Connection, s: ScoringSettings) -> dict[str, Any]:
    """``{"customers", "mean_cx", "experiences": [...]}``, the costliest experience first.

    Each experience: ``event``, ``layer``, ``kind`` and ``stage`` (of the touchpoint it
    comes from), ``customers`` who had it, ``count`` (how many in all), ``points`` (of the
    average CX score it costs) and ``mean_cx`` (of the customers who had it).
    """
    if conn.dialect.name == "postgresql":
        # a JIT compile of this wide expression takes seconds; running it takes less
        conn.execute(text("SET LOCAL jit = off"))
    row = conn.execute(text(loss_sql(conn.dialect.name, s))).mappings().one()
    n = int(row["customers"] or 0)
    out = []
    for event, layer, _ in COSTLY:
        kind = EVENT_KIND[event]
        lost = float(row[f"lost_{event}"] or 0.0)
        mean = row[f"cx_{event}"]
        out.append({"event": event, "layer": layer, "kind": kind, "stage": KINDS[kind][0],
                    "customers": int(row[f"n_{event}"] or 0), "count": float(row[f"e_{event}"] or 0),
                    "points": round(lost / n, 3) if n else 0.0,
                    "mean_cx": round(float(mean), 1) if mean is not None else None})
    out.sort(key=lambda r: -r["points"])
    mean_cx = row["mean_cx"]
    return {"customers": n, "mean_cx": round(float(mean_cx), 2) if mean_cx is not None else None,
            "experiences": out}


def contrasts(conn: Connection, *, since: datetime, until: datetime, customers: int,
              mean_cx: float | None) -> dict[str, list[dict[str, Any]]]:
    """``{"kinds": [...], "channels": [...]}``, each ranked by drag, most negative first.

    Two queries over the touchpoints in ``(since, until]`` (the ``occurred_at`` index).
    Each row: ``stage``, ``kind`` (kinds only), ``channel``, ``customers``, ``mean_cx``,
    ``gap`` (against ``mean_cx`` of everyone) and ``drag``.
    """
    if not customers or mean_cx is None:
        return {"kinds": [], "channels": []}
    t = touchpoints.c
    cx = scores.c.score_values["cx_score"].as_float()
    out: dict[str, list[dict[str, Any]]] = {}
    for name, keys in (("kinds", (t.stage, t.kind, t.channel)), ("channels", (t.stage, t.channel))):
        seen = (select(t.customer_id, *keys)
                .where(t.occurred_at > since, t.occurred_at <= until, t.customer_id.is_not(None))
                .distinct().subquery())
        group = [seen.c[k.name] for k in keys]
        rows = conn.execute(
            select(*group, func.count(), func.avg(cx))
            .select_from(seen.join(scores, scores.c.customer_id == seen.c.customer_id))
            .where(cx.is_not(None)).group_by(*group)).all()
        items = []
        for r in rows:
            n, avg = int(r[-2]), float(r[-1])
            if n < MIN_CUSTOMERS:
                continue
            gap = avg - mean_cx
            item = {"stage": r[0], "channel": r[-3], "customers": n, "mean_cx": round(avg, 1),
                    "gap": round(gap, 1), "drag": round(gap * n / customers, 3)}
            if name == "kinds":
                item["kind"] = r[1]
            items.append(item)
        items.sort(key=lambda c: (c["drag"], c["stage"], c.get("kind") or "", c["channel"]))
        out[name] = items
    return out


def compute(conn: Connection, *, since: datetime, until: datetime, s: ScoringSettings) -> dict[str, Any]:
    """Both measures (see the module docstring), as stored in the KPI snapshot."""
    lost = losses(conn, s)
    found = contrasts(conn, since=since, until=until, customers=lost["customers"], mean_cx=lost["mean_cx"])
    return {"losses": lost, "kinds": found["kinds"], "channels": found["channels"],
            "since": since, "min_customers": MIN_CUSTOMERS}
