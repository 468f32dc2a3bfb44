"""A deleted HubSpot contact stays deleted: its events delivered after the deletion (they
happened before it: HubSpot delivers out of order and retries for 24 hours) are kept as
anonymous facts and bring no personal data back; a restore from the recycle bin lifts the
tombstone. Through the real endpoint, signed."""

from __future__ import annotations

from datetime import UTC, datetime

from click.testing import CliRunner
from sqlalchemy import select

from cx_connector import enrich
from cx_connector.cli import main
from cx_connector.models import audit_log, customers, deliveries, identities, touchpoints
from tests.conftest import NOW, TEST_CONNECTORS, count, settle
from tests.test_privacy import everything

T = 1_781_000_000_000  # ms; every event below is dated from it
DELETED = datetime.fromtimestamp((T + 5_000) / 1000, UTC)


def ev(kind, oid, ms, **kw):
    return {"eventId": ms, "subscriptionId": 1, "portalId": 7, "appId": 1, "occurredAt": T + ms,
            "subscriptionType": kind, "attemptNumber": 0, "objectId": oid, "changeSource": "CRM_UI",
            **kw}


def email(oid, ms, value):
    return ev("contact.propertyChange", oid, ms, propertyName="email", propertyValue=value)


def status(post_signed, events):
    """The delivery's status once the clock applied a privacy request it queued."""
    r = post_signed("hubspot", events)
    assert r.status_code == 200, r.get_json()
    return settle(post_signed.rt, r.get_json())["status"]


def record(engine, value):
    with engine.connect() as conn:
        return conn.execute(select(identities.c.customer_id, identities.c.gone_at,
                                   identities.c.enriched_at, customers.c.redacted_at, customers.c.email)
                            .join(customers, customers.c.id == identities.c.customer_id)
                            .where(identities.c.source == "hubspot", identities.c.value == value)).one()


def test_events_arriving_after_the_deletion_bring_no_personal_data_back(post_signed, engine, rt):
    assert status(post_signed, [ev("contact.creation", 101, 0), email(101, 1_000, "ann@example.com")]) \
        == "processed"
    assert status(post_signed, [ev("contact.deletion", 101, 5_000)]) == "processed"
    # happened before the deletion, delivered after it: a new email, her name, a lifecycle stage
    assert status(post_signed, [email(101, 2_000, "ann.lee@example.com"),
                                ev("contact.propertyChange", 101, 3_000, propertyName="firstname",
                                   propertyValue="Annabel"),
                                ev("contact.propertyChange", 101, 4_000, propertyName="lifecyclestage",
                                   propertyValue="customer")]) == "processed"

    haystack = everything(engine)
    assert "ann@example.com" not in haystack and "ann.lee" not in haystack and "annabel" not in haystack
    assert count(engine, "customers") == 1  # no new, empty customer started by the late events
    tomb = record(engine, "101")
    assert tomb.gone_at == DELETED and tomb.redacted_at is not None and tomb.email is None
    with engine.connect() as conn:
        facts = conn.execute(select(touchpoints.c.touchpoint_id, touchpoints.c.customer_id)).all()
        bodies = conn.execute(select(deliveries.c.body).order_by(deliveries.c.id)).scalars().all()
        reasons = conn.execute(select(audit_log.c.details).where(
            audit_log.c.action == "privacy_forget").order_by(audit_log.c.id)).scalars().all()
    assert len(facts) == 5 and {c for _, c in facts} == {tomb.customer_id}  # kept, anonymous
    # the late delivery's raw body is emptied too (the deletion's own names no one)
    assert bodies[0] is None and bodies[2] is None and b"contact.deletion" in bytes(bodies[1])
    assert [r["reason"] for r in reasons] == [
        "HubSpot contact.deletion: the contact was deleted",
        "a fact about an erased record arrived after the erasure"]
    assert enrich.candidates(rt, rt.connectors["hubspot"], NOW) == []  # never looked up again
    with engine.connect() as conn:
        assert conn.execute(select(identities.c.value).where(identities.c.gone_at.is_(None))).all() == []


