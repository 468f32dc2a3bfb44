"""Identity resolution: ids, emails and phones link one customer; new links merge customers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from cx_connector import db, identity
from cx_connector.connector import ContactDetails, CustomerRef, Link, Merge
from cx_connector.models import audit_log, customers, identities, touchpoints
from tests.conftest import NOW, count

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def resolve(engine, source, ref, at=T0):
    with db.write(engine) as conn:
        return identity.resolve(conn, source, [(ref, at)], now=NOW)[ref.source_id]


def test_same_email_on_two_platforms_is_one_customer(engine):
    a = resolve(engine, "shopify", CustomerRef("7064055069303700840", email="ann@example.com"))
    b = resolve(engine, "zendesk", CustomerRef("8447388090494", email="ann@example.com"))
    assert a == b
    assert count(engine, "customers") == 1 and count(engine, "identities") == 3


def test_phone_formats_link(engine):
    a = resolve(engine, "shopify", CustomerRef("1", phone="+1 (555) 625-1199"))
    b = resolve(engine, "hubspot", CustomerRef("2", phone="+1-555-625-1199"))
    assert a == b


def test_a_fact_linking_two_customers_merges_them_keeping_history(engine):
    a = resolve(engine, "shopify", CustomerRef("s1", email="ann@example.com", name="Ann"))
    b = resolve(engine, "zendesk", CustomerRef("z1", email="ann.work@example.com"))
    assert a != b
    with db.write(engine) as conn:  # a zendesk user event now shows z1 with Ann's private email
        conn.execute(touchpoints.insert().values(
            source="zendesk", touchpoint_id="t1", customer_id=b, customer_source_id="z1",
            occurred_at=T0, kind="ticket_opened", stage="retention", channel="email",
            products=[], attributes={}, created_at=NOW))
    c = resolve(engine, "zendesk", CustomerRef("z1", email="ann@example.com"), T0 + timedelta(days=1))
    assert c == a  # the older customer survives
    with engine.connect() as conn:
        merged = conn.execute(select(customers).where(customers.c.id == b)).mappings().one()
        assert merged["merged_into_id"] == a
        assert set(conn.execute(select(identities.c.customer_id)).scalars()) == {a}
        assert conn.execute(select(touchpoints.c.customer_id)).scalar_one() == a
        entry = conn.execute(select(audit_log)).mappings().one()
    assert entry["action"] == "customers_merged" and entry["details"]["merged"] == [b]
    with db.read(engine) as conn:
        assert identity.find_customer(conn, str(b)) == a  # an old id still finds the survivor


def test_profile_fields_take_the_newest_fact_whatever_the_arrival_order(engine, database_url):
    refs = [(CustomerRef("c1", email="old@example.com", name="Old Name"), T0),
            (CustomerRef("c1", name="New Name"), T0 + timedelta(days=2)),
            (CustomerRef("c1", email="new@example.com"), T0 + timedelta(days=1))]
    with db.write(engine) as conn:
        for ref, at in refs:
            identity.resolve(conn, "shopify", [(ref, at)], now=NOW)
        forward = conn.execute(select(customers.c.email, customers.c.name)).one()
        conn.execute(identities.delete())
        conn.execute(customers.delete())
        for ref, at in reversed(refs):
            identity.resolve(conn, "shopify", [(ref, at)], now=NOW)
        backward = conn.execute(select(customers.c.email, customers.c.name)).one()
    assert tuple(forward) == tuple(backward) == ("new@example.com", "New Name")


def test_platform_merge_repoints_and_marks_old_ids_gone(engine):
    a = resolve(engine, "hubspot", CustomerRef("100", email="a@example.com"))
    b = resolve(engine, "hubspot", CustomerRef("200", email="b@example.com"))
    with db.write(engine) as conn:
        survivor = identity.apply_merge(conn, Merge("hubspot", ("100", "200"), "300"), now=NOW)
    assert survivor == min(a, b)
    with engine.connect() as conn:
        rows = {r.value: r for r in conn.execute(select(identities).where(identities.c.kind == "id"))}
    assert {r.customer_id for r in rows.values()} == {survivor}
    assert rows["100"].gone_at is not None and rows["200"].gone_at is not None
    assert rows["300"].gone_at is None


def test_link_joins_a_secondary_record_to_its_person(engine):
    deal = resolve(engine, "hubspot", CustomerRef("deal:9"))
    person = resolve(engine, "hubspot", CustomerRef("42", email="p@example.com"))
    with db.write(engine) as conn:
        cid = identity.apply_link(conn, Link("hubspot", "deal:9", CustomerRef("42")), now=NOW)
    assert cid == min(deal, person)
    with db.read(engine) as conn:
        assert identity.find_customer(conn, "hubspot:deal:9") == identity.find_customer(conn, "p@example.com")


def test_invalid_emails_do_not_link(engine):
    from cx_connector.touchpoint import normalise_email

    assert normalise_email("[email protected]") is None
    assert normalise_email(" Ann@Example.COM ") == "ann@example.com"
    # no database stores these, so they cannot link anyone (a surrogate once failed the insert)
    assert normalise_email("bob@e\ud800xample.com") is None
    assert normalise_email("bob@ex\x00ample.com") is None


def test_a_deleted_record_is_marked_gone_keeping_its_links(engine):
    from cx_connector.connector import Gone
    from cx_connector.models import outbox

    cid = resolve(engine, "shopify", CustomerRef("7064", email="ann@example.com"))
    with db.write(engine) as conn:
        conn.execute(outbox.insert().values(
            customer_id=cid, source="shopify", external_id="7064", fields={"cx_score": 1}, previous={},
            status="pending", attempts=0, next_attempt_at=NOW, created_at=NOW, updated_at=NOW))
        assert identity.mark_gone(conn, Gone("shopify", "7064"), now=NOW) == cid
        identity.mark_gone(conn, Gone("shopify", "7064"), now=NOW)  # again: nothing more
        gone = dict(conn.execute(select(identities.c.value, identities.c.gone_at)).all())
        actions = conn.execute(select(audit_log.c.action)).scalars().all()
    assert gone == {"7064": NOW, "ann@example.com": None}
    assert actions == ["record_gone"] and count(engine, "outbox") == 0


def test_a_record_deleted_before_it_was_seen_stays_gone(engine):
    from cx_connector.connector import Gone

    with db.write(engine) as conn:
        tomb = identity.mark_gone(conn, Gone("shopify", "9"), now=NOW)
    assert resolve(engine, "shopify", CustomerRef("9", email="late@example.com")) == tomb
    with engine.connect() as conn:
        assert conn.execute(select(identities.c.gone_at).where(identities.c.value == "9")).scalar() == NOW


def test_contact_details_report_whether_they_changed_anything(engine):
    def details(ref, at):
        with db.write(engine) as conn:
            return identity.apply_contact_details(conn, ContactDetails("shop", ref, at), now=NOW)

    ann = CustomerRef("c1", email="ann@example.com", name="Ann")
    assert details(ann, T0) is True  # a new customer
    assert details(ann, T0 + timedelta(days=1)) is False  # the same details, newer: no change
    assert details(CustomerRef("c1", email="ann@example.com", name="Ann Lee"), T0 + timedelta(days=3))
    # an older snapshot arriving late neither overwrites the newer name nor counts as a change
    assert details(CustomerRef("c1", name="Ann"), T0 + timedelta(days=2)) is False
    assert details(CustomerRef("c1", phone="+1 555 625 1199"), T0) is True  # a new identity
    with engine.connect() as conn:
        row = conn.execute(select(customers)).mappings().one()
    assert (row["name"], row["phone"]) == ("Ann Lee", "+15556251199")
    assert row["profile_times"]["name"] == (T0 + timedelta(days=3)).isoformat()
