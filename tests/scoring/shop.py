"""Building small, exact histories for scoring tests: touchpoints stored the way the
webhooks store them (``inbox.store``, identity resolution included)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from cx_connector import db, identity, inbox
from cx_connector.connector import Connector, CustomerRef, Normalised, Product, Rating, Touchpoint
from cx_connector.models import customers, outbox, score_snapshots, scores
from cx_connector.runtime import Runtime
from tests.conftest import NOW

_seq = itertools.count()


class Writable(Connector):
    """A platform scores are written back to (the built-in ones are still being written)."""

    name = "crm"
    writes_back = True


def ago(days: float = 0, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


def tp(kind: str, who: str, when: datetime, *, value: str | float | None = None,
       rating: tuple[float, float] | None = None, products: list[dict[str, Any]] | None = None,
       source: str = "crm", touchpoint_id: str | None = None, **attributes: Any) -> Touchpoint:
    rating_type = {"csat_rating": "csat", "nps_response": "nps", "ces_response": "ces",
                   "review_posted": "csat"}.get(kind)
    return Touchpoint(
        source=source, touchpoint_id=touchpoint_id or f"{who}:{kind}:{next(_seq)}", occurred_at=when,
        customer=CustomerRef(who, email=f"{who}@example.com"), kind=kind,
        value=Decimal(str(value)) if value is not None else None,
        currency="EUR" if value is not None else None,
        rating=Rating(rating_type, Decimal(str(rating[0])), Decimal(str(rating[1]))) if rating else None,
        products=tuple(Product(**p) for p in (products or [])), attributes=attributes)


def order(who: str, when: datetime, value: float | None, order_id: str, *categories: str,
          source: str = "crm") -> Touchpoint:
    return tp("order_placed", who, when, value=value, order_id=order_id, source=source,
              products=[{"id": f"p-{c}", "category": c} for c in categories])


def add(rt: Runtime, *tps: Touchpoint, now: datetime = NOW) -> None:
    by_source: dict[str, list[Touchpoint]] = {}
    for t in tps:
        by_source.setdefault(t.source, []).append(t)
    with db.write(rt.engine) as conn:
        for source, items in by_source.items():
            inbox.store(conn, source, Normalised(touchpoints=tuple(items)), delivery_id=None, now=now,
                        actor="test")


def cid(rt: Runtime, who: str, source: str = "crm") -> int:
    with db.read(rt.engine) as conn:
        found = identity.customer_for(conn, source, who)
    assert found is not None, who
    return found


def values(rt: Runtime, who: str) -> dict[str, Any]:
    with db.read(rt.engine) as conn:
        return dict(conn.execute(select(scores.c.score_values).where(
            scores.c.customer_id == cid(rt, who))).scalar_one())


def explanation(rt: Runtime, who: str) -> dict[str, Any]:
    """The stored explanation, with the context it names (as staff see it)."""
    from cx_connector.scoring import explain
    with db.read(rt.engine) as conn:
        return explain.stored(conn, dict(conn.execute(select(scores.c.explanation).where(
            scores.c.customer_id == cid(rt, who))).scalar_one()))


def snapshots(rt: Runtime, who: str) -> list[dict[str, Any]]:
    with db.read(rt.engine) as conn:
        return [dict(v) for v in conn.execute(select(score_snapshots.c.score_values).where(
            score_snapshots.c.customer_id == cid(rt, who)).order_by(score_snapshots.c.id)).scalars()]


def pending(rt: Runtime) -> list[dict[str, Any]]:
    with db.read(rt.engine) as conn:
        return [dict(r) for r in conn.execute(select(outbox).order_by(outbox.c.id)).mappings()]


def scored_at(rt: Runtime, who: str) -> datetime | None:
    with db.read(rt.engine) as conn:
        return conn.execute(select(customers.c.scored_at).where(customers.c.id == cid(rt, who))).scalar()
