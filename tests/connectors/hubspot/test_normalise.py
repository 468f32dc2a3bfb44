"""HubSpot events -> touchpoints: every captured sample through the real endpoint, then each rule."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select

from connectors.hubspot.connector import HubSpotConnector, HubSpotSettingsSchema
from cx_connector.connector import Delivery, Forget, Merge
from cx_connector.errors import PayloadError
from cx_connector.models import audit_log, customers, deliveries, identities, touchpoints
from tests.conftest import NOW, TEST_CONNECTORS, count, fixture_bytes, settle

# sample -> (inbox status, [(touchpoint_id, kind, stage, channel, customer source_id, attributes)])
EXPECTED = {
    "batch_contact_propertyChange_and_creation_docs.json": ("processed", [
        ("contact:1246965:lifecyclestage:subscriber", "lifecycle_changed", "awareness", "other",
         "1246965", {"via": "ACADEMY", "lifecycle_stage": "subscriber"}),
        ("contact:1246978:created", "contact_created", "awareness", "other", "1246978",
         {"via": "IMPORT"}),
    ]),
    "contact_creation.json": ("processed", [
        ("contact:508369434347:created", "contact_created", "awareness", "api", "508369434347",
         {"via": "INTEGRATION"}),
    ]),
    "contact_propertyChange.json": ("processed", [
        ("contact:508369434347:firstname:1782371969536", "profile_updated", "awareness", "api",
         "508369434347", {"via": "INTEGRATION", "property": "firstname"}),
    ]),
    "contact_propertyChange_sensitive_docs.json": ("ignored", []),
    "conversation_newMessage.json": ("processed", [
        ("conversation:6065362089:message:9b38dc6d5b5744a788931a9cf3a7b225", "chat_message",
         "consideration", "chat", "conversation:6065362089",
         {"via": "conversations", "thread_id": "6065362089",
          "message_id": "9b38dc6d5b5744a788931a9cf3a7b225"}),
    ]),
    "deal_creation.json": ("processed", [
        ("deal:332507367156:created", "deal_created", "consideration", "api", "deal:332507367156",
         {"via": "INTEGRATION", "deal_id": "332507367156"}),
    ]),
    "deal_deletion.json": ("ignored", []),
    "deal_propertyChange_amount.json": ("ignored", []),
    "deal_propertyChange_dealstage.json": ("processed", [
        ("deal:332507367156:stage:qualifiedtobuy", "deal_stage_changed", "consideration", "api",
         "deal:332507367156",
         {"via": "INTEGRATION", "deal_id": "332507367156", "deal_stage": "qualifiedtobuy"}),
    ]),
    "deal_propertyChange_dealstage_crm_ui.json": ("processed", [
        ("deal:697680835:stage:1f4f1ec1-8174-49f3-a112-4eaa4748e38e", "deal_stage_changed",
         "consideration", "other", "deal:697680835",
         {"via": "CRM_UI", "deal_id": "697680835",
          "deal_stage": "1f4f1ec1-8174-49f3-a112-4eaa4748e38e"}),
    ]),
    "ticket_creation.json": ("processed", [
        ("ticket:318514647758:opened", "ticket_opened", "retention", "api", "ticket:318514647758",
         {"via": "INTEGRATION", "ticket_id": "318514647758"}),
    ]),
}


def test_every_fixture_is_covered():
    from tests.conftest import FIXTURES

    names = {p.name for p in (FIXTURES / "hubspot").glob("*.json")}
    assert names == set(EXPECTED) | {"contact_deletion.json"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_through_the_endpoint(post_signed, engine, name):
    status, expected = EXPECTED[name]
    r = post_signed("hubspot", fixture_bytes("hubspot", name))
    assert r.status_code == 200
    assert r.get_json()["status"] == status, r.get_json()
    with engine.connect() as conn:
        rows = conn.execute(select(touchpoints).order_by(touchpoints.c.id)).mappings().all()
        ids = set(conn.execute(select(identities.c.value).where(identities.c.kind == "id",
                                                                  identities.c.source == "hubspot"))
                  .scalars())
    got = [(r["touchpoint_id"], r["kind"], r["stage"], r["channel"], r["customer_source_id"],
            r["attributes"]) for r in rows]
    assert got == expected
    assert all(r["customer_id"] is not None and r["source"] == "hubspot" for r in rows)
    assert ids == {e[4] for e in expected}


def test_contact_deletion_sample_asks_to_forget_the_contact(post_signed, engine, rt):
    body = fixture_bytes("hubspot", "contact_deletion.json")
    result = rt.connectors["hubspot"].normalise(
        Delivery(source="hubspot", body=body, headers={}, received_at=NOW), now=NOW)
    assert result.touchpoints == ()
    deleted = datetime(2026, 6, 25, 7, 19, 30, 538000, tzinfo=UTC)  # its occurredAt
    assert result.actions == (Forget(source="hubspot", source_id="508369434347",
                                     reason="HubSpot contact.deletion: the contact was deleted",
                                     occurred_at=deleted),)
    r = post_signed("hubspot", body)
    assert r.status_code == 200
    assert settle(rt, r.get_json())["status"] == "processed"  # applied by the clock
    assert count(engine, "deliveries") == 1 and count(engine, "touchpoints") == 0
    # never seen before: kept as an erased tombstone, so its late events stay anonymous
    with engine.connect() as conn:
        row = conn.execute(select(identities.c.value, identities.c.gone_at, customers.c.redacted_at)
                           .join(customers, customers.c.id == identities.c.customer_id)).one()
    assert row.value == "508369434347" and row.gone_at == deleted and row.redacted_at == NOW


def test_the_dedupe_key_ignores_attempt_number(post_signed, engine):
    events = json.loads(fixture_bytes("hubspot", "contact_creation.json"))
    assert post_signed("hubspot", events).get_json()["status"] == "processed"
    events[0]["attemptNumber"] = 3
    assert post_signed("hubspot", events).get_json()["status"] == "duplicate"
    events[0]["eventId"] += 1  # another event about the same fact: a new delivery, the same row
    assert post_signed("hubspot", events).get_json()["status"] == "processed"
    assert count(engine, "deliveries") == 2 and count(engine, "touchpoints") == 1


@pytest.mark.parametrize("bodies", [
    [[{"foo": 1}], [{"bar": 2}]],  # no event fields at all: both keyed "None|None|..."
    [{"subscriptionType": "contact.creation"}, {"subscriptionType": "contact.creation", "x": 2}],
    [[{"eventId": 1, "objectId": 5, "x": "a"}], [{"eventId": 1, "objectId": 5, "x": "b"}]],
    [b"", b"[]"],  # the hash of nothing, and the key of no events: once the same
])
def test_malformed_deliveries_without_event_ids_are_each_stored(post_signed, engine, bodies):
    """Without eventId and occurredAt (which HubSpot always sends) the key is the body's hash:
    different malformed bodies shared one key, and all but the first were answered as
    redeliveries, never stored."""
    answers = [post_signed("hubspot", b).get_json()["status"] for b in bodies]
    assert "duplicate" not in answers
    assert count(engine, "deliveries") == 2
    again = post_signed("hubspot", bodies[1]).get_json()["status"]  # a true redelivery still is one
    assert again == "duplicate"


def test_topic_lists_the_subscription_types(post_signed, engine):
    post_signed("hubspot", fixture_bytes("hubspot", "batch_contact_propertyChange_and_creation_docs.json"))
    with engine.connect() as conn:
        assert conn.execute(select(deliveries.c.topic)).scalar() == \
            "contact.creation,contact.propertyChange"


# --- the rules, on the pure normaliser ---------------------------------------------------------


def connector(**settings):
    return HubSpotConnector(HubSpotSettingsSchema().load({**TEST_CONNECTORS["hubspot"], **settings}))


def event(kind="contact.propertyChange", object_id=508369434347, ms=1782371969536, **kw):
    return {"eventId": 1, "subscriptionId": 2, "portalId": 48975575, "appId": 39522895,
            "occurredAt": ms, "subscriptionType": kind, "attemptNumber": 0,
            "objectId": object_id, "changeSource": "CRM_UI", **kw}


def run(events, c=None):
    c = c or connector()
    body = json.dumps(events).encode()
    return c.normalise(Delivery(source="hubspot", body=body, headers={}, received_at=NOW), now=NOW)


def only(result):
    assert result.ignored is None, result.ignored
    assert len(result.touchpoints) == 1
    return result.touchpoints[0]


@pytest.mark.parametrize(("stage", "kind", "tp_id", "journey"), [
    ("closedwon", "deal_won", "deal:7:won", "purchase"),
    ("closedlost", "deal_lost", "deal:7:lost", "consideration"),
    ("appointmentscheduled", "deal_stage_changed", "deal:7:stage:appointmentscheduled",
     "consideration"),
])
def test_deal_stages(stage, kind, tp_id, journey):
    tp = only(run([event("deal.propertyChange", 7, propertyName="dealstage", propertyValue=stage)]))
    assert (tp.kind, tp.touchpoint_id, tp.stage, tp.customer.source_id) == (kind, tp_id, journey, "deal:7")
    assert tp.attributes == {"via": "CRM_UI", "deal_id": "7", "deal_stage": stage}
    assert tp.value is None


def test_custom_pipeline_won_and_lost_stage_ids():
    c = connector(won_stages=["closedwon", "123456"], lost_stages=["654321"])

    def kind(stage):
        return only(run([event("deal.propertyChange", 7, propertyName="dealstage",
                               propertyValue=stage)], c)).kind

    assert kind("123456") == "deal_won"
    assert kind("654321") == "deal_lost"
    assert kind("closedlost") == "deal_stage_changed"


def test_a_stage_cannot_be_both_won_and_lost():
    from marshmallow import ValidationError

    with pytest.raises(ValidationError, match="both won and lost"):
        connector(won_stages=["x"], lost_stages=["x"])


def test_amount_set_in_the_same_delivery_is_the_value_of_the_won_deal():
    c = connector(currency="EUR")
    result = run([event("deal.propertyChange", 7, ms=1000, propertyName="amount", propertyValue="1500"),
                  event("deal.propertyChange", 7, ms=2000, propertyName="amount", propertyValue="2000.50"),
                  event("deal.propertyChange", 8, propertyName="amount", propertyValue="9"),
                  event("deal.propertyChange", 7, propertyName="dealstage", propertyValue="closedwon")],
                 c)
    tp = only(result)
    assert (tp.kind, tp.value, tp.currency) == ("deal_won", Decimal("2000.50"), "EUR")
    alone = run([event("deal.propertyChange", 7, propertyName="amount", propertyValue="1500")])
    assert alone.touchpoints == () and "amount change is no touchpoint" in alone.ignored


@pytest.mark.parametrize(("value", "stage"), [
    ("subscriber", "awareness"), ("lead", "awareness"), ("salesqualifiedlead", "consideration"),
    ("customer", "purchase"), ("evangelist", "advocacy"), ("98765432", "consideration"),
])
def test_lifecycle_stage_maps_to_the_journey(value, stage):
    tp = only(run([event(propertyName="lifecyclestage", propertyValue=value)]))
    assert (tp.kind, tp.stage, tp.touchpoint_id) == (
        "lifecycle_changed", stage, f"contact:508369434347:lifecyclestage:{value}")
    assert tp.attributes["lifecycle_stage"] == value


def test_nps_property_becomes_an_nps_response():
    tp = only(run([event(propertyName="hs_feedback_last_nps_rating", propertyValue="9")]))
    assert tp.kind == "nps_response" and tp.stage == "advocacy"
    assert (tp.rating.type, tp.rating.score, tp.rating.scale_max) == ("nps", Decimal(9), Decimal(10))
    assert tp.touchpoint_id == "contact:508369434347:hs_feedback_last_nps_rating:1782371969536"


def test_configured_csat_property_with_its_scale():
    c = connector(survey_properties={"support_csat": {"type": "csat", "scale_max": 2},
                                     "my_nps": "nps"})
    tp = only(run([event(propertyName="support_csat", propertyValue="2")], c))
    assert tp.kind == "csat_rating" and tp.rating.score == 2 and tp.rating.scale_max == 2
    assert only(run([event(propertyName="my_nps", propertyValue="0")], c)).kind == "nps_response"
    # configuring survey_properties replaces the defaults
    assert run([event(propertyName="hs_feedback_last_nps_rating", propertyValue="9")], c).ignored


def test_ticket_ces_rating_and_closing():
    tp = only(run([event("ticket.propertyChange", 5, propertyName="hs_feedback_last_ces_rating",
                         propertyValue="6")]))
    assert (tp.kind, tp.customer.source_id, tp.attributes["ticket_id"]) == ("ces_response", "ticket:5", "5")
    tp = only(run([event("ticket.propertyChange", 5, propertyName="hs_pipeline_stage", propertyValue="4")]))
    assert (tp.kind, tp.touchpoint_id) == ("ticket_solved", "ticket:5:solved:1782371969536")
    assert run([event("ticket.propertyChange", 5, propertyName="hs_pipeline_stage",
                      propertyValue="2")]).ignored


@pytest.mark.parametrize("value", ["11", "-1", "nine", "NaN", "Infinity", "1e400"])
def test_a_rating_off_the_scale_fails_the_delivery_loudly(value):
    with pytest.raises(PayloadError, match="survey_properties"):
        run([event(propertyName="hs_feedback_last_nps_rating", propertyValue=value)])


@pytest.mark.parametrize("name", ["hs_feedback_last_nps_rating", "lifecyclestage", "email", "dealstage"])
def test_redacted_values_never_become_data(name):
    kind = "deal.propertyChange" if name == "dealstage" else "contact.propertyChange"
    result = run([event(kind, propertyName=name, propertyValue="REDACTED")])
    assert result.touchpoints == () and "redacted" in result.ignored


def test_email_and_phone_changes_link_the_customer():
    tp = only(run([event(propertyName="email", propertyValue=" Ann@Example.COM ")]))
    assert (tp.kind, tp.customer.email, tp.customer.phone) == ("profile_updated", "ann@example.com", None)
    tp = only(run([event(propertyName="mobilephone", propertyValue="+49 30 1234567")]))
    assert tp.customer.phone == "+49301234567"
    assert tp.attributes == {"via": "CRM_UI", "property": "mobilephone"}  # no value kept


def test_other_properties_are_ignored():
    assert "not a property" in run([event(propertyName="hs_analytics_source", propertyValue="x")]).ignored


@pytest.mark.parametrize("name", ["cx_score", "CX_health", "cx_churn_risk"])
def test_loop_guard_ignores_our_own_fields(name):
    for kind in ("contact.propertyChange", "deal.propertyChange", "ticket.propertyChange"):
        result = run([event(kind, propertyName=name, propertyValue="87")])
        assert result.touchpoints == () and "loop guard" in result.ignored


def test_loop_guard_drops_property_changes_made_by_our_own_app():
    ours = event(propertyName="lifecyclestage", propertyValue="customer", changeSource="INTEGRATION",
                 sourceId="39522895")
    assert only(run([ours])).kind == "lifecycle_changed"  # no app_id configured: kept
    c = connector(app_id="39522895")
    assert "own app" in run([ours], c).ignored
    assert only(run([{**ours, "sourceId": "111"}], c)).kind == "lifecycle_changed"
    assert only(run([{**ours, "changeSource": "CRM_UI"}], c)).kind == "lifecycle_changed"
    # creations by our own app are facts all the same
    assert only(run([event("contact.creation", changeSource="INTEGRATION", sourceId="39522895")],
                    c)).kind == "contact_created"


@pytest.mark.parametrize(("kind", "prefix"), [("contact.merge", ""), ("deal.merge", "deal:"),
                                              ("ticket.merge", "ticket:")])
def test_merges(kind, prefix):
    result = run([event(kind, 30, primaryObjectId=10, mergedObjectIds=[20], newObjectId=30,
                        numberOfPropertiesMoved=3)])
    assert result.touchpoints == ()
    assert result.actions == (Merge(source="hubspot", merged_ids=(f"{prefix}10", f"{prefix}20"),
                                    into_id=f"{prefix}30"),)
    kept = run([event(kind, 10, primaryObjectId=10, mergedObjectIds=[20], newObjectId=10)])
    assert kept.actions == (Merge(source="hubspot", merged_ids=(f"{prefix}20",), into_id=f"{prefix}10"),)


def test_contact_merge_repoints_identities_through_the_endpoint(post_signed, engine):
    post_signed("hubspot", [event("contact.creation", 10), event("contact.creation", 20, eventId=2)])
    r = post_signed("hubspot", [event("contact.merge", 30, primaryObjectId=10, mergedObjectIds=[20],
                                      newObjectId=30)])
    assert r.get_json()["status"] == "processed"
    with engine.connect() as conn:
        rows = conn.execute(select(identities.c.value, identities.c.customer_id,
                                   identities.c.gone_at)).all()
        owners = set(conn.execute(select(touchpoints.c.customer_id)).scalars())
    assert {v for v, _, _ in rows} == {"10", "20", "30"}
    assert len({c for _, c, _ in rows}) == 1 and owners == {rows[0][1]}
    assert {v for v, _, gone in rows if gone is not None} == {"10", "20"}
    with engine.connect() as conn:  # both the customer merge and the platform's merge are audited
        log = {r.action: r for r in conn.execute(select(audit_log))}
    assert log["customers_merged"].details["survivor"] == rows[0][1]
    assert len(log["customers_merged"].details["merged"]) == 1
    assert "hubspot merged 10, 20 into 30" in log["customers_merged"].details["reason"]
    assert (log["platform_merge"].source, log["platform_merge"].external_id) == ("hubspot", "30")
    assert log["platform_merge"].details == {"merged_ids": ["10", "20"]}


@pytest.mark.parametrize(("kind", "source_id"), [
    ("contact.deletion", "508369434347"), ("contact.privacyDeletion", "508369434347"),
    ("conversation.privacyDeletion", "conversation:508369434347"),
])
def test_deletions_forget_the_person(kind, source_id):
    result = run([event(kind)])
    assert [(type(a), a.source_id) for a in result.actions] == [(Forget, source_id)]


def test_conversation_comment_is_ignored_and_message_id_optional():
    assert run([event("conversation.newMessage", 6, messageType="COMMENT", messageId="x")]).ignored
    tp = only(run([event("conversation.newMessage", 6)]))
    assert tp.touchpoint_id == "conversation:6:message-at:1782371969536" and tp.channel == "chat"


def test_event_type_key_is_accepted_and_ids_are_strings():
    e = event("contact.creation", 2**62)
    e["eventType"] = e.pop("subscriptionType")
    tp = only(run([e]))
    assert tp.customer.source_id == str(2**62)
    assert tp.occurred_at == datetime(2026, 6, 25, 7, 19, 29, 536000, tzinfo=UTC)
    assert only(run([event("contact.creation", "00123")])).customer.source_id == "123"


def test_unknown_subscriptions_are_ignored_and_mixed_batches_keep_the_rest():
    result = run([event("company.creation"), event("event.completed")])
    assert result.touchpoints == () and "company.creation: not a subscription" in result.ignored
    mixed = run([event("company.creation"), event("contact.creation")])
    assert [tp.kind for tp in mixed.touchpoints] == ["contact_created"]


@pytest.mark.parametrize(("events", "message"), [
    ({"a": 1}, "no subscriptionType"),
    ("text", "expected a JSON array"),
    ([1], "expected an object"),
    ([{"objectId": 1}], "no subscriptionType"),
    ([event("contact.creation", None)], "objectId"),
    ([event("contact.creation", -5)], "objectId"),
    ([event("contact.creation", 1.5)], "objectId"),
    ([event("contact.creation", ms="yesterday")], "occurredAt"),
    ([event("contact.creation", ms=10**20)], "occurredAt"),
    ([event(propertyName=None)], "propertyName"),
    ([event(propertyName="x" * 101)], "propertyName"),
    ([event(propertyName="lifecyclestage", propertyValue=5)], "propertyValue"),
    ([event("contact.merge", mergedObjectIds="20")], "mergedObjectIds"),
])
def test_malformed_events_raise_payload_error(events, message):
    with pytest.raises(PayloadError, match=message):
        run(events)


def test_malformed_delivery_is_stored_as_failed_with_200(post_signed, engine):
    r = post_signed("hubspot", [event("contact.creation", "not-an-id")])
    assert r.status_code == 200
    assert r.get_json()["status"] == "failed" and "objectId" in r.get_json()["error"]
    assert count(engine, "deliveries", "WHERE status = 'failed'") == 1


def test_empty_array_is_ignored():
    assert run([]).ignored == "empty event array"


def test_record_urls_and_writable_records():
    c = connector(portal_id="48975575")
    assert c.record_url("508369434347") == \
        "https://app.hubspot.com/contacts/48975575/record/0-1/508369434347"
    assert c.record_url("deal:7") == "https://app.hubspot.com/contacts/48975575/record/0-3/7"
    assert c.record_url("ticket:7").endswith("/record/0-5/7")
    assert c.record_url("conversation:7") is None
    assert connector(portal_id="1", app_url="https://app-eu1.hubspot.com").record_url("5") == \
        "https://app-eu1.hubspot.com/contacts/1/record/0-1/5"
    assert connector().record_url("5") is None  # no portal id configured
    assert c.writable_record("508369434347") and not c.writable_record("deal:7")


def test_bundled_samples_are_the_fixtures_and_process_through_the_demo_signer(post_signed, rt):
    samples = rt.connectors["hubspot"].sample_deliveries()
    assert {s.name for s in samples} == {f"hubspot/{n}" for n in EXPECTED}
    for s in samples:
        assert s.body == fixture_bytes("hubspot", s.name.split("/")[1])
        assert post_signed("hubspot", s.body).status_code == 200
