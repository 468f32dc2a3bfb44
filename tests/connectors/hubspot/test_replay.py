"""Out-of-order and repeated HubSpot deliveries end in the same state as in-order single delivery."""

from __future__ import annotations

import json
import random

import pytest
from sqlalchemy import select

from cx_connector import inbox
from cx_connector.models import Base, customers, identities, touchpoints
from tests.conftest import FIXTURES, fixture_bytes

# contact_deletion.json included: a deletion commutes with the facts about the contact that
# happened before it, whenever they arrive (they stay anonymous)
SAMPLES = sorted(p.name for p in (FIXTURES / "hubspot").glob("*.json"))


def ev(kind, oid, ms, **kw):
    return {"eventId": ms, "subscriptionId": 1, "portalId": 7, "appId": 1, "occurredAt": ms,
            "subscriptionType": kind, "attemptNumber": 0, "objectId": oid,
            "changeSource": "CRM_UI", **kw}


def deletion() -> list[bytes]:
    """A contact with contact details, one merged into it, then deleted: wherever the deletion
    falls in the delivery order, nothing of theirs is left but anonymous facts; a live contact
    sharing nothing with them is untouched."""
    batches = [
        [ev("contact.creation", 201, 1_700_000_000_000), ev("contact.creation", 202, 1_700_000_000_100),
         ev("contact.creation", 203, 1_700_000_000_200)],
        [ev("contact.propertyChange", 201, 1_700_000_001_000, propertyName="email",
            propertyValue="ann@example.com")],
        [ev("contact.propertyChange", 202, 1_700_000_001_500, propertyName="phone",
            propertyValue="+1 555 0100 777"),
         ev("contact.propertyChange", 203, 1_700_000_001_500, propertyName="email",
            propertyValue="bob@example.com")],
        [ev("contact.propertyChange", 201, 1_700_000_002_000, propertyName="lifecyclestage",
            propertyValue="customer"),
         ev("contact.propertyChange", 201, 1_700_000_002_000, propertyName="firstname",
            propertyValue="Ann")],
        [ev("contact.merge", 201, 1_700_000_002_500, primaryObjectId=201, mergedObjectIds=[202],
            newObjectId=201)],
        [ev("contact.deletion", 201, 1_700_000_003_000)],
    ]
    return [json.dumps(b).encode() for b in batches]


def synthetic() -> list[bytes]:
    """Deliveries that exercise profile updates, linking by email and a platform merge."""
    batches = [
        [ev("contact.creation", 101, 1_700_000_000_000), ev("contact.creation", 102, 1_700_000_000_500)],
        [ev("contact.propertyChange", 101, 1_700_000_001_000, propertyName="email",
            propertyValue="old@example.com")],
        [ev("contact.propertyChange", 101, 1_700_000_002_000, propertyName="email",
            propertyValue="new@example.com")],
        [ev("contact.propertyChange", 102, 1_700_000_003_000, propertyName="phone",
            propertyValue="+1 555 0100 200")],
        [ev("contact.merge", 103, 1_700_000_004_000, primaryObjectId=101, mergedObjectIds=[102],
            newObjectId=103)],
        [ev("contact.propertyChange", 103, 1_700_000_005_000, propertyName="hs_feedback_last_nps_rating",
            propertyValue="8"),
         ev("contact.propertyChange", 103, 1_700_000_005_000, propertyName="lifecyclestage",
            propertyValue="customer")],
    ]
    return [json.dumps(b).encode() for b in batches]


def state(engine) -> dict:
    """The stored state with customer ids replaced by what identifies them."""
    with engine.connect() as conn:
        idents = conn.execute(select(identities.c.customer_id, identities.c.kind, identities.c.source,
                                     identities.c.value, identities.c.gone_at.is_not(None))).all()
        label: dict[int, tuple] = {}
        for cid, kind, source, value, _ in idents:
            label.setdefault(cid, ())
            label[cid] = tuple(sorted({*label[cid], f"{kind}:{source}:{value}"}))
        tps = sorted((r.touchpoint_id, r.kind, r.stage, r.channel, r.customer_source_id,
                      r.occurred_at.isoformat(), json.dumps(r.attributes, sort_keys=True),
                      str(r.rating_score), label.get(r.customer_id))
                     for r in conn.execute(select(touchpoints)))
        live = sorted((label.get(r.id), r.email, r.phone, r.name)
                      for r in conn.execute(select(customers).where(customers.c.merged_into_id.is_(None)))
                      if r.id in label)
    keys = sorted((k, s, v, gone, label[c]) for c, k, s, v, gone in idents)
    return {"touchpoints": tps, "identities": keys, "customers": live}


def wipe(engine) -> None:
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


def bump_attempt(body: bytes) -> bytes:
    events = json.loads(body)
    for e in events:
        e["attemptNumber"] = e.get("attemptNumber", 0) + 1
    return json.dumps(events).encode()


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("which", ["samples", "synthetic", "deletion"])
def test_shuffled_and_repeated_deliveries_give_the_in_order_state(post_signed, engine, seed, which):
    bodies = ([fixture_bytes("hubspot", n) for n in SAMPLES] if which == "samples" else
              synthetic() if which == "synthetic" else deletion())
    for body in bodies:
        assert post_signed("hubspot", body).status_code == 200
    expected = state(engine)
    assert expected["touchpoints"]
    wipe(engine)

    rng = random.Random(seed)
    replay = [*bodies, *(bump_attempt(b) for b in bodies)]  # every delivery twice, as HubSpot retries
    rng.shuffle(replay)
    statuses = [post_signed("hubspot", body).get_json()["status"] for body in replay]
    assert statuses.count("duplicate") == len(bodies)
    assert state(engine) == expected


def test_deletion_in_order_state_is_what_it_should_be(post_signed, engine, rt):
    for body in deletion():
        post_signed("hubspot", body)
    inbox.privacy_job(rt)  # the clock applies the queued deletions afterwards
    s = state(engine)
    assert sorted(s["customers"]) == [
        (("email::bob@example.com", "id:hubspot:203"), "bob@example.com", None, None),
        (("id:hubspot:201", "id:hubspot:202"), None, None, None)]  # tombstones, no details
    assert {(v, gone) for k, src, v, gone, _ in s["identities"] if k == "id"} == {
        ("201", True), ("202", True), ("203", False)}
    assert len(s["touchpoints"]) == 8  # the facts stay, anonymous


def test_synthetic_in_order_state_is_what_it_should_be(post_signed, engine):
    for body in synthetic():
        post_signed("hubspot", body)
    s = state(engine)
    assert len(s["customers"]) == 1
    labels, email, phone, _ = s["customers"][0]
    assert (email, phone) == ("new@example.com", "+15550100200")
    assert {"id:hubspot:101", "id:hubspot:102", "id:hubspot:103", "email::old@example.com",
            "email::new@example.com"} <= set(labels)
    assert {(v, gone) for k, src, v, gone, _ in s["identities"] if k == "id"} == {
        ("101", True), ("102", True), ("103", False)}
