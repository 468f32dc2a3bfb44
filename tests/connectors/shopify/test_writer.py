"""Shopify write-back: metafieldsSet packed to 25 across customers, userErrors, throttling."""

from __future__ import annotations

import json

import pytest
import responses

from connectors.shopify import ShopifyConnector, writer
from cx_connector.connector import RecordWrite
from cx_connector.errors import PlatformRateLimited
from cx_connector.throttle import FakeClock, Limiter
from tests.conftest import NOW, TEST_CONNECTORS
from tests.seeding import rows, run, seed

URL = "https://acme.myshopify.test/admin/api/2026-07/graphql.json"
VALUES = {"cx_score": 87, "cx_health": "green", "cx_clv_90d": 12.5, "cx_scored_at": NOW}


@pytest.fixture
def shopify():
    return ShopifyConnector(ShopifyConnector.settings_schema().load(TEST_CONNECTORS["shopify"]))


def cost(available=990.0):
    return {"cost": {"requestedQueryCost": 10, "actualQueryCost": 10, "throttleStatus": {
        "maximumAvailable": 2000.0, "currentlyAvailable": available, "restoreRate": 100.0}}}


def ok(request):
    n = len(json.loads(request.body)["variables"].get("metafields", []))
    return 200, {}, json.dumps({"data": {"metafieldsSet": {"metafields": [{}] * n, "userErrors": []}},
                                "extensions": cost()})


def test_exact_metafields_and_deletes():
    query, variables, owners, _ = writer.request(
        [RecordWrite("7369823420631", {"cx_score": 87, "cx_clv_90d": 12.5, "cx_health": "red",
                                       "cx_scored_at": "2026-06-15T12:00:00Z", "cx_nps_last": None})])
    assert variables["metafields"][:2] == [
        {"ownerId": "gid://shopify/Customer/7369823420631", "namespace": "cx", "key": "score",
         "type": "number_integer", "value": "87"},
        {"ownerId": "gid://shopify/Customer/7369823420631", "namespace": "cx", "key": "clv_90d",
         "type": "number_decimal", "value": "12.50"}]
    assert variables["metafields"][3]["type"] == "date_time"
    assert variables["metafields"][3]["value"] == "2026-06-15T12:00:00Z"
    assert variables["deletes"] == [{"ownerId": "gid://shopify/Customer/7369823420631", "namespace": "cx",
                                     "key": "nps_last"}]
    assert "metafieldsSet" in query and "metafieldsDelete" in query and len(owners) == 4


@responses.activate
def test_sync_packs_25_metafields_per_call_across_customers(rt):
    rt.connectors = {"shopify": rt.connectors["shopify"]}
    seed(rt, "shopify", [str(7000000000000 + i) for i in range(30)], VALUES)  # 120 metafields
    responses.add_callback(responses.POST, URL, callback=ok)
    result = run(rt)["platforms"]["shopify"]
    sizes = [len(json.loads(c.request.body)["variables"]["metafields"]) for c in responses.calls]
    assert sizes == [25, 25, 25, 25, 20] and result["requests"] == 5  # ceil(120/25)
    assert result["landed"] == 30 and {r["status"] for r in rows(rt.engine)} == {"done"}
    assert responses.calls[0].request.headers["X-Shopify-Access-Token"] == "shpat_test_token"


@responses.activate
def test_user_error_fails_only_its_customer_and_the_others_land(rt):
    rt.connectors = {"shopify": rt.connectors["shopify"]}
    seed(rt, "shopify", ["1", "2", "3"], {"cx_score": 5})

    def callback(request):
        metafields = json.loads(request.body)["variables"]["metafields"]
        bad = [i for i, m in enumerate(metafields) if m["ownerId"].endswith("/2")]
        if bad:  # atomic: nothing saved
            return 200, {}, json.dumps({"data": {"metafieldsSet": {"metafields": None, "userErrors": [
                {"field": ["metafields", str(bad[0]), "value"], "message": "Value is invalid",
                 "code": "INVALID_VALUE", "elementIndex": bad[0]}]}}, "extensions": cost()})
        return ok(request)

    responses.add_callback(responses.POST, URL, callback=callback)
    result = run(rt)["platforms"]["shopify"]
    status = {r["external_id"]: r["status"] for r in rows(rt.engine)}
    assert status == {"1": "done", "2": "dead", "3": "done"}
    assert len(responses.calls) == 2 and result["dead"] == 1
    resent = json.loads(responses.calls[1].request.body)["variables"]["metafields"]
    assert [m["ownerId"][-1] for m in resent] == ["1", "3"]


@responses.activate
def test_throttled_as_200_and_as_429_both_back_off(shopify):
    clock = FakeClock(NOW)
    throttle = Limiter(shopify.rate_budget(), clock)
    throttled = [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]
    responses.add(responses.POST, URL, json={"errors": throttled, "extensions": cost(available=4.0)})
    with pytest.raises(PlatformRateLimited) as exc:
        shopify.write_batch([RecordWrite("1", {"cx_score": 1})], throttle)
    assert exc.value.retry_after == pytest.approx(0.06)  # (10 - 4) / 100 per second
    responses.add(responses.POST, URL, status=429, headers={"Retry-After": "2.0"})
    with pytest.raises(PlatformRateLimited) as exc:
        shopify.write_batch([RecordWrite("1", {"cx_score": 1})], throttle)
    assert exc.value.retry_after == 2.0


@responses.activate
def test_throttle_status_is_followed(shopify):
    clock = FakeClock(NOW)
    throttle = Limiter(shopify.rate_budget(), clock)
    responses.add_callback(responses.POST, URL, callback=lambda r: (200, {}, json.dumps(
        {"data": {"metafieldsSet": {"userErrors": []}}, "extensions": cost(available=0.0)})))
    shopify.write_batch([RecordWrite("1", {"cx_score": 1})], throttle)
    shopify.write_batch([RecordWrite("1", {"cx_score": 1})], throttle)
    assert clock.elapsed == pytest.approx(0.1)  # 10 points at 100 points/s, as the shop said
