"""Zendesk backfill against `responses`-mocked, paginated Support API answers built from the
documented shapes (tests/fixtures/zendesk/api/), through the core driver and the real database."""

from __future__ import annotations

import copy
import json

import responses
from responses import matchers
from sqlalchemy import text

from cx_connector import backfill
from cx_connector.models import backfill_state
from tests.clock import SteppingClock as FakeClock
from tests.conftest import NOW, count, fixture_bytes, fixture_json

BASE = "https://acme.zendesk.test"
USERS = f"{BASE}/api/v2/incremental/users/cursor.json"
TICKETS = f"{BASE}/api/v2/incremental/tickets/cursor.json"
EVENTS = f"{BASE}/api/v2/incremental/ticket_events.json"
SHOW_MANY = f"{BASE}/api/v2/tickets/show_many.json"
SURVEYS = f"{BASE}/api/v2/guide/survey_responses"
RATINGS = f"{BASE}/api/v2/satisfaction_ratings.json"


def api(name: str) -> dict:
    return copy.deepcopy(fixture_json("zendesk", "api", name))


def ticket(tid: int, requester: int, created: str, **kw) -> dict:
    t = api("ticket.json")
    t.update(id=tid, requester_id=requester, created_at=created, url=f"{BASE}/api/v2/tickets/{tid}.json")
    t.update(kw)
    return t


def user(uid: int, email: str | None, role: str = "end-user", **kw) -> dict:
    u = api("user.json")
    u.update(id=uid, email=email, role=role, name=kw.pop("name", f"User {uid}"), phone=kw.pop("phone", None))
    u.update(kw)
    return u


def status_event(tid: int, at: str, current: str, previous: str | None, eid: int = 1) -> dict:
    change = {"id": eid * 10, "via": "Web form", "via_reference_id": None, "status": current,
              "event_type": "Change" if previous else "Create"}
    if previous:
        change["previous_value"] = previous
    return {"id": eid, "ticket_id": tid, "timestamp": 0, "created_at": at, "updater_id": -1,
            "via": "Web form", "event_type": "Audit", "child_events": [change]}


def export(key: str, records: list, after: str | None = None, end: bool = True) -> dict:
    return {key: records, "after_cursor": after,
            "after_url": f"{BASE}/api/v2/incremental/{key}/cursor.json?cursor={after}" if after else None,
            "before_cursor": None, "before_url": None, "end_of_stream": end}


def get(url: str, params: dict, body: dict | None = None, **kw) -> None:
    responses.get(url, match=[matchers.query_param_matcher(params)], json=body, **kw)


def empty_everything(*, users=True, tickets=True, events=True, surveys=True, ratings=True) -> None:
    if users:
        get(USERS, {"start_time": "0", "per_page": "1000"}, export("users", []))
        get(f"{BASE}/api/v2/users/count.json", {}, {"count": {"value": 0, "refreshed_at": None}})
    if tickets:
        get(TICKETS, {"start_time": "0", "per_page": "1000"}, export("tickets", []))
        get(f"{BASE}/api/v2/tickets/count.json", {}, {"count": {"value": 0, "refreshed_at": None}})
    if events:
        get(EVENTS, {"start_time": "0", "include": "comment_events"},
            {"ticket_events": [], "next_page": None, "count": 0, "end_of_stream": True,
             "end_time": 1700000000})
    if surveys:
        get(SURVEYS, {"page[size]": "100"}, {"survey_responses": [], "meta": {"has_more": False}})
    if ratings:
        get(RATINGS, {"score": "received", "page[size]": "100"},
            {"satisfaction_ratings": [], "meta": {"has_more": False}})


def run(rt, clock=None, **kw):
    return backfill.run(rt, "zendesk", clock=clock or FakeClock(NOW), **kw)


def ids(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(text("SELECT touchpoint_id FROM touchpoints")).scalars())


