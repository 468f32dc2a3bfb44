"""HubSpot backfill against `responses`-mocked CRM v3 answers in the documented shapes
(search: https://developers.hubspot.com/docs/api/crm/search; batch read with
``propertiesWithHistory``: https://developers.hubspot.com/docs/api/crm/contacts; v4
association batch read), asserting the exact request bodies."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import responses
from responses import matchers
from sqlalchemy import select, text

from connectors.hubspot.backfill import CONTACT_PROPERTIES, DEAL_PROPERTIES, search_body
from cx_connector import backfill
from cx_connector.models import touchpoints
from tests.clock import SteppingClock as FakeClock
from tests.conftest import NOW, count, fixture_bytes

BASE = "https://api.hubapi.test"
CONTACT_SEARCH = f"{BASE}/crm/v3/objects/contacts/search"
DEAL_SEARCH = f"{BASE}/crm/v3/objects/deals/search"
CONTACT_READ = f"{BASE}/crm/v3/objects/contacts/batch/read"
DEAL_READ = f"{BASE}/crm/v3/objects/deals/batch/read"
DEAL_CONTACTS = f"{BASE}/crm/v4/associations/deals/contacts/batch/read"
CONTACT_HISTORY = ["lifecyclestage", "hs_feedback_last_ces_rating", "hs_feedback_last_nps_rating"]
RATE_LIMIT_BODY = {"status": "error", "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING",
                   "message": "You have reached your ten_secondly_rolling limit.",
                   "correlationId": "c0ffee00-0000-4000-8000-000000000000"}


def contact(cid: str, created: str = "2019-10-30T03:30:17.883Z", **props) -> dict:
    return {"id": cid, "properties": {"createdate": created, "hs_object_id": cid,
                                      "lastmodifieddate": "2019-12-07T16:50:06.678Z", **props},
            "createdAt": created, "updatedAt": "2019-12-07T16:50:06.678Z", "archived": False}


def deal(did: str, stage: str, created: str = "2024-02-01T09:00:00.000Z", **props) -> dict:
    return {"id": did, "properties": {"createdate": created, "hs_object_id": did, "dealstage": stage,
                                      "hs_lastmodifieddate": "2024-03-01T00:00:00.000Z", **props},
            "createdAt": created, "updatedAt": "2024-03-01T00:00:00.000Z", "archived": False}


def change(value: str, at: str, source: str = "CRM_UI") -> dict:
    return {"value": value, "timestamp": at, "sourceType": source, "sourceId": "userId:9191",
            "updatedByUserId": 9191}


def found(results: list, total: int | None = None, after: str | None = None) -> dict:
    body = {"total": len(results) if total is None else total, "results": results}
    if after:
        body["paging"] = {"next": {"after": after, "link": f"?after={after}"}}
    return body


def history(records: dict[str, dict[str, list]]) -> dict:
    return {"status": "COMPLETE", "results": [
        {"id": rid, "properties": {"hs_object_id": rid}, "propertiesWithHistory": props,
         "createdAt": "2019-10-30T03:30:17.883Z", "updatedAt": "2019-12-07T16:50:06.678Z",
         "archived": False} for rid, props in records.items()],
        "startedAt": "2026-06-15T12:00:00.000Z", "completedAt": "2026-06-15T12:00:00.100Z"}


def search(url: str, body: dict, answer: dict | None = None, **kw) -> None:
    responses.post(url, match=[matchers.json_params_matcher(body)], json=answer, **kw)


def contacts_search(from_id: str | None = None, after: str | None = None, since=None) -> dict:
    return search_body(CONTACT_PROPERTIES, "lastmodifieddate", from_id, after, since)


def deals_search(from_id: str | None = None, after: str | None = None, since=None) -> dict:
    return search_body(DEAL_PROPERTIES, "hs_lastmodifieddate", from_id, after, since)


def read(url: str, ids: list[str], props: list[str], answer: dict) -> None:
    responses.post(url, match=[matchers.json_params_matcher(
        {"inputs": [{"id": i} for i in ids], "properties": [], "propertiesWithHistory": props})],
        json=answer)


def run(rt, clock=None, **kw):
    return backfill.run(rt, "hubspot", clock=clock or FakeClock(NOW), **kw)


def ids(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(text("SELECT touchpoint_id FROM touchpoints")).scalars())


def test_search_request_is_the_documented_shape():
    since = NOW.replace(year=2025, month=1, day=1, hour=0)
    assert search_body(("email",), "lastmodifieddate", "508", "200", since) == {
        "filterGroups": [{"filters": [
            {"propertyName": "hs_object_id", "operator": "GT", "value": "508"},
            {"propertyName": "lastmodifieddate", "operator": "GTE", "value": "1735689600000"}]}],
        "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
        "properties": ["email"], "limit": 200, "after": "200"}


@responses.activate
def test_empty_account(rt, engine):
    search(CONTACT_SEARCH, contacts_search(), found([]))
    search(DEAL_SEARCH, deals_search(), found([]))
    summary = run(rt)
    assert summary["status"] == "ok" and summary["records"] == 0
    assert [r["status"] for r in summary["resources"]] == ["done", "done"]
    assert len(responses.calls) == 2 and count(engine, "touchpoints") == 0


@responses.activate
def test_contacts_and_deals_with_history_and_associations(rt, engine):
    search(CONTACT_SEARCH, contacts_search(), found([
        contact("512", email="Ann@Example.com", firstname="Ann", lastname="Example", phone="",
                mobilephone="+44 7700 900123", lifecyclestage="customer", hs_object_source="FORM"),
        contact("513", lifecyclestage="lead"),
    ]))
    read(CONTACT_READ, ["512", "513"], CONTACT_HISTORY, history({
        "512": {"lifecyclestage": [change("customer", "2020-02-01T10:00:00.000Z", "INTEGRATION"),
                                   change("lead", "2019-10-30T03:30:17.883Z", "FORM")],
                "hs_feedback_last_nps_rating": [change("9", "2020-03-01T10:00:00.250Z", "FORM")]},
        "513": {"lifecyclestage": [change("lead", "2019-11-01T00:00:00.000Z")]},
    }))
    search(DEAL_SEARCH, deals_search(), found([
        deal("9001", "closedwon", amount="1250.50", hs_object_source="CRM_UI"),
        deal("9002", "appointmentscheduled"),
    ]))
    read(DEAL_READ, ["9001", "9002"], ["dealstage"], history({
        "9001": {"dealstage": [change("closedwon", "2024-02-20T16:00:00.000Z"),
                               change("appointmentscheduled", "2024-02-01T09:00:00.000Z")]},
        "9002": {"dealstage": [change("appointmentscheduled", "2024-02-02T09:00:00.000Z")]},
    }))
    responses.post(DEAL_CONTACTS, match=[matchers.json_params_matcher(
        {"inputs": [{"id": "9001"}, {"id": "9002"}]})], json={"status": "COMPLETE", "results": [
            {"from": {"id": "9001"}, "to": [
                {"toObjectId": 513, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 3}]},
                {"toObjectId": 512, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 3}]}]}]})

    summary = run(rt)

    assert summary["status"] == "ok", summary
    assert ids(engine) == [
        "contact:512:created",
        "contact:512:hs_feedback_last_nps_rating:1583056800250",
        "contact:512:lifecyclestage:customer",
        "contact:512:lifecyclestage:lead",
        "contact:513:created",
        "contact:513:lifecyclestage:lead",
        "deal:9001:created",
        "deal:9001:stage:appointmentscheduled",
        "deal:9001:won",
        "deal:9002:created",
        "deal:9002:stage:appointmentscheduled",
    ]
    with engine.connect() as conn:
        won = conn.execute(select(touchpoints.c.value, touchpoints.c.occurred_at,
                                  touchpoints.c.customer_id)
                           .where(touchpoints.c.touchpoint_id == "deal:9001:won")).one()
        assert won.value == Decimal("1250.50") and won.occurred_at == datetime(2024, 2, 20, 16, tzinfo=UTC)
        ann = conn.execute(text("SELECT c.id, c.email, c.phone, c.name FROM customers c JOIN identities i "
                                "ON i.customer_id = c.id WHERE i.kind = 'id' AND i.value = '512'")).one()
        assert tuple(ann)[1:] == ("ann@example.com", "+447700900123", "Ann Example")
        assert won.customer_id == ann.id  # the deal is linked to its lowest-id contact
        channel = conn.execute(text("SELECT channel FROM touchpoints "
                                    "WHERE touchpoint_id = 'contact:512:created'")).scalar_one()
        assert channel == "web"  # hs_object_source FORM, as changeSource FORM of a webhook
    calls = [json.loads(c.request.body) for c in responses.calls]
    assert calls[1]["propertiesWithHistory"] == CONTACT_HISTORY


@responses.activate
def test_a_fact_delivered_by_webhook_and_by_backfill_is_one_touchpoint(rt, engine, post_signed):
    assert post_signed("hubspot", fixture_bytes("hubspot", "contact_creation.json")).status_code == 200
    assert post_signed("hubspot", fixture_bytes("hubspot", "deal_propertyChange_dealstage.json")) \
        .status_code == 200
    before = ids(engine)
    assert before == ["contact:508369434347:created", "deal:332507367156:stage:qualifiedtobuy"]
    search(CONTACT_SEARCH, contacts_search(), found([
        contact("508369434347", created="2026-06-25T07:19:29.536Z", hs_object_source="INTEGRATION")]))
    read(CONTACT_READ, ["508369434347"], CONTACT_HISTORY, history({"508369434347": {}}))
    search(DEAL_SEARCH, deals_search(), found([deal("332507367156", "qualifiedtobuy")]))
    read(DEAL_READ, ["332507367156"], ["dealstage"], history({"332507367156": {"dealstage": [
        change("qualifiedtobuy", "2026-06-25T07:19:32.793Z", "INTEGRATION")]}}))
    responses.post(DEAL_CONTACTS, json={"status": "COMPLETE", "results": []})
    summary = run(rt)
    assert summary["status"] == "ok"
    assert ids(engine) == sorted([*before, "deal:332507367156:created"])
    with engine.connect() as conn:
        created = conn.execute(select(touchpoints.c.occurred_at, touchpoints.c.delivery_id).where(
            touchpoints.c.touchpoint_id == "contact:508369434347:created")).one()
    assert created.delivery_id is not None  # the webhook's row, untouched


@responses.activate
def test_rate_limited_mid_way_backs_off_and_asks_the_same_page_again(rt, engine):
    search(CONTACT_SEARCH, contacts_search(), found([contact("1")], total=2, after="200"))
    read(CONTACT_READ, ["1"], CONTACT_HISTORY, history({"1": {}}))
    search(CONTACT_SEARCH, contacts_search(after="200"), RATE_LIMIT_BODY, status=429)
    search(CONTACT_SEARCH, contacts_search(after="200"), found([contact("2")], total=2))
    read(CONTACT_READ, ["2"], CONTACT_HISTORY, history({"2": {}}))
    clock = FakeClock(NOW)
    summary = run(rt, clock, only=["contacts"])
    assert summary["status"] == "ok"
    assert 2.0 in clock.sleeps  # no Retry-After: backoff
    assert ids(engine) == ["contact:1:created", "contact:2:created"]


@responses.activate
def test_resume_after_a_failure_on_page_3(rt, engine):
    search(CONTACT_SEARCH, contacts_search(), found([contact("1")], total=4, after="200"))
    read(CONTACT_READ, ["1"], CONTACT_HISTORY, history({"1": {}}))
    search(CONTACT_SEARCH, contacts_search(after="200"), found([contact("2")], total=4, after="400"))
    read(CONTACT_READ, ["2"], CONTACT_HISTORY, history({"2": {}}))
    search(CONTACT_SEARCH, contacts_search(after="400"), {"status": "error"}, status=502)
    summary = run(rt)
    assert summary["status"] == "failed" and summary["not_started"] == ["deals"]
    assert ids(engine) == ["contact:1:created", "contact:2:created"]

    responses.reset()
    search(CONTACT_SEARCH, contacts_search(after="400"), found([contact("3")], total=4, after="600"))
    read(CONTACT_READ, ["3"], CONTACT_HISTORY, history({"3": {}}))
    search(CONTACT_SEARCH, contacts_search(after="600"), found([contact("4")], total=4))
    read(CONTACT_READ, ["4"], CONTACT_HISTORY, history({"4": {}}))
    search(DEAL_SEARCH, deals_search(), found([]))
    summary = run(rt, resume=True)
    assert summary["status"] == "ok"
    assert [json.loads(c.request.body).get("after") for c in responses.calls
            if c.request.url == CONTACT_SEARCH] == ["400", "600"]
    assert ids(engine) == [f"contact:{i}:created" for i in (1, 2, 3, 4)]


@responses.activate
def test_the_10000_result_cap_starts_a_new_id_window(rt, engine):
    """When the next offset would pass the search API's cap, the next query asks for ids
    above the last one read, without an offset, and so never hits the cap."""
    since = NOW.replace(year=2026, month=1, day=1, hour=0)
    search(CONTACT_SEARCH, contacts_search(after="9800", since=since),
           found([contact("77001"), contact("77002")], total=25_000, after="10000"))
    read(CONTACT_READ, ["77001", "77002"], CONTACT_HISTORY, history({"77001": {}, "77002": {}}))
    search(CONTACT_SEARCH, contacts_search(from_id="77002", since=since),
           found([contact("77003")], total=1))
    read(CONTACT_READ, ["77003"], CONTACT_HISTORY, history({"77003": {}}))
    search(DEAL_SEARCH, deals_search(since=since), found([]))
    # start as if 49 pages of the first window were read already
    run(rt, since=since, only=["deals"])  # creates the state rows for a run with this --since
    from cx_connector import db
    from cx_connector.models import backfill_state
    with db.write(engine) as conn:
        conn.execute(backfill_state.insert().values(
            source="hubspot", resource="contacts", cursor=json.dumps({"after": "9800", "from_id": None}),
            since=since, status="interrupted", pages=49, records=9800, started_at=NOW, updated_at=NOW))
    summary = run(rt, resume=True)
    assert summary["status"] == "ok"
    bodies = [json.loads(c.request.body) for c in responses.calls if c.request.url == CONTACT_SEARCH]
    assert bodies[1]["filterGroups"][0]["filters"][0] == {"propertyName": "hs_object_id",
                                                         "operator": "GT", "value": "77002"}
    assert "after" not in bodies[1]
    assert ids(engine) == ["contact:77001:created", "contact:77002:created", "contact:77003:created"]


@responses.activate
def test_webhooks_interleaved_with_backfill_pages_are_neither_lost_nor_doubled(rt, engine, post_signed):
    """Contact 2 becomes a customer while page 2 is fetched: its webhook is stored, and the
    history on page 2 carries the same change: one row each."""
    hook = [{"eventId": 77, "subscriptionId": 1, "portalId": 48975575, "appId": 1,
             "occurredAt": 1767225600000, "subscriptionType": "contact.propertyChange",
             "attemptNumber": 0, "objectId": 2, "propertyName": "lifecyclestage",
             "propertyValue": "customer", "changeSource": "CRM_UI"}]
    search(CONTACT_SEARCH, contacts_search(), found([contact("1")], total=2, after="200"))
    read(CONTACT_READ, ["1"], CONTACT_HISTORY, history({"1": {"lifecyclestage": [
        change("lead", "2025-12-01T00:00:00.000Z")]}}))

    def page_2(request):
        assert post_signed("hubspot", json.dumps(hook)).status_code == 200
        return 200, {}, json.dumps(found([contact("2", lifecyclestage="customer")], total=1))

    responses.add_callback(responses.POST, CONTACT_SEARCH, callback=page_2,
                           match=[matchers.json_params_matcher(contacts_search(after="200"))])
    read(CONTACT_READ, ["2"], CONTACT_HISTORY, history({"2": {"lifecyclestage": [
        change("customer", "2026-01-01T00:00:00.000Z"), change("lead", "2025-06-01T00:00:00.000Z")]}}))
    summary = run(rt, only=["contacts"])
    assert summary["status"] == "ok"
    assert ids(engine) == ["contact:1:created", "contact:1:lifecyclestage:lead", "contact:2:created",
                           "contact:2:lifecyclestage:customer", "contact:2:lifecyclestage:lead"]


@responses.activate
def test_a_survey_answer_off_its_scale_is_skipped_by_name_and_the_rest_kept(rt, engine):
    search(CONTACT_SEARCH, contacts_search(), found([contact("1")]))
    read(CONTACT_READ, ["1"], CONTACT_HISTORY, history({"1": {"hs_feedback_last_nps_rating": [
        change("11", "2025-01-01T00:00:00.000Z"), change("8", "2024-01-01T00:00:00.000Z")]}}))
    summary = run(rt, only=["contacts"])
    assert summary["status"] == "ok" and summary["skipped"] == 1
    assert "contact 1 hs_feedback_last_nps_rating" in summary["resources"][0]["skipped_reasons"][0]
    assert ids(engine) == ["contact:1:created", "contact:1:hs_feedback_last_nps_rating:1704067200000"]


def test_backfill_budgets(rt):
    budgets = rt.connectors["hubspot"].backfill_budgets()
    assert (budgets["api"].limit, budgets["api"].per_seconds) == (100, 10.0)
    assert (budgets["search"].limit, budgets["search"].per_seconds) == (4, 1.0)


@responses.activate
def test_an_answer_that_is_not_json_is_retried_like_an_outage(rt, engine):
    responses.post(CONTACT_SEARCH, body="<html>502 Bad Gateway</html>", status=200,
                   content_type="text/html")
    search(CONTACT_SEARCH, contacts_search(), found([contact("1")]))
    read(CONTACT_READ, ["1"], CONTACT_HISTORY, history({"1": {}}))
    clock = FakeClock(NOW)
    summary = run(rt, clock, only=["contacts"])
    assert summary["status"] == "ok" and 2.0 in clock.sleeps
    assert ids(engine) == ["contact:1:created"]
