"""The Zendesk API client and Connector.lookup(), against the documented request shapes
(HTTP mocked with `responses`)."""

from __future__ import annotations

import base64

import pytest
import responses
from responses import matchers

from connectors.zendesk import normalise
from cx_connector.connector import CustomerRef, Link
from cx_connector.errors import (
    PlatformAPIError,
    PlatformAuthError,
    PlatformRateLimited,
    PlatformUnavailable,
)
from tests.conftest import NOW, fixture_bytes, fixture_json

BASE = "https://acme.zendesk.test"  # connectors.zendesk.api_base_url in tests/conftest.py
SHOW_MANY = f"{BASE}/api/v2/users/show_many.json"
FULLWIDTH = "\uff11\uff12"  # digits, but not ASCII digits
AUTH = "Basic " + base64.b64encode(b"admin@acme.test/token:zendesk-test-token").decode()


def user(uid: int, email: str, **kw) -> dict:
    return {"id": uid, "url": f"{BASE}/api/v2/users/{uid}.json", "name": kw.pop("name", "Someone"),
            "email": email, "phone": kw.pop("phone", None), "role": "end-user", "active": True, **kw}


@responses.activate
def test_lookup_reads_users_by_id_and_reports_the_missing(rt):
    responses.get(SHOW_MANY, match=[
        matchers.query_param_matcher({"ids": "8447388090494,8447388090495,8447388090496,8447388090497"}),
        matchers.header_matcher({"Authorization": AUTH, "Accept": "application/json"}),
    ], json={"users": [
        user(8447388090494, "Ann@Example.com", name="Ann Example", phone="+44 20 7946 0001"),
        user(8447388090495, "bob@example.com", active=False),  # soft-deleted
        user(8447388090497, None, name="Phone Only", phone="555-625-1199"),
    ], "next_page": None, "previous_page": None, "count": 3})
    result = rt.connectors["zendesk"].lookup(
        ["8447388090494", "8447388090495", "8447388090496", "8447388090497"], now=NOW)
    assert result.found == (
        Link("zendesk", "8447388090494", CustomerRef("8447388090494", email="ann@example.com",
                                                     phone="+44 20 7946 0001", name="Ann Example")),
        Link("zendesk", "8447388090497", CustomerRef("8447388090497", phone="5556251199", name="Phone Only")),
    )
    assert result.missing == ("8447388090495", "8447388090496")
    assert len(responses.calls) == 1


def test_lookup_batch_size_is_the_platform_maximum(rt):
    assert rt.connectors["zendesk"].lookup_batch_size == 100


@responses.activate
def test_more_than_100_ids_are_asked_in_batches_of_100(rt):
    ids = [str(10_000_000_000 + i) for i in range(150)]
    responses.get(SHOW_MANY, match=[matchers.query_param_matcher({"ids": ",".join(ids[:100])})],
                  json={"users": [user(int(i), f"u{i}@example.com") for i in ids[:100]]})
    responses.get(SHOW_MANY, match=[matchers.query_param_matcher({"ids": ",".join(ids[100:])})],
                  json={"users": [user(int(i), f"u{i}@example.com") for i in ids[100:]]})
    result = rt.connectors["zendesk"].lookup(ids, now=NOW)
    assert [link.source_id for link in result.found] == ids and result.missing == ()
    assert len(responses.calls) == 2


@responses.activate
def test_ids_that_cannot_be_zendesk_users_are_missing_without_a_request(rt):
    result = rt.connectors["zendesk"].lookup(["deal:1", "", FULLWIDTH], now=NOW)
    assert result.found == () and result.missing == ("deal:1", "", FULLWIDTH)
    assert len(responses.calls) == 0


@responses.activate
def test_rate_limit_raises_with_retry_after(rt):
    responses.get(SHOW_MANY, status=429, headers={"Retry-After": "37"},
                  body=fixture_bytes("zendesk", "error_429_incremental_export.json"),
                  content_type="application/json")
    with pytest.raises(PlatformRateLimited) as info:
        rt.connectors["zendesk"].lookup(["1"], now=NOW)
    assert info.value.retry_after == 37 and info.value.retryable
    assert "APIRateLimitExceeded" in info.value.body


@responses.activate
def test_rate_limit_with_a_text_body(rt):
    responses.get(SHOW_MANY, status=429, headers={"Retry-After": "5"}, body="Too Many Requests",
                  content_type="text/plain")
    with pytest.raises(PlatformRateLimited) as info:
        rt.connectors["zendesk"].lookup(["1"], now=NOW)
    assert info.value.retry_after == 5


@responses.activate
def test_refused_token_is_an_auth_error(rt):
    responses.get(SHOW_MANY, status=401, json={"error": "Couldn't authenticate you"})
    with pytest.raises(PlatformAuthError, match=r"connectors\.zendesk"):
        rt.connectors["zendesk"].lookup(["1"], now=NOW)


@responses.activate
def test_a_non_json_answer_is_a_platform_error(rt):
    responses.get(SHOW_MANY, status=200, body="<html>maintenance</html>")
    with pytest.raises(PlatformAPIError, match="not JSON"):
        rt.connectors["zendesk"].lookup(["1"], now=NOW)


@responses.activate
def test_server_errors_are_retryable(rt):
    responses.get(SHOW_MANY, status=503)
    with pytest.raises(PlatformUnavailable):
        rt.connectors["zendesk"].lookup(["1"], now=NOW)


@responses.activate
def test_satisfaction_rating_is_read_and_normalised(rt):
    responses.get(f"{BASE}/api/v2/satisfaction_ratings/1000.json",
                  match=[matchers.header_matcher({"Authorization": AUTH})],
                  body=fixture_bytes("zendesk", "satisfaction_rating_api_show.json"),
                  content_type="application/json")
    rating = rt.connectors["zendesk"].client.show_satisfaction_rating("1000")
    assert rating == fixture_json("zendesk", "satisfaction_rating_api_show.json")["satisfaction_rating"]
    tp = normalise.satisfaction_rating_touchpoint(rating, normalise.Options())
    assert (tp.kind, tp.rating.score, tp.customer.source_id) == ("csat_rating", 1, "9001")


def test_record_url_and_writable_records(rt):
    z = rt.connectors["zendesk"]
    assert z.record_url("8447388090494") == "https://acme.zendesk.com/agent/users/8447388090494"
    assert z.writable_record("8447388090494") and not z.writable_record("deal:5")


def test_secrets_are_known_for_log_scrubbing(rt):
    assert set(rt.connectors["zendesk"].secrets()) == {"zendesk-test-token", "zendesk-test-secret"}
