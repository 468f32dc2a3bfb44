"""Alerts as notes on the Zendesk user (https://developer.zendesk.com/api-reference/ticketing/users/users/):
appended to what the ``notes`` field holds, never replacing it, never twice."""

from __future__ import annotations

import json

import pytest
import responses

from connectors.zendesk.connector import ZendeskConnector, ZendeskSettingsSchema
from cx_connector.connector import RecordAlert
from cx_connector.errors import PlatformRecordGone, PlatformValidationError
from cx_connector.throttle import FakeClock, Limiter
from tests.conftest import NOW, TEST_CONNECTORS

USER = "https://acme.zendesk.test/api/v2/users/9001.json"
KEY = "cx-alert:nps:12:1781524800000"
NOTE = (
    "[2026-06-15 12:00 UTC] CX alert: Ann (customer #12): gave a detractor NPS answer\n"
    "Ann answered NPS 3 of 10.\n\nNPS answer: 3 of 10\nReference: " + KEY
)


def connector():
    return ZendeskConnector(ZendeskSettingsSchema().load(TEST_CONNECTORS["zendesk"]))


def alert():
    return RecordAlert(
        key=KEY,
        external_id="9001",
        title="CX alert: Ann (customer #12): gave a detractor NPS answer",
        lines=("Ann answered NPS 3 of 10.", "", "NPS answer: 3 of 10", f"Reference: {KEY}"),
        at=NOW,
    )


def throttle():
    return Limiter(connector().rate_budget(), FakeClock(NOW))


@responses.activate
def test_the_note_is_appended_below_what_agents_wrote():
    responses.add(
        responses.GET, USER, json={"user": {"id": 9001, "active": True, "notes": "VIP. Prefers phone.\n"}}
    )
    responses.add(responses.PUT, USER, json={"user": {"id": 9001}})
    limiter = throttle()
    assert connector().post_alert(alert(), limiter) == "note appended"
    get, put = responses.calls
    assert get.request.headers["Authorization"].startswith("Basic ")
    assert json.loads(put.request.body) == {"user": {"notes": "VIP. Prefers phone.\n\n" + NOTE}}
    assert limiter.requests == 2


@responses.activate
def test_empty_notes_get_just_the_alert():
    responses.add(responses.GET, USER, json={"user": {"id": 9001, "active": True, "notes": None}})
    responses.add(responses.PUT, USER, json={"user": {"id": 9001}})
    connector().post_alert(alert(), throttle())
    assert json.loads(responses.calls[1].request.body) == {"user": {"notes": NOTE}}


@responses.activate
def test_an_alert_already_in_the_notes_is_not_added_twice():
    responses.add(
        responses.GET, USER, json={"user": {"id": 9001, "active": True, "notes": "VIP.\n\n" + NOTE}}
    )
    assert connector().post_alert(alert(), throttle()) == "already there"
    assert len(responses.calls) == 1


@responses.activate
def test_a_deleted_user_and_a_refusal_are_errors():
    responses.add(responses.GET, USER, json={"user": {"id": 9001, "active": False, "notes": ""}})
    with pytest.raises(PlatformRecordGone):
        connector().post_alert(alert(), throttle())
    responses.replace(responses.GET, USER, json={"user": {"id": 9001, "active": True, "notes": ""}})
    responses.add(
        responses.PUT, USER, status=422, json={"error": "RecordInvalid", "description": "Notes is too long"}
    )
    with pytest.raises(PlatformValidationError):
        connector().post_alert(alert(), throttle())
