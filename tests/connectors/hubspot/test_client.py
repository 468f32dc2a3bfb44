"""HubSpot lookup (enrichment) against mocked API answers in HubSpot's documented shapes,
asserting the exact requests: contacts batch read, v4 association batch read, threads."""

from __future__ import annotations

import json

import pytest
import responses

from connectors.hubspot.connector import HubSpotConnector, HubSpotSettingsSchema
from cx_connector.connector import CustomerRef, Link
from cx_connector.errors import PlatformAuthError, PlatformRateLimited
from tests.conftest import NOW, TEST_CONNECTORS

API = "https://api.hubapi.test"
CONTACTS = f"{API}/crm/v3/objects/contacts/batch/read"
PROPS = ["email", "firstname", "lastname", "phone", "hs_merged_object_ids"]


def connector():
    return HubSpotConnector(HubSpotSettingsSchema().load(TEST_CONNECTORS["hubspot"]))


def contact(cid, email=None, first=None, last=None, phone=None, merged=None):
    return {"id": cid, "properties": {"email": email, "firstname": first, "lastname": last,
                                      "phone": phone, "hs_merged_object_ids": merged,
                                      "hs_object_id": cid},
            "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-02T00:00:00Z",
            "archived": False}


def read_body(ids, properties=PROPS):
    return {"inputs": [{"id": i} for i in ids], "properties": properties, "propertiesWithHistory": []}


def body_of(call):
    return json.loads(call.request.body)


@responses.activate
def test_contacts_are_read_in_one_batch_with_the_token():
    responses.post(CONTACTS, status=207, json={
        "status": "COMPLETE",
        "results": [contact("101", "Ann@Example.com", "Ann", "Lee", "+1 555 0100 200"),
                    contact("103", None, "Bo", None)],
        "numErrors": 1,
        "errors": [{"status": "error", "category": "OBJECT_NOT_FOUND",
                    "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
                    "context": {"ids": ["102"]}}]})
    result = connector().lookup(["101", "102", "103"], now=NOW)
    [call] = responses.calls
    assert body_of(call) == read_body(["101", "102", "103"])
    assert call.request.headers["Authorization"] == "Bearer hubspot-test-token"
    assert result.found == (
        Link("hubspot", "101", CustomerRef("101", "ann@example.com", "+15550100200", "Ann Lee")),
        Link("hubspot", "103", CustomerRef("103", None, None, "Bo")),
    )
    assert result.missing == ("102",)


@responses.activate
def test_merged_away_contact_is_linked_to_the_survivor_and_gone():
    responses.post(CONTACTS, json={"status": "COMPLETE",
                                   "results": [contact("300", "c@example.com", merged="100;200")]})
    result = connector().lookup(["100"], now=NOW)
    assert result.found == (Link("hubspot", "100", CustomerRef("300", "c@example.com")),)
    assert result.missing == ("100",)


@responses.activate
def test_no_contact_exists_any_more():
    responses.post(CONTACTS, status=404, json={"status": "error", "category": "OBJECT_NOT_FOUND"})
    result = connector().lookup(["5"], now=NOW)
    assert result.found == () and result.missing == ("5",)


@responses.activate
def test_deals_tickets_and_threads_are_linked_to_their_contact():
    responses.post(f"{API}/crm/v4/associations/deals/contacts/batch/read", json={
        "status": "COMPLETE",
        "results": [
            {"from": {"id": "332507367156"},
             "to": [{"toObjectId": 902, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 3,
                                                               "label": None}]},
                    {"toObjectId": 95, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 3,
                                                              "label": None}]}]},
        ]})
    responses.post(f"{API}/crm/v3/objects/deals/batch/read", status=207, json={
        "status": "COMPLETE", "results": [{"id": "8", "properties": {}}],
        "errors": [{"category": "OBJECT_NOT_FOUND", "context": {"ids": ["9"]}}]})
    responses.post(f"{API}/crm/v4/associations/tickets/contacts/batch/read", json={
        "status": "COMPLETE",
        "results": [{"from": {"id": "318514647758"},
                     "to": [{"toObjectId": "95", "associationTypes": []}]}]})
    responses.get(f"{API}/conversations/v3/conversations/threads/6065362089", json={
        "id": "6065362089", "associatedContactId": "777", "status": "OPEN", "inboxId": "1",
        "createdAt": "2023-12-13T03:49:48Z", "archived": False, "spam": False})
    responses.get(f"{API}/conversations/v3/conversations/threads/404", status=404,
                  json={"status": "error", "category": "OBJECT_NOT_FOUND"})
    responses.post(CONTACTS, json={"status": "COMPLETE", "results": [
        contact("95", "dee@example.com", "Dee"), contact("777", "eve@example.com")]})

    result = connector().lookup(["deal:332507367156", "deal:8", "deal:9", "ticket:318514647758",
                                 "conversation:6065362089", "conversation:404", "bogus:1"], now=NOW)
    calls = {(c.request.method, c.request.url.removeprefix(API)): c for c in responses.calls}
    assert body_of(calls["POST", "/crm/v4/associations/deals/contacts/batch/read"]) == {
        "inputs": [{"id": "332507367156"}, {"id": "8"}, {"id": "9"}]}
    assert body_of(calls["POST", "/crm/v3/objects/deals/batch/read"]) == read_body(["8", "9"], [])
    assert body_of(calls["POST", "/crm/v4/associations/tickets/contacts/batch/read"]) == {
        "inputs": [{"id": "318514647758"}]}
    # the lowest associated contact (95, not 902) so one deal never merges two people
    assert body_of(calls["POST", "/crm/v3/objects/contacts/batch/read"]) == read_body(["95", "777"])
    assert set(result.found) == {
        Link("hubspot", "deal:332507367156", CustomerRef("95", "dee@example.com", name="Dee")),
        Link("hubspot", "ticket:318514647758", CustomerRef("95", "dee@example.com", name="Dee")),
        Link("hubspot", "conversation:6065362089", CustomerRef("777", "eve@example.com")),
    }
    # deal 8 exists but has no contact yet: neither found nor missing (looked up again later)
    assert result.missing == ("bogus:1", "conversation:404", "deal:9")


@responses.activate
def test_more_than_100_contacts_are_split_into_batches():
    ids = [str(i) for i in range(1, 151)]
    responses.post(CONTACTS, json={"status": "COMPLETE", "results": []})
    connector().lookup(ids, now=NOW)
    assert [len(body_of(c)["inputs"]) for c in responses.calls] == [100, 50]


@responses.activate
def test_rate_limit_and_auth_errors_reach_the_caller():
    responses.post(CONTACTS, status=429, headers={"Retry-After": "10"}, json={
        "status": "error", "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING",
        "message": "You have reached your ten_secondly_rolling limit."})
    with pytest.raises(PlatformRateLimited) as err:
        connector().lookup(["1"], now=NOW)
    assert err.value.retry_after == 10
    responses.replace(responses.POST, CONTACTS, status=401, json={"status": "error"})
    with pytest.raises(PlatformAuthError, match=r"connectors\.hubspot"):
        connector().lookup(["1"], now=NOW)