def test_a_late_email_never_links_the_erased_contact_to_a_live_customer(post_signed, engine):
    status(post_signed, [ev("contact.creation", 101, 0)])
    status(post_signed, [ev("contact.deletion", 101, 5_000)])
    status(post_signed, [ev("contact.creation", 202, 6_000), email(202, 6_100, "shared@example.com")])
    status(post_signed, [email(101, 1_000, "shared@example.com")])  # late, same address
    assert count(engine, "customers", "WHERE merged_into_id IS NOT NULL") == 0
    live = record(engine, "202")
    assert live.email == "shared@example.com" and live.redacted_at is None
    assert record(engine, "101").customer_id != live.customer_id


def test_a_deletion_delivered_before_anything_else_leaves_a_tombstone(post_signed, engine):
    assert status(post_signed, [ev("contact.deletion", 101, 5_000)]) == "processed"
    status(post_signed, [ev("contact.creation", 101, 0), email(101, 1_000, "ann@example.com")])
    assert "ann@example.com" not in everything(engine)
    assert count(engine, "customers") == 1 and count(engine, "touchpoints") == 2


def test_a_permanent_deletion_sends_two_events_and_erases_once_per_event(post_signed, engine):
    status(post_signed, [ev("contact.creation", 101, 0), email(101, 1_000, "ann@example.com")])
    assert status(post_signed, [ev("contact.privacyDeletion", 101, 5_000),
                                ev("contact.deletion", 101, 5_000)]) == "processed"
    assert "ann@example.com" not in everything(engine)
    assert record(engine, "101").gone_at == DELETED


def test_a_restore_lifts_the_tombstone_and_the_contact_comes_back(post_signed, engine, rt):
    status(post_signed, [ev("contact.creation", 101, 0), email(101, 1_000, "ann@example.com")])
    status(post_signed, [ev("contact.deletion", 101, 5_000)])
    assert record(engine, "101").redacted_at is not None
    assert status(post_signed, [ev("contact.restore", 101, 9_000)]) == "processed"

    back = record(engine, "101")
    assert back.gone_at is None and back.redacted_at is None and back.enriched_at is None
    assert enrich.candidates(rt, rt.connectors["hubspot"], NOW) != []  # its details are fetched again
    status(post_signed, [email(101, 10_000, "ann@example.com")])  # after the restore: kept
    assert record(engine, "101").email == "ann@example.com"
    assert count(engine, "customers") == 1  # its anonymous history counts for it again
    with engine.connect() as conn:
        entry = conn.execute(select(audit_log.c.details).where(
            audit_log.c.action == "record_restored")).scalar_one()
    assert entry["tombstone_lifted"] is True


def test_a_restore_delivered_before_its_deletion_still_wins(post_signed, engine):
    status(post_signed, [ev("contact.creation", 101, 0), email(101, 1_000, "ann@example.com")])
    status(post_signed, [ev("contact.restore", 101, 9_000)])  # nothing to lift yet: remembered
    status(post_signed, [ev("contact.deletion", 101, 5_000)])  # retried for hours, arrives late
    back = record(engine, "101")
    assert back.gone_at is None and back.redacted_at is None
    assert "ann@example.com" not in everything(engine)  # erased all the same, as in order


def test_a_restore_older_than_the_deletion_lifts_nothing(post_signed, engine):
    status(post_signed, [ev("contact.creation", 101, 0)])
    status(post_signed, [ev("contact.deletion", 101, 5_000)])
    status(post_signed, [ev("contact.restore", 101, 2_000)])  # undid an earlier deletion
    assert record(engine, "101").gone_at == DELETED


def test_forget_on_demand_keeps_the_tombstones(post_signed, engine, tmp_path, database_url):
    status(post_signed, [ev("contact.creation", 101, 0), ev("contact.creation", 102, 0),
                         email(101, 1_000, "ann@example.com"), email(102, 1_000, "ann@example.com")])
    status(post_signed, [ev("contact.deletion", 101, 5_000)])  # 102 was not deleted
    status(post_signed, [email(102, 6_000, "ann@example.com")])
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\nconnectors:\n  hubspot:\n"
                   + "".join(f"    {k}: {v}\n" for k, v in TEST_CONNECTORS["hubspot"].items()))
    r = CliRunner().invoke(main, ["--config", str(cfg), "forget", "ann@example.com", "--yes"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with engine.connect() as conn:
        left = conn.execute(select(identities.c.value, identities.c.gone_at.is_not(None))).all()
    assert left == [("101", True)]  # the deleted record's tombstone; 102 lives on in HubSpot
