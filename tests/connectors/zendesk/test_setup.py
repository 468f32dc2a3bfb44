"""Zendesk setup: one user field per score, created once; conflicts reported; dry run."""

from __future__ import annotations

import json

import responses

from connectors.zendesk import ZendeskConnector, fields
from cx_connector.fields import SCORE_FIELDS
from cx_connector.throttle import FakeClock, Limiter
from tests.conftest import NOW, TEST_CONNECTORS

URL = "https://acme.zendesk.test/api/v2/user_fields.json"


def connector():
    return ZendeskConnector(ZendeskConnector.settings_schema().load(TEST_CONNECTORS["zendesk"]))


def setup(dry_run=False):
    c = connector()
    return c.setup(dry_run=dry_run, throttle=Limiter(c.rate_budget(), FakeClock(NOW)))


@responses.activate
def test_creates_missing_fields_with_their_types_following_pages():
    responses.add(responses.GET, URL, json={"user_fields": [{"key": "cx_score", "type": "decimal"}],
                                            "next_page": URL + "?page=2"})
    responses.add(responses.GET, URL + "?page=2", json={"user_fields": [], "next_page": None})
    responses.add(responses.POST, URL, status=201, json={})
    report = setup()
    posts = [json.loads(c.request.body) for c in responses.calls if c.request.method == "POST"]
    assert len(posts) == len(SCORE_FIELDS) - 1
    health = next(p["user_field"] for p in posts if p["user_field"]["key"] == "cx_health")
    assert health["type"] == "dropdown"
    assert health["custom_field_options"][0] == {"name": "Green", "value": "cx_health_green"}
    types = {p["user_field"]["key"]: p["user_field"]["type"] for p in posts}
    assert types["cx_scored_at"] == "date" and types["cx_next_best_product"] == "text"
    assert types["cx_clv_90d"] == "decimal"
    assert report.changed


@responses.activate
def test_second_run_changes_nothing_and_reports_a_conflict():
    existing = [fields.user_field(f)["user_field"] for f in SCORE_FIELDS]
    existing[1] = {**existing[1], "type": "text"}
    responses.add(responses.GET, URL, json={"user_fields": existing, "next_page": None})
    report = setup()
    assert not report.changed and [i.name for i in report.conflicts] == ["user field cx_health"]
    assert len(responses.calls) == 1


@responses.activate
def test_dry_run_posts_nothing():
    responses.add(responses.GET, URL, json={"user_fields": [], "next_page": None})
    report = setup(dry_run=True)
    assert len(responses.calls) == 1
    assert {i.status for i in report.items} == {"would_create"}
    assert report.items[0].request.body == fields.user_field(SCORE_FIELDS[0])
