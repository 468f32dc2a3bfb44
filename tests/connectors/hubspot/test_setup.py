"""HubSpot setup: group + 13 properties created once; conflicts reported; dry run only reads."""

from __future__ import annotations

import json

import pytest
import responses

from connectors.hubspot import HubSpotConnector, fields
from cx_connector.fields import SCORE_FIELDS
from cx_connector.throttle import FakeClock, Limiter
from tests.conftest import NOW, TEST_CONNECTORS

BASE = "https://api.hubapi.test"
GROUP = f"{BASE}/crm/v3/properties/contacts/groups/cx_connector"
PROPS = f"{BASE}/crm/v3/properties/contacts"


@pytest.fixture
def hubspot():
    return HubSpotConnector(HubSpotConnector.settings_schema().load(TEST_CONNECTORS["hubspot"]))


def setup(c, dry_run=False):
    return c.setup(dry_run=dry_run, throttle=Limiter(c.rate_budget(), FakeClock(NOW)))


@responses.activate
def test_first_run_creates_group_and_every_property_with_its_type(hubspot):
    responses.add(responses.GET, GROUP, status=404, json={"status": "error"})
    responses.add(responses.POST, f"{BASE}/crm/v3/properties/contacts/groups", status=201, json={})
    responses.add(responses.GET, PROPS, json={"results": [{"name": "email", "type": "string"}]})
    responses.add(responses.POST, PROPS, status=201, json={})
    report = setup(hubspot)
    assert report.changed and len([i for i in report.items if i.status == "created"]) == 14
    posts = [json.loads(c.request.body) for c in responses.calls if c.request.method == "POST"]
    assert posts[0] == {"name": "cx_connector", "label": "CX Connector", "displayOrder": -1}
    assert len(posts) == 1 + len(SCORE_FIELDS)
    health = next(p for p in posts if p.get("name") == "cx_health")
    assert health["type"] == "enumeration" and health["fieldType"] == "select"
    assert [o["value"] for o in health["options"]] == ["green", "yellow", "red"]
    score = next(p for p in posts if p.get("name") == "cx_score")
    assert score == {"name": "cx_score", "label": "CX score", "type": "number", "fieldType": "number",
                     "groupName": "cx_connector", "formField": False,
                     "description": score["description"]}
    scored = next(p for p in posts if p.get("name") == "cx_scored_at")
    assert (scored["type"], scored["fieldType"]) == ("datetime", "date")


@responses.activate
def test_second_run_changes_nothing_and_conflicts_are_reported_not_overwritten(hubspot):
    existing = [fields.property_definition(f) for f in SCORE_FIELDS]
    existing[0] = {**existing[0], "type": "string", "fieldType": "text"}  # someone made cx_score a string
    responses.add(responses.GET, GROUP, json={"name": "cx_connector"})
    responses.add(responses.GET, PROPS, json={"results": existing})
    report = setup(hubspot)
    assert not report.changed
    assert [i.name for i in report.conflicts] == ["property cx_score"]
    assert "exists with type 'string'" in report.conflicts[0].detail
    assert all(c.request.method == "GET" for c in responses.calls)


@responses.activate
def test_dry_run_only_reads_and_returns_the_exact_requests(hubspot):
    responses.add(responses.GET, GROUP, status=404, json={})
    responses.add(responses.GET, PROPS, json={"results": []})
    report = setup(hubspot, dry_run=True)
    assert all(c.request.method == "GET" for c in responses.calls)
    planned = [i.request for i in report.items if i.status == "would_create"]
    assert len(planned) == 14 and planned[1].path == "/crm/v3/properties/contacts"
    assert planned[1].body == fields.property_definition(SCORE_FIELDS[0])
    assert planned[1].render().startswith("POST /crm/v3/properties/contacts\n{")


@responses.activate
def test_a_429_during_setup_is_waited_out_and_setup_carries_on(hubspot):
    responses.add(responses.GET, GROUP, json={"name": "cx_connector"})
    responses.add(responses.GET, PROPS, json={"results": []})
    responses.add(responses.POST, PROPS, status=429, headers={"Retry-After": "2"},
                  json={"status": "error", "policyName": "TEN_SECONDLY_ROLLING"})
    responses.add(responses.POST, PROPS, status=201, json={})
    clock = FakeClock(NOW)
    report = hubspot.setup(dry_run=False, throttle=Limiter(hubspot.rate_budget(), clock))
    assert [i.status for i in report.items].count("created") == len(SCORE_FIELDS)
    posts = [c for c in responses.calls if c.request.method == "POST"]
    assert len(posts) == len(SCORE_FIELDS) + 1  # the refused one asked again, once
    assert json.loads(posts[0].request.body) == json.loads(posts[1].request.body)
    assert clock.sleeps == [pytest.approx(2.0)]
