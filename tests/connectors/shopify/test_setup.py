"""Shopify setup: pinned customer metafield definitions in namespace cx, created once."""

from __future__ import annotations

import json

import responses

from connectors.shopify import ShopifyConnector, fields
from cx_connector.fields import SCORE_FIELDS
from cx_connector.throttle import FakeClock, Limiter
from tests.conftest import NOW, TEST_CONNECTORS

URL = "https://acme.myshopify.test/admin/api/2026-07/graphql.json"


def setup(dry_run=False):
    c = ShopifyConnector(ShopifyConnector.settings_schema().load(TEST_CONNECTORS["shopify"]))
    return c.setup(dry_run=dry_run, throttle=Limiter(c.rate_budget(), FakeClock(NOW)))


def listing(nodes):
    return {"data": {"metafieldDefinitions": {"nodes": nodes, "pageInfo": {"hasNextPage": False}}}}


def created(request):
    return 200, {}, json.dumps({"data": {"metafieldDefinitionCreate": {
        "createdDefinition": {"id": "gid://shopify/MetafieldDefinition/1"}, "userErrors": []}}})


@responses.activate
def test_creates_each_definition_pinned_in_namespace_cx():
    responses.add(responses.POST, URL, json=listing([]))
    responses.add_callback(responses.POST, URL, callback=created)
    report = setup()
    bodies = [json.loads(c.request.body) for c in responses.calls]
    assert "metafieldDefinitions" in bodies[0]["query"]
    creates = [b["variables"]["definition"] for b in bodies[1:]]
    assert len(creates) == len(SCORE_FIELDS)
    assert creates[0] == {"name": "CX score", "namespace": "cx", "key": "score", "type": "number_integer",
                          "ownerType": "CUSTOMER", "pin": True, "description": creates[0]["description"]}
    health = next(d for d in creates if d["key"] == "health")
    assert health["validations"] == [{"name": "choices", "value": '["green", "yellow", "red"]'}]
    assert report.changed


@responses.activate
def test_second_run_changes_nothing_and_reports_a_conflicting_type():
    nodes = [{"key": d["key"], "namespace": "cx", "type": {"name": d["type"]}} for d in fields.definitions()]
    nodes[0]["type"] = {"name": "single_line_text_field"}
    responses.add(responses.POST, URL, json=listing(nodes))
    report = setup()
    assert len(responses.calls) == 1 and not report.changed
    assert [i.name for i in report.conflicts] == ["metafield definition cx.score"]


@responses.activate
def test_dry_run_only_lists():
    responses.add(responses.POST, URL, json=listing([]))
    report = setup(dry_run=True)
    assert len(responses.calls) == 1
    assert report.items[0].request.body["variables"]["definition"]["key"] == "score"


@responses.activate
def test_an_enumeration_whose_choices_lack_an_option_is_a_conflict():
    nodes = [{"key": d["key"], "namespace": "cx", "type": {"name": d["type"]},
              "validations": d.get("validations", [])} for d in fields.definitions()]
    health = next(n for n in nodes if n["key"] == "health")
    health["validations"] = [{"name": "choices", "value": '["green", "red"]'}]  # no "yellow"
    responses.add(responses.POST, URL, json=listing(nodes))
    report = setup()
    assert [i.name for i in report.conflicts] == ["metafield definition cx.health"]
    assert "lack yellow" in report.conflicts[0].detail
    assert len(responses.calls) == 1 and not report.changed  # reported, never changed


@responses.activate
def test_throttled_while_listing_waits_and_carries_on():
    throttled = {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                 "extensions": {"cost": {"requestedQueryCost": 30, "throttleStatus": {
                     "maximumAvailable": 1000.0, "currentlyAvailable": 0.0, "restoreRate": 100.0}}}}
    responses.add(responses.POST, URL, json=throttled)
    nodes = [{"key": d["key"], "namespace": "cx", "type": {"name": d["type"]},
              "validations": d.get("validations", [])} for d in fields.definitions()]
    responses.add(responses.POST, URL, json=listing(nodes))
    report = setup()
    assert len(responses.calls) == 2 and not report.conflicts and not report.changed
