"""Alerts as HubSpot tasks: the exact requests of https://developers.hubspot.com/docs/api/crm/tasks
(create with the task-to-contact association 204), the contact-owner read, and the look
for an earlier attempt when one may have landed."""

from __future__ import annotations

import json

import pytest
import responses

from connectors.hubspot.connector import HubSpotConnector, HubSpotSettingsSchema
from cx_connector.connector import RecordAlert
from cx_connector.errors import PlatformRecordGone
from cx_connector.throttle import FakeClock, Limiter
from tests.conftest import NOW, TEST_CONNECTORS

API = "https://api.hubapi.test"
KEY = "cx-alert:red:12:1781524800000"


def connector(**settings):
    return HubSpotConnector(HubSpotSettingsSchema().load({**TEST_CONNECTORS["hubspot"], **settings}))


def alert(maybe_sent=False):
    return RecordAlert(
        key=KEY,
        external_id="501",
        title="CX alert: Ann <Example> (customer #12): turned red",
        lines=("Ann turned red: CX score 31.", "", "CX score: 31", f"Reference: {KEY}"),
        at=NOW,
        maybe_sent=maybe_sent,
    )


def throttle():
    return Limiter(connector().rate_budget(), FakeClock(NOW))


def task_body(owner=None, priority="HIGH"):
    props = {
        "hs_timestamp": "2026-06-15T12:00:00.000Z",
        "hs_task_subject": "CX alert: Ann <Example> (customer #12): turned red",
        "hs_task_body": f"Ann turned red: CX score 31.<br><br>CX score: 31<br>Reference: {KEY}",
        "hs_task_status": "NOT_STARTED",
        "hs_task_priority": priority,
        "hs_task_type": "TODO",
    }
    if owner:
        props["hubspot_owner_id"] = owner
    return {
        "properties": props,
        "associations": [
            {
                "to": {"id": "501"},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 204}],
            }
        ],
    }


@responses.activate
def test_a_task_on_the_contact_assigned_to_its_owner():
    responses.add(
        responses.GET,
        f"{API}/crm/v3/objects/contacts/501?properties=hubspot_owner_id",
        json={"id": "501", "properties": {"hubspot_owner_id": "77001"}},
    )
    responses.add(responses.POST, f"{API}/crm/v3/objects/tasks", status=201, json={"id": "9001"})
    limiter = throttle()
    assert connector().post_alert(alert(), limiter) == "9001"
    get, post = responses.calls
    assert get.request.headers["Authorization"] == "Bearer hubspot-test-token"
    assert json.loads(post.request.body) == task_body(owner="77001")
    assert limiter.requests == 2  # both requests spent the rate budget


@responses.activate
def test_owner_and_priority_from_the_settings():
    responses.add(responses.POST, f"{API}/crm/v3/objects/tasks", status=201, json={"id": "9002"})
    assert (
        connector(alert_task_owner="none", alert_task_priority="MEDIUM").post_alert(alert(), throttle())
        == "9002"
    )
    assert json.loads(responses.calls[0].request.body) == task_body(priority="MEDIUM")
    connector(alert_task_owner="123456").post_alert(alert(), throttle())
    assert json.loads(responses.calls[1].request.body) == task_body(owner="123456")


@responses.activate
def test_a_contact_without_owner_gets_an_unassigned_task():
    responses.add(
        responses.GET,
        f"{API}/crm/v3/objects/contacts/501?properties=hubspot_owner_id",
        json={"id": "501", "properties": {"hubspot_owner_id": ""}},
    )
    responses.add(responses.POST, f"{API}/crm/v3/objects/tasks", status=201, json={"id": "9003"})
    connector().post_alert(alert(), throttle())
    assert "hubspot_owner_id" not in json.loads(responses.calls[1].request.body)["properties"]


@responses.activate
def test_a_deleted_contact_is_reported_before_anything_is_created():
    responses.add(
        responses.GET,
        f"{API}/crm/v3/objects/contacts/501?properties=hubspot_owner_id",
        status=404,
        json={"status": "error", "message": "Object not found", "category": "OBJECT_NOT_FOUND"},
    )
    with pytest.raises(PlatformRecordGone):
        connector().post_alert(alert(), throttle())
    assert len(responses.calls) == 1


@responses.activate
def test_when_an_earlier_attempt_may_have_landed_its_task_is_found_not_created_again():
    assoc = f"{API}/crm/v4/associations/contacts/tasks/batch/read"
    read = f"{API}/crm/v3/objects/tasks/batch/read"
    responses.add(
        responses.POST,
        assoc,
        json={
            "status": "COMPLETE",
            "results": [
                {
                    "from": {"id": "501"},
                    "to": [
                        {"toObjectId": 8999, "associationTypes": []},
                        {"toObjectId": 9004, "associationTypes": []},
                    ],
                }
            ],
        },
    )
    responses.add(
        responses.POST,
        read,
        json={
            "status": "COMPLETE",
            "results": [
                {"id": "9004", "properties": {"hs_task_body": f"...<br>Reference: {KEY}"}},
                {"id": "8999", "properties": {"hs_task_body": "call back"}},
            ],
        },
    )
    hub = connector(alert_task_owner="none")
    assert hub.post_alert(alert(maybe_sent=True), throttle()) == "9004 (already there)"
    assert json.loads(responses.calls[0].request.body) == {"inputs": [{"id": "501"}]}
    assert json.loads(responses.calls[1].request.body) == {
        "inputs": [{"id": "9004"}, {"id": "8999"}],
        "properties": ["hs_task_body"],
    }
    assert len(responses.calls) == 2  # no POST /crm/v3/objects/tasks

    responses.replace(
        responses.POST,
        read,
        json={"status": "COMPLETE", "results": [{"id": "8999", "properties": {"hs_task_body": "call back"}}]},
    )
    responses.add(responses.POST, f"{API}/crm/v3/objects/tasks", status=201, json={"id": "9005"})
    assert hub.post_alert(alert(maybe_sent=True), throttle()) == "9005"


def test_settings_are_validated():
    from marshmallow import ValidationError

    with pytest.raises(ValidationError) as err:
        HubSpotSettingsSchema().load(
            {**TEST_CONNECTORS["hubspot"], "alert_task_owner": "bob", "alert_task_priority": "URGENT"}
        )
    assert set(err.value.messages) == {"alert_task_owner", "alert_task_priority"}
