"""A small shop with history, for the admin console's tests: customers on HubSpot,
Zendesk and Shopify (linked by email), orders, tickets, ratings on several channels,
scored by the real scoring code, with a week of KPI snapshots, a failed delivery and
score writes pending, retrying and dead.

Everything goes through the real paths (``inbox.store`` with identity resolution, the
scoring run, the KPI job, the outbox), at fixed times, so the figures are the same on
every run and on both databases.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update

from cx_connector import db, inbox, scheduler
from cx_connector.connector import CustomerRef, Normalised, Product, Rating, Touchpoint
from cx_connector.models import outbox
from cx_connector.runtime import Runtime
from cx_connector.scoring import kpis
from cx_connector.scoring import run as scoring
from tests.conftest import NOW

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Donald", "Frances", "John",
         "Radia", "Dennis", "Shafi", "Tim", "Hedy", "Claude", "Katherine", "Linus", "Sophie", "Niklaus"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton", "Knuth", "Allen",
        "Backus", "Perlman", "Ritchie", "Goldwasser", "Berners-Lee", "Lamarr", "Shannon", "Johnson",
        "Torvalds", "Wilson", "Wirth"]
CATEGORIES = ["coffee", "tea", "cups", "grinders", "filters"]
PLATFORMS = ("shopify", "zendesk", "hubspot")


@dataclass(frozen=True)
class Shop:
    customers: int
    #: delivery id of the failed webhook
    failed_delivery: int
    #: outbox ids: a dead write and a retrying one
    dead_write: int
    retrying_write: int


def _tp(source: str, who: str, email: str, name: str, kind: str, when: datetime, seq: int, *,
        channel: str = "web", value: float | None = None, rating: tuple[str, float, float] | None = None,
        products: tuple[Product, ...] = (), **attributes: Any) -> Touchpoint:
    return Touchpoint(
        source=source, touchpoint_id=f"{who}:{kind}:{seq}", occurred_at=when,
        customer=CustomerRef(who, email=email, name=name), kind=kind, channel=channel,
        value=Decimal(str(value)) if value is not None else None,
        currency="EUR" if value is not None else None,
        rating=Rating(rating[0], Decimal(str(rating[1])), Decimal(str(rating[2]))) if rating else None,
        products=products, attributes=attributes)


def history(n: int = 40, seed: int = 7) -> list[Touchpoint]:
    """Touchpoints of ``n`` customers over the year before NOW (deterministic)."""
    rng = random.Random(seed)
    out: list[Touchpoint] = []
    seq = 0
    for i in range(n):
        name = f"{FIRST[i % len(FIRST)]} {LAST[(i * 7) % len(LAST)]}"
        email = f"{name.split()[0].lower()}.{i}@example.com"
        platform = PLATFORMS[i % 3]
        who = str(7_000_000_000 + i)  # a numeric record id, as every platform has
        happy = rng.random() < 0.55

        def add(kind: str, days_ago: float, source: str = platform, **kw: Any) -> None:
            nonlocal seq
            seq += 1
            out.append(_tp(source, who if source == platform else str(8_000_000_000 + i), email, name,
                           kind, NOW - timedelta(days=days_ago), seq, **kw))

        start = rng.uniform(60, 360)
        add("contact_created", start)
        if i % 4 == 0:  # also known to HubSpot or Zendesk: one customer, two platforms
            add("contact_created", start - 1, source="hubspot" if platform != "hubspot" else "zendesk")
        orders = rng.randint(0, 4) if happy else rng.randint(0, 2)
        for k in range(orders):
            day = start - rng.uniform(1, start - 5)
            cats = rng.sample(CATEGORIES, rng.randint(1, 2))
            order_id = f"{i}-{k}"
            add("order_placed", day, value=round(rng.uniform(15, 120), 2), order_id=order_id,
                products=tuple(Product(id=f"p-{c}", category=c, quantity=1) for c in cats))
            if happy or rng.random() < 0.6:
                add("order_fulfilled", day - 1, order_id=order_id)
            else:
                add("order_cancelled", day - 0.5, order_id=order_id)
        for k in range(rng.randint(0, 3) if not happy else rng.randint(0, 1)):
            day = rng.uniform(3, start - 2)
            ticket = f"t-{i}-{k}"
            channel = rng.choice(["email", "chat", "phone"])
            add("ticket_opened", day, channel=channel, ticket_id=ticket)
            for _ in range(0 if happy else rng.randint(1, 4)):
                add("ticket_commented", day - 0.1, channel=channel, ticket_id=ticket, author="customer")
            solved_after = rng.uniform(2, 20) if happy else rng.uniform(30, 200)
            if solved_after / 24 < day:
                add("ticket_solved", day - solved_after / 24, channel=channel, ticket_id=ticket)
                if not happy and rng.random() < 0.5:
                    add("ticket_reopened", day - solved_after / 24 - 0.5, channel=channel, ticket_id=ticket)
                add("csat_rating", day - solved_after / 24 - 0.1, channel="email", ticket_id=ticket,
                    rating=("csat", rng.randint(4, 5) if happy else rng.randint(1, 3), 5))
        if rng.random() < 0.7:
            score = rng.randint(8, 10) if happy else rng.randint(0, 7)
            add("nps_response", rng.uniform(1, 50), channel="email", rating=("nps", score, 10))
        if rng.random() < 0.3:
            add("review_posted", rng.uniform(1, 80), rating=("csat", 5 if happy else 2, 5))
        add("email_engaged", rng.uniform(1, 30), channel="email")
    return out


def _at(rt: Runtime, when: datetime) -> Runtime:
    return Runtime(config=rt.config, engine=rt.engine, connectors=rt.connectors, clock=lambda: when)


def seed(rt: Runtime, post_signed: Any, n: int = 40) -> Shop:
    """Store, score and snapshot the shop; leave one failed delivery and one dead and one
    retrying write. ``post_signed``: the conftest fixture (a webhook through the real app)."""
    tps = history(n)
    by_source: dict[str, list[Touchpoint]] = {}
    for t in tps:
        by_source.setdefault(t.source, []).append(t)
    with db.write(rt.engine) as conn:
        for source, items in by_source.items():
            inbox.store(conn, source, Normalised(touchpoints=tuple(items)), delivery_id=None,
                        now=NOW - timedelta(days=8), actor="test")
    # a week of daily scoring runs and KPI snapshots (scores decay and the KPI windows move,
    # so the trend lines move), then today's through the scheduler's runner, as the clock runs them
    for day in range(7, 0, -1):
        scoring.run(_at(rt, NOW - timedelta(days=day)))
        kpis.snapshot(_at(rt, NOW - timedelta(days=day)), force=True)
    scheduler.run_job(rt, "score", scoring.job, lease=scoring.LEASE)
    scheduler.run_job(rt, "kpis", lambda r: kpis.snapshot(r, force=True), lease=kpis.LEASE)
    scheduler.run_job(rt, "sync", lambda r: {"platforms": {}, "dry_run": True})
    # a malformed payload with a good signature: stored as failed, replayable
    resp = post_signed("generic", b'{"events": [{"kind": "order_placed"}')
    failed = resp.get_json()["delivery_id"]
    with db.write(rt.engine) as conn:
        ids = list(conn.execute(select(outbox.c.id).where(outbox.c.status == "pending")
                                .order_by(outbox.c.id).limit(2)).scalars())
        conn.execute(update(outbox).where(outbox.c.id == ids[0]).values(
            status="dead", attempts=8, last_error="HTTP 400: Property cx_score does not exist"))
        conn.execute(update(outbox).where(outbox.c.id == ids[1]).values(
            attempts=2, next_attempt_at=NOW + timedelta(minutes=4),
            last_error="HTTP 503: Service Unavailable"))
    return Shop(customers=len({t.customer.email for t in tps}), failed_delivery=failed,
                dead_write=ids[0], retrying_write=ids[1])

