"""The abandoned-checkout job: decided from stored facts, whatever order they arrived in."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import select

from cx_connector import checkouts, db, inbox, scheduler
from cx_connector.connector import CustomerRef, Normalised, Product, Touchpoint
from cx_connector.models import customers, job_runs, touchpoints
from tests.conftest import NOW, count

SIX_HOURS = timedelta(hours=6)


def store(engine, *tps, source="shopify"):
    with db.write(engine) as conn:
        inbox.store(conn, source, Normalised(touchpoints=tps), delivery_id=None, now=NOW, actor="test")


def started(token, hours_ago, source="shopify", customer="c1"):
    return Touchpoint(source=source, touchpoint_id=f"checkout:{token}:started",
                      occurred_at=NOW - timedelta(hours=hours_ago),
                      customer=CustomerRef(source_id=customer, email=f"{customer}@example.com"),
                      kind="checkout_started", channel="web", value=Decimal("42.50"), currency="EUR",
                      products=(Product(id="p1", title="Mug", quantity=2, price=Decimal("21.25")),),
                      attributes={"checkout_token": token, "via": "web", "contact_email": "x@example.com"})


def ordered(token, oid="1", source="shopify", customer="c1"):
    return Touchpoint(source=source, touchpoint_id=f"order:{oid}:placed", occurred_at=NOW,
                      customer=CustomerRef(source_id=customer), kind="order_placed",
                      value=Decimal("42.50"), currency="EUR",
                      attributes={"order_id": oid, "checkout_token": token})


def detect(engine, **kw):
    kw = {"now": NOW, "abandon_after": SIX_HOURS, "lookback": timedelta(days=30), **kw}
    with db.write(engine) as conn:
        return checkouts.detect(conn, **kw)


def abandoned(engine):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(touchpoints).where(
            touchpoints.c.kind == "checkout_abandoned").order_by(touchpoints.c.touchpoint_id)).mappings()]


def test_a_checkout_without_an_order_becomes_abandoned(engine):
    store(engine, started("T1", hours_ago=7))
    with db.write(engine) as conn:
        conn.execute(customers.update().values(changed_at=None))
    assert detect(engine) == {"checked": 1, "abandoned": 1, "retracted": 0}
    [row] = abandoned(engine)
    assert row["touchpoint_id"] == "checkout:T1:abandoned"
    assert (row["stage"], row["channel"]) == ("consideration", "web")
    assert row["occurred_at"] == NOW - timedelta(hours=1)  # started + abandon_after, not "now"
    assert row["value"] == Decimal("42.50") and row["currency"] == "EUR"
    assert row["products"] == [{"id": "p1", "title": "Mug", "quantity": 2, "price": "21.25"}]
    assert row["attributes"] == {"checkout_token": "T1", "via": "web", "abandoned_after_seconds": 21600}
    assert row["customer_source_id"] == "c1" and row["customer_id"] == 1
    assert count(engine, "customers", "WHERE changed_at IS NOT NULL") == 1  # rescored


def test_a_checkout_with_an_order_is_not_abandoned(engine):
    store(engine, started("T1", hours_ago=7), ordered("T1"))
    assert detect(engine)["abandoned"] == 0 and abandoned(engine) == []


def test_a_recent_checkout_is_not_decided_yet(engine):
    store(engine, started("T1", hours_ago=5))
    assert detect(engine)["checked"] == 0 and abandoned(engine) == []


def test_running_again_changes_nothing(engine):
    store(engine, started("T1", hours_ago=7))
    detect(engine)
    assert detect(engine) == {"checked": 1, "abandoned": 0, "retracted": 0}
    assert len(abandoned(engine)) == 1


def test_an_order_arriving_late_retracts_the_abandonment(engine):
    store(engine, started("T1", hours_ago=7), started("T2", hours_ago=8))
    detect(engine)
    store(engine, ordered("T1"))
    assert detect(engine) == {"checked": 2, "abandoned": 0, "retracted": 1}
    assert [r["touchpoint_id"] for r in abandoned(engine)] == ["checkout:T2:abandoned"]


def test_checkouts_beyond_the_lookback_are_left_alone(engine):
    store(engine, started("T1", hours_ago=24 * 40))
    assert detect(engine)["checked"] == 0
    assert detect(engine, lookback=timedelta(days=60))["abandoned"] == 1


def test_an_order_of_another_source_does_not_complete_the_checkout(engine):
    store(engine, started("T1", hours_ago=7))
    store(engine, ordered("T1", source="generic", customer="g1"), source="generic")
    assert detect(engine)["abandoned"] == 1


def test_the_job_is_scheduled_and_reads_its_settings(rt, engine):
    [job] = [j for j in scheduler.jobs() if j.id == "checkouts"]
    assert job.every(rt.config) == rt.config.schedule.score_every
    store(engine, started("T1", hours_ago=7))
    run = scheduler.run_job(rt, job.id, job.func)
    assert run["status"] == "ok" and run["details"] == {"checked": 1, "abandoned": 1, "retracted": 0}
    with engine.connect() as conn:
        assert conn.execute(select(job_runs.c.job, job_runs.c.status)).one() == ("checkouts", "ok")
