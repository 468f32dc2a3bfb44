"""The enrichment job end to end: ids arrive by webhook, the job looks them up on the platform
(HubSpot's API mocked with ``responses``) and links them, batch by batch."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import responses
from click.testing import CliRunner
from sqlalchemy import select, update

from cx_connector import enrich, scheduler
from cx_connector.cli import main
from cx_connector.models import customers, identities, job_runs, touchpoints
from tests.conftest import NOW, TEST_CONNECTORS

API = "https://api.hubapi.test"
CONTACTS = f"{API}/crm/v3/objects/contacts/batch/read"
DEAL_ASSOC = f"{API}/crm/v4/associations/deals/contacts/batch/read"
PROPS = ["email", "firstname", "lastname", "phone", "hs_merged_object_ids"]


def ev(kind, oid, n=0, **kw):
    return {"eventId": n, "subscriptionId": 1, "portalId": 7, "appId": 1,
            "occurredAt": 1_781_000_000_000 + n, "subscriptionType": kind, "attemptNumber": 0,
            "objectId": oid, "changeSource": "CRM_UI", **kw}


def contact(cid, email=None, first=None):
    return {"id": cid, "properties": {"email": email, "firstname": first, "lastname": None,
                                      "phone": None, "hs_merged_object_ids": None}}


def read_body(ids):
    return {"inputs": [{"id": i} for i in ids], "properties": PROPS, "propertiesWithHistory": []}


def ident(engine, value):
    with engine.connect() as conn:
        return conn.execute(select(identities).where(identities.c.source == "hubspot",
                                                     identities.c.value == value)).mappings().one()


def email_of(engine, customer_id):
    with engine.connect() as conn:
        return conn.execute(select(customers.c.email).where(customers.c.id == customer_id)).scalar()


@pytest.fixture
def seeded(post_signed):
    post_signed("hubspot", [ev("contact.creation", 101, 1), ev("contact.creation", 102, 2),
                            ev("deal.creation", 332507367156, 3),
                            ev("contact.creation", 104, 4),
                            ev("contact.propertyChange", 104, 5, propertyName="email",
                               propertyValue="known@example.com")])
    post_signed("generic", {"touchpoint_id": "g1", "occurred_at": "2026-05-01T10:00:00Z",
                            "customer": {"source_id": "g-1"}, "kind": "contact_created"})


@responses.activate
def test_job_links_ids_marks_deleted_ones_gone_and_is_done_afterwards(rt, engine, seeded):
    responses.post(DEAL_ASSOC, json={"status": "COMPLETE", "results": [
        {"from": {"id": "332507367156"}, "to": [{"toObjectId": 101, "associationTypes": []}]}]})
    responses.post(CONTACTS, status=207, json={
        "status": "COMPLETE", "results": [contact("101", "Ann@Example.com", "Ann")],
        "errors": [{"category": "OBJECT_NOT_FOUND", "context": {"ids": ["102"]}}]})

    report = enrich.enrich(rt)

    assert report["hubspot"] == {"candidates": 3, "looked_up": 3, "linked": 2, "gone": 1,
                                 "left": 0, "stopped": None, "stopped_by": None}
    assert "generic" not in report  # generic cannot look up
    assert all(v["candidates"] == 0 for k, v in report.items() if k != "hubspot")
    assert json.loads(responses.calls[0].request.body) == {"inputs": [{"id": "332507367156"}]}
    # contact 104 already has an email: not asked for
    assert json.loads(responses.calls[1].request.body) == read_body(["101", "102"])
    ann, deal, gone = ident(engine, "101"), ident(engine, "deal:332507367156"), ident(engine, "102")
    assert deal["customer_id"] == ann["customer_id"]  # the deal's customer merged into Ann's
    assert email_of(engine, ann["customer_id"]) == "ann@example.com"
    assert gone["gone_at"] == NOW and ann["gone_at"] is None
    assert {ann["enriched_at"], deal["enriched_at"], gone["enriched_at"]} == {NOW}
    assert ident(engine, "104")["enriched_at"] is None
    with engine.connect() as conn:  # the deal's touchpoint now belongs to Ann
        owner = conn.execute(select(touchpoints.c.customer_id).where(
            touchpoints.c.touchpoint_id == "deal:332507367156:created")).scalar()
    assert owner == ann["customer_id"]

    calls = len(responses.calls)
    assert enrich.enrich(rt)["hubspot"] == {"candidates": 0, "looked_up": 0, "linked": 0, "gone": 0,
                                            "left": 0, "stopped": None, "stopped_by": None}
    assert len(responses.calls) == calls


@responses.activate
def test_ids_still_without_email_are_retried_a_day_later_and_forgotten_people_never(rt, engine,
                                                                                     post_signed):
    post_signed("hubspot", [ev("contact.creation", 201, 1), ev("contact.creation", 202, 2)])
    responses.post(CONTACTS, json={"status": "COMPLETE",
                                   "results": [contact("201"), contact("202")]})
    assert enrich.enrich(rt)["hubspot"]["looked_up"] == 2
    assert enrich.enrich(rt)["hubspot"]["candidates"] == 0
    with engine.begin() as conn:  # 202 was erased for privacy
        conn.execute(update(customers).where(customers.c.id == ident(engine, "202")["customer_id"])
                     .values(redacted_at=NOW))
    rt.clock = lambda: NOW + enrich.RETRY_AFTER + timedelta(seconds=1)
    assert enrich.enrich(rt)["hubspot"]["looked_up"] == 1
    assert json.loads(responses.calls[-1].request.body) == read_body(["201"])


@responses.activate
def test_rate_limit_mid_way_keeps_the_done_batches_and_reports_what_is_left(rt, engine, post_signed):
    ids = list(range(1000, 1150))
    for chunk in (ids[:90], ids[90:]):  # HubSpot sends fewer than 100 events per request
        post_signed("hubspot", [ev("contact.creation", i, i) for i in chunk])
    responses.post(CONTACTS, json={"status": "COMPLETE",
                                   "results": [contact(str(i), f"c{i}@example.com") for i in ids[:100]]})
    responses.post(CONTACTS, status=429, json={
        "status": "error", "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING",
        "message": "You have reached your ten_secondly_rolling limit."})

    run = scheduler.run_job(rt, "enrich", enrich.enrich)

    assert run["status"] == "ok"
    details = run["details"]["hubspot"]
    assert (details["looked_up"], details["linked"], details["left"]) == (100, 100, 50)
    assert details["stopped"].startswith("rate limited") and details["stopped_by"] == "rate_limited"
    assert [json.loads(c.request.body) for c in responses.calls] == [
        read_body([str(i) for i in ids[:100]]), read_body([str(i) for i in ids[100:]])]
    assert ident(engine, "1000")["enriched_at"] == NOW
    assert ident(engine, "1100")["enriched_at"] is None
    assert email_of(engine, ident(engine, "1099")["customer_id"]) == "c1099@example.com"

    responses.replace(responses.POST, CONTACTS, json={
        "status": "COMPLETE", "results": [contact(str(i), f"c{i}@example.com") for i in ids[100:]]})
    again = enrich.enrich(rt)["hubspot"]
    assert (again["candidates"], again["looked_up"], again["left"]) == (50, 50, 0)
    assert json.loads(responses.calls[-1].request.body) == read_body([str(i) for i in ids[100:]])


@responses.activate
def test_outage_stops_cleanly(rt, post_signed):
    post_signed("hubspot", [ev("contact.creation", 5, 1)])
    responses.post(CONTACTS, status=503, body="upstream down")
    report = enrich.enrich(rt)["hubspot"]
    assert report["stopped"].startswith("platform unavailable") and report["left"] == 1
    assert report["stopped_by"] == "unavailable"


@responses.activate
def test_refused_token_fails_the_run_loudly(rt, engine, post_signed):
    post_signed("hubspot", [ev("contact.creation", 5, 1)])
    responses.post(CONTACTS, status=401, json={"status": "error", "category": "INVALID_AUTHENTICATION"})
    run = scheduler.run_job(rt, "enrich", enrich.enrich)
    assert run["status"] == "failed" and "connectors.hubspot credentials" in run["error"]
    assert ident(engine, "5")["enriched_at"] is None
    with engine.connect() as conn:
        assert conn.execute(select(job_runs.c.status)).scalar() == "failed"


@responses.activate
def test_limit_and_source(rt, post_signed):
    post_signed("hubspot", [ev("contact.creation", i, i) for i in (1, 2, 3)])
    responses.post(CONTACTS, json={"status": "COMPLETE", "results": []})
    report = enrich.enrich(rt, source="hubspot", limit=2)["hubspot"]
    assert (report["candidates"], report["looked_up"], report["left"]) == (3, 2, 1)
    assert json.loads(responses.calls[0].request.body) == read_body(["1", "2"])
    assert enrich.enrich(rt, source="generic") == {}


@responses.activate
def test_webhooks_never_call_the_platform(post_signed):
    # responses refuses any request not registered: a lookup inside the webhook would fail here
    r = post_signed("hubspot", [ev("contact.creation", 9, 1), ev("deal.creation", 10, 2)])
    assert r.get_json()["status"] == "processed"
    assert len(responses.calls) == 0


def test_enrich_is_a_scheduled_job(rt):
    [job] = [j for j in scheduler.jobs() if j.id == "enrich"]
    assert job.func is enrich.enrich
    assert job.every(rt.config) == rt.config.schedule.enrich_every


@responses.activate
def test_cli_enrich(tmp_path, database_url, post_signed):
    cfg = tmp_path / "cx.yaml"
    hub = TEST_CONNECTORS["hubspot"]
    cfg.write_text(f"database_url: {database_url}\nconnectors:\n  hubspot:\n"
                   + "".join(f"    {k}: {v}\n" for k, v in hub.items()))
    post_signed("hubspot", [ev("contact.creation", 7, 1)])
    responses.post(CONTACTS, json={"status": "COMPLETE", "results": [contact("7", "g@example.com")]})
    r = CliRunner().invoke(main, ["--config", str(cfg), "enrich", "--source", "hubspot", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = json.loads(r.output)
    assert run["status"] == "ok" and run["details"]["hubspot"]["linked"] == 1
    r = CliRunner().invoke(main, ["--config", str(cfg), "enrich"], catch_exceptions=False)
    assert r.exit_code == 0 and "hubspot" in r.output and "LOOKED_UP" in r.output
    r = CliRunner().invoke(main, ["--config", str(cfg), "enrich", "--source", "zendesk"])
    assert r.exit_code == 2 and "zendesk is not enabled" in r.output
    responses.replace(responses.POST, CONTACTS, status=401, json={})
    post_signed("hubspot", [ev("contact.creation", 8, 2)])
    r = CliRunner().invoke(main, ["--config", str(cfg), "enrich"], catch_exceptions=False)
    assert r.exit_code == 1 and "error:" in r.output


@responses.activate
@pytest.mark.parametrize(("status", "stopped_by"), [(503, "unavailable"), (429, "rate_limited")])
def test_cli_enrich_exits_1_when_a_platform_cuts_the_run_short(tmp_path, database_url, post_signed,
                                                               status, stopped_by):
    """Nothing silent: the run stops cleanly (the job is ok, the batches done are kept), but a
    script running the command must see that ids were left, not exit code 0."""
    cfg = tmp_path / "cx.yaml"
    hub = TEST_CONNECTORS["hubspot"]
    cfg.write_text(f"database_url: {database_url}\nconnectors:\n  hubspot:\n"
                   + "".join(f"    {k}: {v}\n" for k, v in hub.items()))
    post_signed("hubspot", [ev("contact.creation", 7, 1)])
    responses.post(CONTACTS, status=status, json={"status": "error", "message": "try later"})

    r = CliRunner().invoke(main, ["--config", str(cfg), "enrich"], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert "LOOKED_UP" in r.stdout  # the table still shows what was done
    assert r.stderr.startswith("error: hubspot stopped the lookups, 1 id left: ")
    assert "run `cx-connector enrich` again later" in r.stderr

    r = CliRunner().invoke(main, ["--config", str(cfg), "enrich", "--json"], catch_exceptions=False)
    assert r.exit_code == 1
    run = json.loads(r.stdout)
    assert run["status"] == "ok" and run["details"]["hubspot"]["stopped_by"] == stopped_by


@responses.activate
def test_cli_enrich_exits_0_when_every_candidate_was_looked_up_or_none_left(tmp_path, database_url,
                                                                            post_signed):
    cfg = tmp_path / "cx.yaml"
    hub = TEST_CONNECTORS["hubspot"]
    cfg.write_text(f"database_url: {database_url}\nconnectors:\n  hubspot:\n"
                   + "".join(f"    {k}: {v}\n" for k, v in hub.items()))
    r = CliRunner().invoke(main, ["--config", str(cfg), "enrich", "--json"], catch_exceptions=False)
    assert r.exit_code == 0 and json.loads(r.stdout)["details"]["hubspot"]["stopped_by"] is None
