"""Abandoned checkouts: a checkout never completed becomes a ``checkout_abandoned`` touchpoint.

No platform sends an "abandoned" event (Shopify: abandonment is a state, the delay is
the merchant's choice), so this job decides it from stored facts, for every source
that emits ``checkout_started`` touchpoints with ``attributes.checkout_token``:

* a ``checkout_started`` older than ``checkouts.abandon_after`` (and younger than
  ``checkouts.lookback``) with no ``order_placed`` of the same source carrying the
  same ``checkout_token`` gets ``checkout:<token>:abandoned``, dated
  ``started + abandon_after`` (not the time the job ran), for the same customer,
  with the checkout's channel, value, currency and products;
* an abandoned touchpoint whose order arrived after all (a late or retried
  ``orders/create``) is deleted again.

So the result depends only on which facts are stored, never on the order they
arrived in or on when the job ran: after the next run, shuffled deliveries give the
same touchpoints as in-order ones. Scheduled with scoring's interval
(``schedule.score_every``), job id ``checkouts``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, select

from cx_connector import db, identity
from cx_connector.models import touchpoints
from cx_connector.runtime import Runtime
from cx_connector.touchpoint import KINDS

_CHUNK = 400


def _token_column() -> Any:
    return touchpoints.c.attributes["checkout_token"].as_string()


def _ordered_tokens(conn: Connection, source: str, tokens: list[str]) -> set[str]:
    token = _token_column()
    found: set[str] = set()
    for i in range(0, len(tokens), _CHUNK):
        found |= set(conn.execute(select(token).distinct().where(
            touchpoints.c.source == source, touchpoints.c.kind == "order_placed",
            token.in_(tokens[i:i + _CHUNK]))).scalars())
    return found


def detect(conn: Connection, *, now: datetime, abandon_after: timedelta,
           lookback: timedelta) -> dict[str, int]:
    """Add and retract ``checkout_abandoned`` touchpoints; returns how many of each."""
    token = _token_column()
    since = now - lookback
    started = conn.execute(select(
        touchpoints.c.source, touchpoints.c.customer_id, touchpoints.c.customer_source_id,
        touchpoints.c.occurred_at, touchpoints.c.channel, touchpoints.c.value,
        touchpoints.c.currency, touchpoints.c.products, touchpoints.c.attributes,
        token.label("token"),
    ).where(touchpoints.c.kind == "checkout_started", touchpoints.c.occurred_at >= since,
            touchpoints.c.occurred_at <= now - abandon_after, token.is_not(None))).mappings().all()
    abandoned = conn.execute(select(
        touchpoints.c.id, touchpoints.c.source, touchpoints.c.touchpoint_id,
        touchpoints.c.customer_id, token.label("token"),
    ).where(touchpoints.c.kind == "checkout_abandoned",
            touchpoints.c.occurred_at >= since)).mappings().all()

    by_source: dict[str, set[str]] = defaultdict(set)
    for row in [*started, *abandoned]:
        if row["token"]:
            by_source[row["source"]].add(row["token"])
    ordered = {source: _ordered_tokens(conn, source, sorted(tokens))
               for source, tokens in by_source.items()}
    existing = {(r["source"], r["touchpoint_id"]) for r in abandoned}

    retracted = [r for r in abandoned if r["token"] in ordered.get(r["source"], set())]
    for r in retracted:
        conn.execute(delete(touchpoints).where(touchpoints.c.id == r["id"]))

    rows = []
    for r in started:
        tid = f"checkout:{r['token']}:abandoned"
        if r["token"] in ordered.get(r["source"], set()) or (r["source"], tid) in existing:
            continue
        existing.add((r["source"], tid))
        attrs = {k: v for k, v in (r["attributes"] or {}).items() if k in ("checkout_token", "via")}
        attrs["abandoned_after_seconds"] = int(abandon_after.total_seconds())
        rows.append({
            "source": r["source"], "touchpoint_id": tid, "customer_id": r["customer_id"],
            "customer_source_id": r["customer_source_id"],
            "occurred_at": r["occurred_at"] + abandon_after, "kind": "checkout_abandoned",
            "stage": KINDS["checkout_abandoned"][0], "channel": r["channel"], "value": r["value"],
            "currency": r["currency"], "rating_type": None, "rating_score": None,
            "rating_scale_max": None, "products": r["products"] or [], "attributes": attrs,
            "delivery_id": None, "created_at": now,
        })
    added = 0
    if rows:
        added = len(conn.execute(db.insert_ignore(conn, touchpoints, ["source", "touchpoint_id"])
                                 .returning(touchpoints.c.id), rows).scalars().all())
    identity.mark_changed(conn, [r["customer_id"] for r in [*rows, *retracted]
                                 if r["customer_id"] is not None], now)
    return {"checked": len(started), "abandoned": added, "retracted": len(retracted)}


def run(rt: Runtime) -> dict[str, Any]:
    """The scheduler job."""
    settings = rt.config.checkouts
    with db.write(rt.engine) as conn:
        return detect(conn, now=rt.now(), abandon_after=settings.abandon_after,
                      lookback=settings.lookback)
