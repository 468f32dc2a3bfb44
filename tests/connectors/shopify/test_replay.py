"""Out-of-order and repeated deliveries end in the same state as in-order single delivery.

The fixture set (every event sample plus the topics without an official sample) is
delivered once in order, the state captured, the database emptied, then delivered
shuffled with every delivery sent twice (a retry with the same webhook id, or a
redelivery under a new one), for several shuffles. The abandoned-checkout job runs
after each pass, as the scheduler would. Compliance topics are requests acting on
what is stored at that moment, not facts, and are left out.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import delete, select

from cx_connector import checkouts, db
from cx_connector.models import Base, customers, identities, products, touchpoints
from tests.conftest import NOW, fixture_bytes
from tests.connectors.shopify.conftest import sample


def events() -> list[tuple[str, bytes]]:
    order = json.loads(sample("orders_create.json"))
    checkout = json.loads(sample("checkouts_create.json"))
    second_order = {**order, "id": 5_000_000_000_000_000_001, "checkout_token": "123123123",
                    "processed_at": "2022-01-01T00:20:00Z", "total_price": "421.88"}
    lone_checkout = {**checkout, "token": "cart9", "customer": None, "email": "guest@example.com",
                     "created_at": "2022-01-05T10:00:00Z", "updated_at": "2022-01-05T10:00:00Z"}
    fulfilled = {**order, "fulfillments": [{"id": 1, "created_at": "2022-01-03T10:00:00Z"}]}
    cancelled = {**order, "cancelled_at": "2022-01-02T00:00:00Z"}
    return [
        ("products/create", fixture_bytes("shopify", "crafted", "products_create.json")),
        ("customers/create", sample("customers_create.json")),
        ("customers/update", sample("customers_update.json")),
        ("customers/delete", sample("customers_delete.json")),
        ("orders/create", sample("orders_create.json")),
        ("orders/paid", sample("orders_paid.json")),
        ("refunds/create", sample("refunds_create.json")),
        ("checkouts/create", sample("checkouts_create.json")),
        ("orders/create", json.dumps(second_order).encode()),
        ("checkouts/update", json.dumps(lone_checkout).encode()),
        ("orders/fulfilled", json.dumps(fulfilled).encode()),
        ("orders/cancelled", json.dumps(cancelled).encode()),
    ]


def snapshot(engine) -> dict:
    """The state, with customers named by their identities (row ids depend on arrival)."""
    with engine.connect() as conn:
        keys: dict[int, frozenset] = {}
        for r in conn.execute(select(identities)).mappings():
            keys.setdefault(r["customer_id"], set()).add(
                (r["kind"], r["source"], r["value"], r["gone_at"] is not None))
        keys = {cid: frozenset(v) for cid, v in keys.items()}
        live = conn.execute(select(customers).where(customers.c.merged_into_id.is_(None))).mappings()
        people = sorted((sorted(keys.get(r["id"], ())), r["email"], r["phone"], r["name"],
                         json.dumps(r["profile_times"], sort_keys=True))
                        for r in live if r["id"] in keys)
        tps = sorted((r["source"], r["touchpoint_id"], r["kind"], r["stage"], r["channel"],
                      r["occurred_at"].isoformat(), str(r["value"]), r["currency"],
                      json.dumps(r["products"], sort_keys=True),
                      json.dumps(r["attributes"], sort_keys=True),
                      sorted(keys.get(r["customer_id"], ())))
                     for r in conn.execute(select(touchpoints)).mappings())
        catalogue = sorted(tuple(r) for r in conn.execute(select(products)))
    return {"customers": people, "touchpoints": tps, "products": catalogue}


def wipe(engine) -> None:
    with db.write(engine) as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))


def detect(engine) -> None:
    with db.write(engine) as conn:
        checkouts.detect(conn, now=NOW, abandon_after=timedelta(hours=6),
                         lookback=timedelta(days=3650))


def test_shuffled_and_repeated_delivery_gives_the_in_order_state(deliver, engine):
    for topic, body in events():
        # the sample update repeats the creation's details: ignored, nothing to change
        assert deliver(topic, body).get_json()["status"] == (
            "ignored" if topic == "customers/update" else "processed")
    detect(engine)
    expected = snapshot(engine)
    assert len(expected["touchpoints"]) == 10 and len(expected["customers"]) == 3
    assert any(t[1] == "checkout:cart9:abandoned" for t in expected["touchpoints"])
    assert not any(t[1] == "checkout:123123123:abandoned" for t in expected["touchpoints"])

    for seed in range(4):
        wipe(engine)
        rng = random.Random(seed)
        sends = []
        for topic, body in events():
            first = str(uuid.UUID(int=rng.getrandbits(128)))
            again = first if rng.random() < 0.5 else str(uuid.UUID(int=rng.getrandbits(128)))
            sends += [(topic, body, first), (topic, body, again)]
        rng.shuffle(sends)
        for i, (topic, body, webhook_id) in enumerate(sends):
            r = deliver(topic, body, {"X-Shopify-Webhook-Id": webhook_id})
            assert r.status_code == 200 and r.get_json()["status"] in ("processed", "duplicate", "ignored")
            if i == len(sends) // 2:
                detect(engine)  # the job may run mid-way: a late order retracts what it decided
        detect(engine)
        assert snapshot(engine) == expected, f"shuffle seed {seed}"


@pytest.mark.parametrize("first", ["orders/create", "refunds/create"])
def test_refund_and_order_in_either_order_end_as_one_customer(deliver, engine, first):
    bodies = {"orders/create": sample("orders_create.json"), "refunds/create": sample("refunds_create.json")}
    second = next(t for t in bodies if t != first)
    deliver(first, bodies[first])
    deliver(second, bodies[second])
    with engine.connect() as conn:
        owners = set(conn.execute(select(touchpoints.c.customer_id)).scalars())
    assert len(owners) == 1
