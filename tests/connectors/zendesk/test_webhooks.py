"""Every Zendesk event sample through the real endpoint with a valid signature, the
documented touchpoints it produces, dedupe, and order independence."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select, text

from connectors.zendesk import normalise
from cx_connector.models import Base, customers, deliveries, identities, touchpoints
from tests.conftest import count, fixture_bytes, fixture_json

REQUESTER = "8447388090494"
# fixture -> (delivery status, [(touchpoint_id, kind, channel, occurred_at)]): the table in the
# the README says the same
EXPECTED = {
    "ticket_created.json": ("processed", [
        ("ticket:5158:opened", "ticket_opened", "api", "2025-01-08T10:12:07+00:00")]),
    "ticket_status_changed.json": ("processed", [
        ("ticket:5158:solved:20250108T164520Z", "ticket_solved", "api", "2025-01-08T16:45:20.987654+00:00")]),
    "ticket_comment_added.json": ("processed", [
        ("ticket:5158:comment:9876543210", "ticket_commented", "api", "2025-01-08T14:25:30.123456+00:00")]),
    "user_active_changed_docs.json": ("ignored", []),
    "user_group_membership_created_signed_body.json": ("ignored", []),
    "trigger_custom_payload_ticket_update.json": ("failed", []),
}
#: not webhooks (API responses): used by the client tests
API_RESPONSES = {"satisfaction_rating_api_show.json", "error_429_incremental_export.json"}


def test_every_shared_sample_is_covered():
    from tests.conftest import FIXTURES
    assert {p.name for p in (FIXTURES / "zendesk").glob("*.json")} == set(EXPECTED) | API_RESPONSES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_produces_the_documented_touchpoints(post_signed, engine, name):
    status, expected = EXPECTED[name]
    r = post_signed("zendesk", fixture_bytes("zendesk", name))
    assert r.status_code == 200
    assert r.get_json()["status"] == status, r.get_json()
    with engine.connect() as conn:
        rows = conn.execute(select(touchpoints).order_by(touchpoints.c.touchpoint_id)).mappings().all()
    got = [(t["touchpoint_id"], t["kind"], t["channel"], t["occurred_at"].isoformat()) for t in rows]
    assert got == expected
    for t in rows:  # ticket touchpoints belong to the requester, with no email yet
        assert t["customer_source_id"] == REQUESTER and t["source"] == "zendesk"
        assert t["attributes"]["ticket_id"] == "5158" and t["attributes"]["via"] == "web_service"


def test_ticket_attributes_carry_what_scoring_needs(post_signed, engine):
    for name in ("ticket_created.json", "ticket_status_changed.json", "ticket_comment_added.json"):
        assert post_signed("zendesk", fixture_bytes("zendesk", name)).status_code == 200
    with engine.connect() as conn:
        rows = conn.execute(select(touchpoints.c.kind, touchpoints.c.attributes))
        attrs = {t.kind: t.attributes for t in rows}
        customer = conn.execute(select(customers)).mappings().one()
        ids = conn.execute(select(identities.c.kind, identities.c.source, identities.c.value)).all()
    assert attrs["ticket_opened"] == {
        "ticket_id": "5158", "via": "web_service", "status": "open", "priority": "low", "ticket_type": "task",
        "created_at": "2025-01-08T10:12:07Z", "updated_at": "2025-01-08T10:12:07Z",
        "assignee_id": "8447388090494", "group_id": "8447320466430", "organization_id": "8447346622462"}
    solved = attrs["ticket_solved"]
    assert solved["previous_status"] == "open" and solved["status"] == "solved"
    assert solved["resolution_seconds"] == 6 * 3600 + 33 * 60 + 13  # 10:12:07 -> 16:45:20
    comment = attrs["ticket_commented"]
    assert comment["author"] == "staff" and comment["public"] is True
    assert comment["author_id"] == "8447388090495"
    # free text stays in the raw delivery
    assert "body" not in comment and "subject" not in attrs["ticket_opened"]
    assert customer["email"] is None  # enrichment fills it
    assert ids == [("id", "zendesk", REQUESTER)]


def test_unknown_trigger_body_is_failed_and_points_at_the_template(post_signed, engine):
    r = post_signed("zendesk", fixture_bytes("zendesk", "trigger_custom_payload_ticket_update.json"))
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "failed"
    assert "README" in body["error"] and "trigger JSON template" in body["error"]
    assert "End User Comment" in body["error"]
    with engine.connect() as conn:
        row = conn.execute(select(deliveries)).mappings().one()
    assert row["status"] == "failed" and row["body"] is not None  # kept for replay


def test_unknown_event_types_are_ignored_not_failed(post_signed, engine):
    for etype in ("organization.created", "ticket.priority_changed", "article.published", "ticket.merged"):
        body = {"type": "zen:event-type:" + etype, "id": f"evt-{etype}", "time": "2026-01-01T00:00:00Z",
                "detail": {"id": "1"}, "event": {}}
        r = post_signed("zendesk", body)
        assert r.status_code == 200 and r.get_json()["status"] == "ignored", r.get_json()
    assert count(engine, "deliveries", "WHERE status = 'ignored'") == 4 and count(engine, "touchpoints") == 0


def test_topic_is_recorded(post_signed, engine):
    post_signed("zendesk", fixture_bytes("zendesk", "ticket_created.json"))
    post_signed("zendesk", json.loads(_template_body()))
    with engine.connect() as conn:
        topics = sorted(conn.execute(select(deliveries.c.topic)).scalars())
    assert topics == ["ticket.created", "trigger"]


def _template_body(**ticket):
    body = json.loads(normalise.template_json())
    body["ticket"].update({"id": "7002", "status": "New", "priority": "Normal", "type": "Question",
                           "via": "Chat", "created_at": "2026-06-02T09:00:00Z",
                           "updated_at": "2026-06-02T09:00:00Z", **ticket})
    body["requester"].update({"id": "9100000000002", "email": "Carol@Acme.example", "name": "Carol Acme",
                              "phone": ""})
    body["satisfaction"].update({"rating": "Unoffered", "comment": ""})
    return json.dumps(body)


def test_trigger_template_links_the_requester_email_at_once(post_signed, engine):
    r = post_signed("zendesk", _template_body())
    assert r.get_json()["status"] == "processed", r.get_json()
    with engine.connect() as conn:
        c = conn.execute(select(customers)).mappings().one()
        tp = conn.execute(select(touchpoints)).mappings().one()
    assert c["email"] == "carol@acme.example" and c["name"] == "Carol Acme"
    assert tp["touchpoint_id"] == "ticket:7002:opened" and tp["channel"] == "chat"


# --- dedupe ------------------------------------------------------------------------------


def test_redelivery_with_the_same_invocation_id_changes_nothing(post_signed, engine):
    body = fixture_bytes("zendesk", "ticket_created.json")
    h = {"X-Zendesk-Webhook-Invocation-Id": "01J0INVOCATION"}
    assert post_signed("zendesk", body, h).get_json()["status"] == "processed"
    assert post_signed("zendesk", body, h).get_json()["status"] == "duplicate"
    assert count(engine, "deliveries") == 1 and count(engine, "touchpoints") == 1
    with engine.connect() as conn:
        assert conn.execute(select(deliveries.c.delivery_key)).scalar_one() == "invocation:01J0INVOCATION"


def test_dedupe_key_is_the_invocation_then_the_event_id_then_the_body(rt):
    from cx_connector.connector import Delivery
    z = rt.connectors["zendesk"]
    body = fixture_bytes("zendesk", "ticket_created.json")

    def key(body, headers=None):
        return z.delivery_key(Delivery("zendesk", body, headers or {}, received_at=datetime.now(UTC)))

    assert key(body, {"x-zendesk-webhook-invocation-id": "abc-123"}) == "invocation:abc-123"
    assert key(body) == "event:cbe4028c-7239-495d-b020-f22348516046"
    assert key(body, {"X-Zendesk-Webhook-Invocation-Id": "bad id with spaces"}).startswith("event:")
    trigger = fixture_bytes("zendesk", "trigger_custom_payload_ticket_update.json")
    assert key(trigger).startswith("sha256:")
    assert key(b"not json").startswith("sha256:")


def test_one_fact_through_event_and_trigger_is_stored_once(post_signed, engine):
    created = fixture_json("zendesk", "ticket_created.json")
    created["detail"]["id"] = "7002"
    post_signed("zendesk", created)
    same = "2025-01-08T10:12:07Z"
    post_signed("zendesk", _template_body(created_at=same, updated_at=same))
    assert count(engine, "touchpoints") == 1  # ticket:7002:opened from both


# --- order independence ------------------------------------------------------------------------


def _fixture_set() -> list[bytes]:
    """The shared samples plus a whole ticket story (user, ticket, replies, solve, reopen, rating)."""
    bodies = [fixture_bytes("zendesk", n) for n in sorted(EXPECTED)]
    user = {"type": "zen:event-type:user.created", "id": "u-1", "time": "2025-01-01T09:00:00Z",
            "subject": f"zen:user:{REQUESTER}",
            "detail": {"id": REQUESTER, "email": "Ann@Example.com", "role": "end-user",
                       "created_at": "2025-01-01T09:00:00Z"}, "event": {}}
    renamed = {**user, "type": "zen:event-type:user.name_changed", "id": "u-2",
               "time": "2025-01-02T09:00:00Z", "event": {"current": "Ann Newname", "previous": "Ann Oldname"}}
    renamed_before = {**renamed, "id": "u-0", "time": "2025-01-01T10:00:00Z",
                      "event": {"current": "Ann Oldname", "previous": None}}
    reopened = fixture_json("zendesk", "ticket_status_changed.json")
    reopened.update(id="s-2", time="2025-01-09T08:00:00Z", event={"current": "OPEN", "previous": "SOLVED"})
    solved2 = fixture_json("zendesk", "ticket_status_changed.json")
    solved2.update(id="s-3", time="2025-01-10T08:00:00Z")
    csat = fixture_json("zendesk", "ticket_status_changed.json")
    csat.update(type="zen:event-type:ticket.csat_received", id="c-1", time="2025-01-11T08:00:00Z",
                event={"satisfaction_score": {"score": "GOOD"}})
    extra = [user, renamed, renamed_before, reopened, solved2, csat]
    return bodies + [json.dumps(b).encode() for b in extra] + [_template_body().encode()]


def _state(engine) -> dict:
    """What was stored, without surrogate ids or arrival times."""
    with engine.connect() as conn:
        keys: dict[int, frozenset] = {}
        for cid, kind, source, value in conn.execute(select(
                identities.c.customer_id, identities.c.kind, identities.c.source, identities.c.value)):
            keys[cid] = keys.get(cid, frozenset()) | {(kind, source, value)}
        people = {keys.get(r.id, frozenset()): (r.email, r.phone, r.name) for r in conn.execute(
            select(customers).where(customers.c.merged_into_id.is_(None)))}
        tps = {(r.touchpoint_id, r.kind, r.stage, r.channel, r.occurred_at, r.rating_type,
                r.rating_score, json.dumps(r.attributes, sort_keys=True), keys.get(r.customer_id))
               for r in conn.execute(select(touchpoints))}
        statuses = sorted(conn.execute(select(deliveries.c.delivery_key, deliveries.c.status)).all())
    return {"customers": people, "touchpoints": tps, "deliveries": statuses}


def _wipe(engine) -> None:
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f"DELETE FROM {table.name}"))


def test_shuffled_and_repeated_delivery_gives_the_same_final_state(post_signed, engine):
    bodies = _fixture_set()
    for body in bodies:
        assert post_signed("zendesk", body).status_code == 200
    in_order = _state(engine)
    assert len(in_order["touchpoints"]) == 10 and len(in_order["customers"]) == 2
    ann = next(v for k, v in in_order["customers"].items() if ("id", "zendesk", REQUESTER) in k)
    assert ann == ("ann@example.com", None, "Ann Newname")  # the newest name, whatever the order
    for seed in (1, 2, 3):
        _wipe(engine)
        replay = bodies * 2
        random.Random(seed).shuffle(replay)
        for body in replay:
            assert post_signed("zendesk", body).status_code == 200
        assert _state(engine) == in_order, f"seed {seed}"


def test_csat_event_stores_the_rating(post_signed, engine):
    post_signed("zendesk", _fixture_set()[-2])
    with engine.connect() as conn:
        r = conn.execute(select(touchpoints)).mappings().one()
    assert (r["kind"], r["rating_type"], r["rating_score"], r["rating_scale_max"]) == (
        "csat_rating", "csat", Decimal(1), Decimal(1))
    assert r["attributes"]["satisfied"] is True and r["touchpoint_id"] == "ticket:5158:csat:20250111T080000Z"


def test_every_bundled_demo_sample_is_accepted(client, rt, engine):
    z = rt.connectors["zendesk"]
    samples = z.sample_deliveries()
    assert len(samples) >= 10
    for s in samples:
        h = {**s.headers, **z.sign(s.body, s.headers, method="POST", url="", now=rt.now())}
        r = client.post("/webhooks/zendesk", data=s.body, headers=h)
        assert r.status_code == 200, s.name
        assert r.get_json()["status"] in ("processed", "ignored"), (s.name, r.get_json())
    assert count(engine, "deliveries", "WHERE status = 'failed'") == 0
    keyed = count(engine, "deliveries", "WHERE delivery_key LIKE 'invocation:demo-invocation-%'")
    assert keyed == len(samples)
    assert count(engine, "touchpoints", "WHERE kind = 'ticket_reopened'") == 1


@pytest.mark.parametrize("body", [
    b'{"\\u0000": null}',
    b'{"type": "zen:\\u0000\\ud800x"}',
    b'{"type": "zen:event-type:user.created", "time": "2026-01-01T00:00:00Z", '
    b'"detail": {"id": "5", "email": "a\\u0000@example.com", "name": "A\\u0000"}}',
])
def test_nul_and_lone_surrogates_never_reach_the_database(post_signed, body):
    # found by the property test on PostgreSQL: text columns refuse NUL
    r = post_signed("zendesk", body)
    assert r.status_code == 200 and r.get_json()["status"] in ("failed", "ignored", "processed"), r.get_json()
    assert "\x00" not in (r.get_json().get("error") or "")


def test_the_documented_template_is_the_one_recognised():
    from pathlib import Path
    root = Path(__file__).parents[3]
    docs = [p for p in (root / "README.md",) if normalise.TEMPLATE_VERSION in p.read_text()]
    assert docs, "the trigger template must be documented"
    text = docs[0].read_text()
    start = text.index("```json\n{\n  \"cx_connector\"") + len("```json\n")
    documented = json.loads(text[start:text.index("```", start)])
    assert documented == normalise.TRIGGER_TEMPLATE
    for _, expected in EXPECTED.values():
        for _, kind, _, _ in expected:
            assert f"`{kind}`" in text
