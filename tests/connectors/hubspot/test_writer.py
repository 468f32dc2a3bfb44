"""HubSpot write-back: exact batch/update bodies, value formats, 207/merge/daily-limit mapping."""

from __future__ import annotations

import json

import pytest
import responses

from connectors.hubspot import HubSpotConnector, fields
from cx_connector.connector import RecordWrite
from cx_connector.errors import PlatformRateLimited, PlatformValidationError
from cx_connector.throttle import FakeClock, Limiter
from tests.conftest import NOW, TEST_CONNECTORS

URL = "https://api.hubapi.test/crm/v3/objects/contacts/batch/update"


@pytest.fixture
def hubspot():
    return HubSpotConnector(HubSpotConnector.settings_schema().load(TEST_CONNECTORS["hubspot"]))


def throttle(c):
    return Limiter(c.rate_budget(), FakeClock(NOW))


def test_values_are_strings_dates_are_epoch_ms_and_none_clears():
    assert fields.value("cx_score", 87) == "87"
    assert fields.value("cx_clv_90d", 1234.5) == "1234.5"
    assert fields.value("cx_health", "red") == "red"
    assert fields.value("cx_scored_at", "2026-06-15T12:00:00Z") == "1781524800000"
    assert fields.value("cx_next_best_product", None) == ""


@responses.activate
def test_exact_request_and_all_ok(hubspot):
    responses.add(responses.POST, URL, json={"status": "COMPLETE", "results": [{"id": "508369434347"}]})
    out = hubspot.write_batch([RecordWrite("508369434347", {"cx_score": 87, "cx_clv_90d": 12.5,
                                                            "cx_scored_at": "2026-06-15T12:00:00Z"})],
                              throttle(hubspot))
    assert out["508369434347"].status == "ok"
    req = responses.calls[0].request
    assert json.loads(req.body) == {"inputs": [{"id": "508369434347", "properties": {
        "cx_score": "87", "cx_clv_90d": "12.5", "cx_scored_at": "1781524800000"}}]}
    assert req.headers["Authorization"] == "Bearer hubspot-test-token"


@responses.activate
def test_207_errors_are_mapped_to_their_ids(hubspot):
    responses.add(responses.POST, URL, status=207, json={
        "status": "COMPLETE", "results": [{"id": "1"}], "numErrors": 3, "errors": [
            {"category": "OBJECT_NOT_FOUND", "message": "gone", "context": {"ids": ["2"]}},
            {"category": "VALIDATION_ERROR", "message": "bad", "context": {"ids": ["3"]}},
            {"category": "INTERNAL_ERROR", "message": "later", "context": {"ids": ["4"]}}]})
    out = hubspot.write_batch([RecordWrite(i, {"cx_score": 1}) for i in "1234"], throttle(hubspot))
    assert {k: v.status for k, v in out.items()} == {"1": "ok", "2": "gone", "3": "failed", "4": "retry"}
    assert "bad" in out["3"].reason


@responses.activate
def test_merged_contact_answers_under_its_new_id(hubspot):
    responses.add(responses.POST, URL, json={"status": "COMPLETE", "results": [
        {"id": "1"}, {"id": "99", "properties": {"hs_merged_object_ids": "5;2"}}, {"id": "98"}]})
    out = hubspot.write_batch([RecordWrite(i, {"cx_score": 1}) for i in ("1", "2", "3")], throttle(hubspot))
    assert out["1"].status == "ok"
    assert out["2"].status == "merged" and out["2"].merged_into == "99" and out["2"].landed
    assert out["3"].status == "merged" and out["3"].merged_into == "98"


@responses.activate
def test_whole_batch_400_raises_validation_for_the_core_to_split(hubspot):
    responses.add(responses.POST, URL, status=400, json={"status": "error", "category": "VALIDATION_ERROR"})
    with pytest.raises(PlatformValidationError):
        hubspot.write_batch([RecordWrite("1", {"cx_score": 1})], throttle(hubspot))


@responses.activate
def test_daily_limit_waits_an_hour(hubspot):
    responses.add(responses.POST, URL, status=429, json={"status": "error", "policyName": "DAILY"})
    with pytest.raises(PlatformRateLimited) as exc:
        hubspot.write_batch([RecordWrite("1", {"cx_score": 1})], throttle(hubspot))
    assert exc.value.retry_after == 3600


def test_budget_and_batch_limits_come_from_the_settings():
    c = HubSpotConnector(HubSpotConnector.settings_schema().load(
        {**TEST_CONNECTORS["hubspot"], "batch_size": 40, "requests_per_10s": 190}))
    budget = c.rate_budget()
    assert (budget.kind, budget.limit, budget.per_seconds) == ("window", 190, 10.0)
    assert c.write_batch_size() == 40 and c.writes_back
