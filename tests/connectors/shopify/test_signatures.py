"""X-Shopify-Hmac-Sha256 and the unsigned headers, through the real endpoint."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from requests.structures import CaseInsensitiveDict
from sqlalchemy import text

from connectors.shopify import signatures
from cx_connector.errors import ConfigError, SignatureError
from tests.conftest import NOW, count, make_config
from tests.connectors.shopify.conftest import (
    SHOP,
    compliance_sample,
    hmac_b64,
    sample,
    shopify_headers,
)

# Known answers computed with openssl, independently of the code under test, from the
# byte-exact fixture files and the test secret:
#   cd tests/fixtures/shopify
#   openssl dgst -sha256 -hmac shopify-test-secret -binary < orders_create.json | base64
#   printf '%s' '{"id":1}' | openssl dgst -sha256 -hmac shopify-test-secret -binary | base64
#   printf '%s' '' | openssl dgst -sha256 -hmac shopify-test-secret -binary | base64
KAT = {
    "orders_create.json": "U2b8iHI5ukFOkPTKBOt5vCYbB0pQ57+plNyLOZHCj7w=",
    "customers_create.json": "u/ZkqMKD7KUZ7LmAh2QQxGRH1uW+j4spoB8bzrGdAaE=",
}
KAT_SMALL = {b'{"id":1}': "UBjPoZqq+1zvMGsQisdv7Wv6Va0DfZRd0EXH2smzNag=",
             b"": "LUczUA5fajIyGuN3rT5C5gmM5bQUsx9LQO8EShnkbgg="}


@pytest.mark.parametrize("name", sorted(KAT))
def test_known_answer_vectors_of_the_fixture_files(name):
    assert signatures.compute("shopify-test-secret", sample(name)) == KAT[name]
    assert hmac_b64(sample(name)) == KAT[name]  # the tests' own signer agrees


@pytest.mark.parametrize("body", sorted(KAT_SMALL))
def test_known_answer_vectors_of_small_bodies(body):
    assert signatures.compute("shopify-test-secret", body) == KAT_SMALL[body]


def test_endpoint_accepts_the_known_answer_signature(client, engine):
    headers = shopify_headers("orders/create", b"", **{
        "X-Shopify-Hmac-Sha256": KAT["orders_create.json"]})
    r = client.post("/webhooks/shopify", data=sample("orders_create.json"), headers=headers)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "processed" and r.get_json()["touchpoints"] == 1


def _assert_rejected(r, engine, needle):
    assert r.status_code == 401, r.get_json()
    body = r.get_json()
    assert body["error"] == "invalid_signature" and needle in body["message"]
    assert count(engine, "deliveries") == 0 and count(engine, "touchpoints") == 0
    assert count(engine, "customers") == 0 and count(engine, "identities") == 0


def test_tampered_body_is_401_and_stores_nothing(client, engine):
    body = sample("orders_create.json")
    headers = shopify_headers("orders/create", body)
    r = client.post("/webhooks/shopify", data=body.replace(b"404.95", b"4.95"), headers=headers)
    _assert_rejected(r, engine, "does not match the body")


def test_wrong_secret_is_401(client, engine):
    body = sample("orders_create.json")
    headers = shopify_headers("orders/create", body,
                              **{"X-Shopify-Hmac-Sha256": hmac_b64(body, b"another-apps-secret")})
    _assert_rejected(client.post("/webhooks/shopify", data=body, headers=headers), engine,
                     "connectors.shopify.client_secret")


def test_hmac_that_is_not_base64_is_401(client, engine):
    body = sample("orders_create.json")
    headers = shopify_headers("orders/create", body, **{"X-Shopify-Hmac-Sha256": "not base64!"})
    _assert_rejected(client.post("/webhooks/shopify", data=body, headers=headers), engine, "base64")


def test_another_shop_is_401(client, engine):
    body = sample("orders_create.json")
    headers = shopify_headers("orders/create", body, **{"X-Shopify-Shop-Domain": "evil.myshopify.com"})
    _assert_rejected(client.post("/webhooks/shopify", data=body, headers=headers), engine,
                     "another shop")


@pytest.mark.parametrize("missing", ["X-Shopify-Hmac-Sha256", "X-Shopify-Topic",
                                     "X-Shopify-Shop-Domain", "X-Shopify-Webhook-Id"])
def test_missing_required_header_is_401(client, engine, missing):
    body = sample("orders_create.json")
    headers = shopify_headers("orders/create", body, **{missing: None})
    _assert_rejected(client.post("/webhooks/shopify", data=body, headers=headers), engine, missing)


def test_blank_required_header_counts_as_missing(client, engine):
    body = sample("orders_create.json")
    headers = shopify_headers("orders/create", body, **{"X-Shopify-Webhook-Id": "  "})
    _assert_rejected(client.post("/webhooks/shopify", data=body, headers=headers), engine,
                     "X-Shopify-Webhook-Id")


@pytest.mark.parametrize("triggered,needle", [
    ("2026-06-15T06:59:59Z", "older than connectors.shopify.max_delivery_age"),  # 5 h + 1 s
    ("2026-06-15T12:05:01Z", "in the future"),
    ("yesterday", "not an ISO-8601 time"),
    ("2026-06-15T12:00:00", "not an ISO-8601 time"),  # no time zone
])
def test_unusable_triggered_at_is_401(client, engine, triggered, needle):
    body = sample("orders_create.json")
    headers = shopify_headers("orders/create", body, **{"X-Shopify-Triggered-At": triggered})
    _assert_rejected(client.post("/webhooks/shopify", data=body, headers=headers), engine, needle)


@pytest.mark.parametrize("triggered", ["2026-06-15T08:00:00.000000Z",  # a retry 4 hours later
                                       "2026-06-15T12:04:00+00:00", None])
def test_retries_within_shopifys_retry_window_and_absent_time_are_accepted(client, triggered):
    body = sample("orders_create.json")
    headers = shopify_headers("orders/create", body, **{"X-Shopify-Triggered-At": triggered})
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200


def test_max_delivery_age_is_configurable_and_never_below_the_signature_tolerance():
    body = b'{"id":1}'
    headers = CaseInsensitiveDict(shopify_headers("orders/create", body, **{
        "X-Shopify-Triggered-At": "2026-06-15T11:50:00Z"}))  # 10 minutes old
    kw = {"secret": "shopify-test-secret", "shop": SHOP, "now": NOW}
    with pytest.raises(SignatureError, match="max_delivery_age"):
        signatures.verify(body, headers, tolerance=timedelta(minutes=5), max_age=timedelta(minutes=5), **kw)
    signatures.verify(body, headers, tolerance=timedelta(minutes=15), max_age=timedelta(minutes=1), **kw)


def test_max_delivery_age_setting(database_url):
    cfg = make_config(database_url, connectors={"shopify": {
        "shop": SHOP, "access_token": "t", "client_secret": "s", "max_delivery_age": "4h30m"}})
    assert cfg.connectors["shopify"].max_delivery_age == timedelta(hours=4, minutes=30)
    assert make_config(database_url).connectors["shopify"].max_delivery_age == timedelta(hours=5)
    with pytest.raises(ConfigError, match=r"connectors\.shopify\.max_delivery_age: not a duration"):
        make_config(database_url, connectors={"shopify": {
            "shop": SHOP, "access_token": "t", "client_secret": "s", "max_delivery_age": "soon"}})


def test_compliance_body_for_another_shop_is_401(client, engine):
    # the official sample, as published, names the placeholder shop "{shop}.myshopify.com"
    body = sample("customers_redact.json")
    headers = shopify_headers("customers/redact", body)
    _assert_rejected(client.post("/webhooks/shopify", data=body, headers=headers), engine,
                     "shop_domain must equal")


@pytest.mark.parametrize("body", [b"{broken", b'{"shop_id": 1}', b'["acme.myshopify.com"]',
                                  b"[" * 100_000 + b"]" * 100_000])  # too deep to parse: was a 500
def test_compliance_body_without_a_shop_domain_is_401(client, engine, body):
    headers = shopify_headers("shop/redact", body)
    _assert_rejected(client.post("/webhooks/shopify", data=body, headers=headers), engine,
                     "shop_domain must equal")


def test_compliance_body_for_this_shop_is_accepted(client, engine):
    body = compliance_sample("shop_redact.json")
    r = client.post("/webhooks/shopify", data=body, headers=shopify_headers("shop/redact", body))
    assert r.status_code == 200 and r.get_json()["status"] == "queued"  # the clock erases


def test_header_names_are_case_insensitive_as_http2_sends_them(client):
    body = sample("orders_create.json")
    headers = {k.lower(): v for k, v in shopify_headers("orders/create", body).items()}
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200


def test_unprefixed_shopify_headers_of_the_events_preview_are_read(client, engine):
    body = sample("customers_create.json")
    headers = {k.removeprefix("X-").lower(): v
               for k, v in shopify_headers("customers/create", body).items()}
    r = client.post("/webhooks/shopify", data=body, headers=headers)
    assert r.status_code == 200 and r.get_json()["touchpoints"] == 1


def test_redelivery_with_the_same_webhook_id_is_a_duplicate(deliver, engine):
    body = sample("customers_create.json")
    first = deliver("customers/create", body, {"X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f"})
    again = deliver("customers/create", body, {"X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f"})
    assert first.get_json()["status"] == "processed" and again.get_json()["status"] == "duplicate"
    assert count(engine, "deliveries") == 1


def test_sign_produces_headers_that_verify(rt):
    connector = rt.connectors["shopify"]
    body = json.dumps({"id": 1}).encode()
    headers = connector.sign(body, {"X-Shopify-Topic": "customers/delete"}, method="POST",
                             url="", now=NOW)
    assert headers["X-Shopify-Shop-Domain"] == SHOP and headers["X-Shopify-Hmac-Sha256"] == hmac_b64(body)
    connector.verify(body, CaseInsensitiveDict({"X-Shopify-Topic": "customers/delete", **headers}),
                     method="POST", url="", now=NOW)
    again = connector.sign(body, {"X-Shopify-Topic": "customers/delete"}, method="POST", url="", now=NOW)
    assert again["X-Shopify-Webhook-Id"] == headers["X-Shopify-Webhook-Id"]  # same request, same id
    given = connector.sign(body, {"x-shopify-webhook-id": "mine"}, method="POST", url="", now=NOW)
    assert "X-Shopify-Webhook-Id" not in given  # what the caller set is kept


def test_the_reference_example_headers_are_the_ones_read(client, engine):
    """_headers_example.json (Shopify's documented headers), with the HMAC computed for a real
    body and the shop and time made ours: accepted, and its topic and webhook id are used."""
    from tests.conftest import fixture_bytes, fixture_json

    headers = {k: v for k, v in fixture_json("shopify", "_headers_example.json").items()
               if not k.startswith("_")}
    body = fixture_bytes("shopify", "crafted", "products_create.json")
    headers.update({"X-Shopify-Hmac-Sha256": hmac_b64(body), "X-Shopify-Shop-Domain": SHOP,
                    "X-Shopify-Triggered-At": "2026-06-15T11:59:00.000000Z"})
    r = client.post("/webhooks/shopify", data=body, headers=headers)
    assert r.status_code == 200 and r.get_json()["status"] == "processed"
    assert count(engine, "products") == 1
    with engine.connect() as conn:
        row = conn.execute(text("SELECT topic, delivery_key FROM deliveries")).one()
    assert tuple(row) == ("products/update", "webhook:545ebdd4-b7be-4d3d-b14e-54aa78e0e0f9")
    # as published (another shop, an HMAC over no body) it is refused
    published = {k: v for k, v in fixture_json("shopify", "_headers_example.json").items()
                 if not k.startswith("_")}
    assert client.post("/webhooks/shopify", data=body, headers=published).status_code == 401