def states(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        return {r["resource"]: dict(r) for r in conn.execute(backfill_state.select()).mappings()}


@responses.activate
def test_empty_account_finishes_every_resource_with_nothing(rt, engine):
    empty_everything()
    summary = run(rt)
    assert summary["status"] == "ok" and summary["records"] == 0 and summary["new_touchpoints"] == 0
    assert [r["resource"] for r in summary["resources"]] == [
        "users", "tickets", "ticket_events", "csat_survey_responses", "satisfaction_ratings"]
    assert {k: v["status"] for k, v in states(engine).items()} == dict.fromkeys(
        ["users", "tickets", "ticket_events", "csat_survey_responses", "satisfaction_ratings"], "done")
    assert count(engine, "touchpoints") == 0


@responses.activate
def test_full_history_through_the_webhook_normaliser(rt, engine):
    get(USERS, {"start_time": "0", "per_page": "1000"}, export("users", [
        user(8447388090494, "Bob@Example.com", name="Bob", phone="+44 20 7946 0011",
             created_at="2024-12-01T09:00:00Z"),
        api("user.json"),  # the documented example is an agent: not a customer
        user(5, "gone@example.com", active=False, created_at="2020-01-01T00:00:00Z"),
    ]))
    get(f"{BASE}/api/v2/users/count.json", {}, {"count": {"value": 3, "refreshed_at": None}})
    get(TICKETS, {"start_time": "0", "per_page": "1000"}, export("tickets", [
        api("ticket.json"),
        ticket(5158, 8447388090494, "2025-01-08T10:12:07Z", via={"channel": "web_service"}),
    ], after="c1", end=False))
    get(f"{BASE}/api/v2/tickets/count.json", {}, {"count": {"value": 3, "refreshed_at": None}})
    get(TICKETS, {"cursor": "c1", "per_page": "1000"}, export("tickets", [
        ticket(77, 7881, "2024-03-01T08:00:00Z", status="solved")]))
    event = api("ticket_event.json")
    event["ticket_id"] = 35436
    get(EVENTS, {"start_time": "0", "include": "comment_events"}, {
        "ticket_events": [event, status_event(5158, "2025-01-08T16:45:20Z", "solved", "open", 2),
                          status_event(77, "2024-03-01T08:00:00Z", "solved", None, 3)],
        "next_page": f"{BASE}/api/v2/incremental/ticket_events.json?start_time=1736354720",
        "count": 3, "end_of_stream": True, "end_time": 1736354720})
    get(SHOW_MANY, {"ids": "35436,5158,77"}, {"tickets": [
        api("ticket.json"), ticket(5158, 8447388090494, "2025-01-08T10:12:07Z",
                                   via={"channel": "web_service"}),
        ticket(77, 7881, "2024-03-01T08:00:00Z", status="solved")]})
    get(SURVEYS, {"page[size]": "100"}, {"survey_responses": [api("survey_response.json")],
                                         "meta": {"has_more": False, "after_cursor": "x"}})
    get(RATINGS, {"score": "received", "page[size]": "100"},
        {"satisfaction_ratings": [api("satisfaction_rating.json")], "meta": {"has_more": False}})

    summary = run(rt)

    assert summary["status"] == "ok", summary
    assert ids(engine) == [
        "ticket:209:csat:20120202T103259Z",
        "ticket:35436:comment:91048994488",
        "ticket:35436:opened",
        "ticket:35436:solved:20151015T021650Z",
        "ticket:5158:opened",
        "ticket:5158:solved:20250108T164520Z",
        "ticket:77:opened",
        "ticket:77:solved:20240301T080000Z",
        "ticket:99:csat:20240814T120000Z",
        "user:5:created",
        "user:8447388090494:created",
    ]
    with engine.connect() as conn:
        solved = conn.execute(text("SELECT attributes, customer_source_id, channel FROM touchpoints "
                                   "WHERE touchpoint_id = 'ticket:5158:solved:20250108T164520Z'")).one()
        attrs = solved.attributes if isinstance(solved.attributes, dict) else json.loads(solved.attributes)
        assert attrs["resolution_seconds"] == 23593 and solved.customer_source_id == "8447388090494"
        assert solved.channel == "api"
        csat = conn.execute(text("SELECT rating_score, rating_scale_max, customer_source_id FROM touchpoints "
                                 "WHERE touchpoint_id = 'ticket:99:csat:20240814T120000Z'")).one()
        assert (csat.rating_score, csat.rating_scale_max, csat.customer_source_id) == (4, 5, "4398080151295")
        bob = conn.execute(text("SELECT c.email, c.phone, c.name FROM customers c JOIN identities i "
                                "ON i.customer_id = c.id WHERE i.value = '8447388090494'")).one()
        assert tuple(bob) == ("bob@example.com", "+442079460011", "Bob")
        gone = conn.execute(text("SELECT gone_at FROM identities WHERE kind = 'id' AND value = '5'")).scalar()
        assert gone is not None
        # the agent of the documented example is no customer
        assert conn.execute(text("SELECT count(*) FROM identities WHERE value = '35436' "
                                 "AND kind = 'id'")).scalar() == 0
    assert summary["resources"][0]["records"] == 3 and summary["resources"][1]["pages"] == 2


@responses.activate
def test_a_fact_delivered_by_webhook_and_by_backfill_is_one_touchpoint(rt, engine, post_signed):
    """The webhook's ticket.created and status_changed (the shared samples) and the export's
    ticket and status change of the same ticket give the same touchpoint ids and customer."""
    assert post_signed("zendesk", fixture_bytes("zendesk", "ticket_created.json")).status_code == 200
    assert post_signed("zendesk", fixture_bytes("zendesk", "ticket_status_changed.json")).status_code == 200
    before = ids(engine)
    assert before == ["ticket:5158:opened", "ticket:5158:solved:20250108T164520Z"]
    with engine.connect() as conn:
        customer = conn.execute(text("SELECT DISTINCT customer_id FROM touchpoints")).scalar_one()
    t5158 = ticket(5158, 8447388090494, "2025-01-08T10:12:07Z", via={"channel": "web_service"})
    empty_everything(tickets=False, events=False)
    get(TICKETS, {"start_time": "0", "per_page": "1000"}, export("tickets", [t5158]))
    get(f"{BASE}/api/v2/tickets/count.json", {}, {"count": {"value": 1, "refreshed_at": None}})
    get(EVENTS, {"start_time": "0", "include": "comment_events"}, {
        "ticket_events": [status_event(5158, "2025-01-08T16:45:20Z", "solved", "open")],
        "end_of_stream": True, "end_time": 1736354720, "count": 1, "next_page": None})
    get(SHOW_MANY, {"ids": "5158"}, {"tickets": [t5158]})
    summary = run(rt)
    assert summary["status"] == "ok" and summary["new_touchpoints"] == 0
    assert ids(engine) == before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT DISTINCT customer_id FROM touchpoints")).scalar_one() == customer
        assert conn.execute(text("SELECT count(*) FROM customers")).scalar_one() == 1


@responses.activate
def test_rate_limited_mid_way_waits_retry_after_then_carries_on(rt, engine):
    empty_everything(tickets=False)
    get(TICKETS, {"start_time": "0", "per_page": "1000"},
        export("tickets", [ticket(1, 11, "2024-01-01T00:00:00Z")], after="c1", end=False))
    get(f"{BASE}/api/v2/tickets/count.json", {}, {"count": {"value": 2, "refreshed_at": None}})
    responses.get(TICKETS, match=[matchers.query_param_matcher({"cursor": "c1", "per_page": "1000"})],
                  status=429, headers={"Retry-After": "45"},
                  body=fixture_bytes("zendesk", "error_429_incremental_export.json"))
    get(TICKETS, {"cursor": "c1", "per_page": "1000"},
        export("tickets", [ticket(2, 12, "2024-01-02T00:00:00Z")]))
    clock = FakeClock(NOW)
    waits: list[str] = []
    summary = run(rt, clock, report=lambda p: waits.append(p.message) if p.kind == "wait" else None)
    assert summary["status"] == "ok"
    assert 45.0 in clock.sleeps
    assert waits == ["rate limited; waiting 45 s (Retry-After)"]
    assert ids(engine) == ["ticket:1:opened", "ticket:2:opened"]


@responses.activate
def test_incremental_exports_stay_within_their_own_limit(rt, engine):
    """10 export requests a minute: the 11th page waits for the window, whatever the
    account's general budget."""
    empty_everything(tickets=False)
    get(f"{BASE}/api/v2/tickets/count.json", {}, {"count": {"value": 12, "refreshed_at": None}})
    for i in range(12):
        params = {"per_page": "1000", **({"cursor": f"c{i}"} if i else {"start_time": "0"})}
        get(TICKETS, params, export("tickets", [ticket(100 + i, 7, "2024-01-01T00:00:00Z")],
                                    after=f"c{i + 1}", end=i == 11))
    clock = FakeClock(NOW)
    summary = run(rt, clock, only=["tickets"])
    assert summary["status"] == "ok" and summary["records"] == 12
    assert clock.elapsed >= 60.0  # the 11th export request waited for the first to leave the window


@responses.activate
def test_resume_after_a_failure_on_page_3(rt, engine):
    empty_everything(tickets=False)
    get(f"{BASE}/api/v2/tickets/count.json", {}, {"count": {"value": 4, "refreshed_at": None}})
    get(TICKETS, {"start_time": "0", "per_page": "1000"},
        export("tickets", [ticket(1, 11, "2024-01-01T00:00:00Z")], after="c1", end=False))
    get(TICKETS, {"cursor": "c1", "per_page": "1000"},
        export("tickets", [ticket(2, 12, "2024-01-02T00:00:00Z")], after="c2", end=False))
    responses.get(TICKETS, match=[matchers.query_param_matcher({"cursor": "c2", "per_page": "1000"})],
                  status=503, body="upstream unavailable")
    summary = run(rt, only=["tickets"])
    assert summary["status"] == "failed"
    assert "--resume" in summary["error"] and "503" in summary["error"]
    saved = states(engine)["tickets"]
    assert (saved["status"], saved["cursor"], saved["pages"], saved["records"]) == ("failed", "c2", 2, 2)
    assert ids(engine) == ["ticket:1:opened", "ticket:2:opened"]
    assert count(engine, "job_runs", "WHERE job = 'backfill' AND status = 'failed'") == 1

    responses.reset()
    get(TICKETS, {"cursor": "c2", "per_page": "1000"},
        export("tickets", [ticket(3, 13, "2024-01-03T00:00:00Z")], after="c3", end=False))
    get(TICKETS, {"cursor": "c3", "per_page": "1000"},
        export("tickets", [ticket(4, 14, "2024-01-04T00:00:00Z")]))
    summary = run(rt, resume=True)
    assert summary["status"] == "ok" and summary["resumed"]
    assert [c.request.params.get("cursor") for c in responses.calls] == ["c2", "c3"]
    assert ids(engine) == [f"ticket:{i}:opened" for i in (1, 2, 3, 4)]
    saved = states(engine)["tickets"]
    assert (saved["status"], saved["pages"], saved["records"]) == ("done", 4, 4)


@responses.activate
def test_webhooks_interleaved_with_backfill_pages_are_neither_lost_nor_doubled(rt, engine, post_signed):
    """While the export runs, the ticket on page 2 is solved and commented (webhooks), and a
    change already on page 1 is delivered again by its webhook: every fact is there once."""
    t5158 = ticket(5158, 8447388090494, "2025-01-08T10:12:07Z", via={"channel": "web_service"})
    t6 = ticket(6, 66, "2025-01-08T11:00:00Z")
    empty_everything(tickets=False, events=False)
    get(TICKETS, {"start_time": "0", "per_page": "1000"}, export("tickets", [t5158, t6]))
    get(f"{BASE}/api/v2/tickets/count.json", {}, {"count": {"value": 2, "refreshed_at": None}})
    get(EVENTS, {"start_time": "0", "include": "comment_events"}, {
        "ticket_events": [status_event(5158, "2025-01-08T16:45:20Z", "solved", "open")],
        "end_of_stream": False, "end_time": 1736354720, "count": 1,
        "next_page": f"{EVENTS}?start_time=1736354720"})
    get(SHOW_MANY, {"ids": "5158"}, {"tickets": [t5158]})
    comment = json.loads(fixture_bytes("zendesk", "ticket_comment_added.json"))

    def page_2(request):
        # webhooks arrive while page 2 is being fetched: the page-1 solve again (a redelivery
        # with a new event id) and a comment that page 2 also carries
        solved = json.loads(fixture_bytes("zendesk", "ticket_status_changed.json"))
        solved["id"] = "1f0c3a52-8d4e-4a50-9a8e-000000000001"
        assert post_signed("zendesk", json.dumps(solved)).status_code == 200
        assert post_signed("zendesk", json.dumps(comment)).status_code == 200
        cid = int(comment["event"]["comment"]["id"])
        return 200, {}, json.dumps({"ticket_events": [{
            "id": 9, "ticket_id": 5158, "created_at": comment["time"][:19] + "Z", "event_type": "Audit",
            "child_events": [{"id": cid, "type": "Comment", "event_type": "Comment", "public": True,
                              "author_id": 8447388090494}]}],
            "end_of_stream": True, "end_time": 1736354999, "count": 1, "next_page": None})

    responses.add_callback(responses.GET, EVENTS, callback=page_2, match=[
        matchers.query_param_matcher({"start_time": "1736354720", "include": "comment_events"})])
    get(SHOW_MANY, {"ids": "5158"}, {"tickets": [t5158]})
    summary = run(rt)
    assert summary["status"] == "ok"
    assert ids(engine) == sorted(["ticket:5158:opened", "ticket:6:opened",
                                  "ticket:5158:solved:20250108T164520Z",
                                  f"ticket:5158:comment:{comment['event']['comment']['id']}"])


@responses.activate
def test_ticket_events_of_a_ticket_zendesk_no_longer_returns_are_skipped_by_name(rt, engine):
    empty_everything(events=False, tickets=False, users=False)
    get(EVENTS, {"start_time": "0", "include": "comment_events"}, {
        "ticket_events": [status_event(404, "2024-05-01T00:00:00Z", "solved", "open"),
                          {**status_event(405, "2024-05-02T00:00:00Z", "new", None, 5),
                           "child_events": [
                               {"id": 51, "event_type": "Create", "requester_id": 4242},
                               {"id": 52, "event_type": "Create", "status": "solved"}]}],
        "end_of_stream": True, "end_time": 1714608000, "count": 2, "next_page": None})
    get(SHOW_MANY, {"ids": "404,405"}, {"tickets": []})
    summary = run(rt, only=["ticket_events"])
    assert summary["status"] == "ok" and summary["skipped"] == 1
    assert summary["resources"][0]["skipped_reasons"] == [
        "ticket 404: Zendesk no longer returns it (deleted); its status changes and comments are "
        "not imported"]
    # the creation audit names the requester: a ticket created solved is still recorded
    assert ids(engine) == ["ticket:405:solved:20240502T000000Z"]


@responses.activate
def test_csat_survey_responses_not_on_the_plan_finish_with_a_note(rt, engine):
    responses.get(SURVEYS, status=403, json={"error": "Forbidden"})
    get(RATINGS, {"score": "received", "page[size]": "100"}, {
        "satisfaction_ratings": [api("satisfaction_rating.json")],
        "meta": {"has_more": True, "after_cursor": "r1"}})
    get(RATINGS, {"score": "received", "page[size]": "100", "page[after]": "r1"}, {
        "satisfaction_ratings": [{**api("satisfaction_rating.json"), "id": 2, "ticket_id": 210,
                                  "score": "bad", "reason": "The issue took too long to resolve"}],
        "meta": {"has_more": False}})
    summary = run(rt, only=["csat_survey_responses", "satisfaction_ratings"])
    assert summary["status"] == "ok"
    survey, ratings = summary["resources"]
    assert survey["status"] == "done" and "not available on this account (HTTP 403" in \
        survey["skipped_reasons"][0]
    assert ratings["pages"] == 2
    assert ids(engine) == ["ticket:209:csat:20120202T103259Z", "ticket:210:csat:20120202T103259Z"]


@responses.activate
def test_since_is_sent_as_start_time_to_every_export(rt, engine):
    since = NOW.replace(year=2025, month=1, day=1, hour=0)
    epoch = str(int(since.timestamp()))
    get(USERS, {"start_time": epoch, "per_page": "1000"}, export("users", []))
    get(TICKETS, {"start_time": epoch, "per_page": "1000"}, export("tickets", []))
    get(EVENTS, {"start_time": epoch, "include": "comment_events"},
        {"ticket_events": [], "end_of_stream": True, "end_time": int(epoch), "count": 0, "next_page": None})
    get(SURVEYS, {"page[size]": "100", "filter[created_at_start]": epoch},
        {"survey_responses": [], "meta": {"has_more": False}})
    get(RATINGS, {"score": "received", "page[size]": "100", "start_time": epoch},
        {"satisfaction_ratings": [], "meta": {"has_more": False}})
    summary = run(rt, since=since)
    assert summary["status"] == "ok" and summary["since"] == since
    assert len(responses.calls) == 5  # no count requests: with --since they would mislead the ETA
    assert all(s["since"] == since for s in states(engine).values())


@responses.activate
def test_authentication_failure_stops_at_once_with_what_to_do(rt, engine):
    responses.get(USERS, status=401, json={"error": "Couldn't authenticate you"})
    summary = run(rt)
    assert summary["status"] == "failed" and len(responses.calls) == 1
    assert "check connectors.zendesk credentials" in summary["error"]
    assert summary["not_started"] == ["tickets", "ticket_events", "csat_survey_responses",
                                      "satisfaction_ratings"]


def test_backfill_budgets_include_the_export_limit(rt):
    budgets = rt.connectors["zendesk"].backfill_budgets()
    assert budgets["export"].limit == 10 and budgets["export"].per_seconds == 60.0
    assert budgets["api"].limit == 200
