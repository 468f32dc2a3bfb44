"""HubSpot signatures: known-answer vectors (computed with openssl/sha256sum, not with our code)
and the real endpoint refusing every bad request with 401 and nothing stored."""

from __future__ import annotations

from datetime import timedelta

import pytest
from requests.structures import CaseInsensitiveDict

from connectors.hubspot import signatures
from cx_connector.errors import SignatureError
from tests.conftest import NOW, count, fixture_bytes

SECRET = "hubspot-test-secret"
URL = "https://cx.example.com/webhooks/hubspot"  # webhook_url in tests/conftest.py
BODY = fixture_bytes("hubspot", "contact_creation.json")
TS = "1781524800000"  # NOW (2026-06-15T12:00:00Z) in ms: date -u -d '2026-06-15 12:00:00' +%s

# cd tests/fixtures/hubspot; TS=1781524800000
# { printf 'POSThttps://cx.example.com/webhooks/hubspot'; cat contact_creation.json; printf '%s' "$TS"; } \
#   | openssl dgst -sha256 -hmac 'hubspot-test-secret' -binary | base64
V3 = "Pfxq6Gbpm2uQVz2vtYddiO9D1fcpKlLCwN3ogIqDONQ="
# { printf 'hubspot-test-secretPOSThttps://cx.example.com/webhooks/hubspot'; cat contact_creation.json; } \
#   | sha256sum
V2 = "8fe8d65e67b5a646cc348e1f8ab2d1d2f5861c16bf0ba849501e52064049dedf"
# { printf 'hubspot-test-secret'; cat contact_creation.json; } | sha256sum
V1 = "8ca710e1db97f826ac800c63091a21566afd31b0dbde60e7c349c369f7d7f8d9"
# HubSpot's docs decode %3A etc. in the URI before signing v3: signed over '...?portal=a:b'
# { printf 'POSThttps://cx.example.com/webhooks/hubspot?portal=a:b'; cat contact_creation.json; \
#   printf '%s' "$TS"; } \
#   | openssl dgst -sha256 -hmac 'hubspot-test-secret' -binary | base64
V3_DECODED_URL = "pZmYBpPpn4baucyz4F7urC8lp84tMMX3THFlF5gXZg4="

V3_HEADERS = {"X-HubSpot-Signature-v3": V3, "X-HubSpot-Request-Timestamp": TS}


def check(headers, *, body=BODY, uri=URL, secret=SECRET, now=NOW, legacy=True):
    return signatures.verify(secret, body, CaseInsensitiveDict(headers), method="POST", uri=uri,
                             now=now, tolerance=timedelta(minutes=5), accept_legacy=legacy)


def test_known_answer_vectors_match_the_code():
    assert signatures.compute_v3(SECRET, "POST", URL, BODY, TS) == V3
    assert signatures.compute_v2(SECRET, "POST", URL, BODY) == V2
    assert signatures.compute_v1(SECRET, BODY) == V1
    assert signatures.timestamp_ms(NOW) == TS


# HubSpot's own published examples (client secret yyyyyyyy-...):
# v1, https://developers.hubspot.com/docs/faq/v1-request-validation (a request with a body)
# v2, https://developers.hubspot.com/docs/faq/v2-request-validation (a GET request, no body)
DOCS_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
DOCS_V1_BODY = (b'[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
                b'"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,'
                b'"changeSource":"CRM","changeFlag":"NEW","appId":54321}]')
DOCS_V1 = "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"
DOCS_V2_GET = "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"


def test_hubspot_documented_examples_verify():
    assert check({"X-HubSpot-Signature": DOCS_V1, "X-HubSpot-Signature-Version": "v1"},
                 body=DOCS_V1_BODY, secret=DOCS_SECRET) == "v1"
    assert signatures.verify(DOCS_SECRET, b"", CaseInsensitiveDict(
        {"X-HubSpot-Signature": DOCS_V2_GET, "X-HubSpot-Signature-Version": "v2"}), method="GET",
        uri="https://www.example.com/webhook_uri", now=NOW, tolerance=timedelta(minutes=5)) == "v2"
    with pytest.raises(SignatureError):
        check({"X-HubSpot-Signature": DOCS_V1, "X-HubSpot-Signature-Version": "v1"},
              body=DOCS_V1_BODY + b" ", secret=DOCS_SECRET)


@pytest.mark.parametrize(("headers", "version"), [
    (V3_HEADERS, "v3"),
    ({"x-hubspot-signature-v3": V3, "x-hubspot-request-timestamp": TS}, "v3"),  # HTTP/2 lower-case
    ({"X-HubSpot-Signature": V2, "X-HubSpot-Signature-Version": "v2"}, "v2"),
    ({"X-HubSpot-Signature": V1.upper(), "X-HubSpot-Signature-Version": "v1"}, "v1"),
    ({**V3_HEADERS, "X-HubSpot-Signature": "00", "X-HubSpot-Signature-Version": "v1"}, "v3"),
])
def test_each_version_verifies(headers, version):
    assert check(headers) == version


def test_v3_accepts_the_uri_decoded_as_the_docs_say_and_verbatim_as_the_sdks_do():
    encoded = URL + "?portal=a%3Ab"
    assert check({"X-HubSpot-Signature-v3": V3_DECODED_URL, "X-HubSpot-Request-Timestamp": TS},
                 uri=encoded) == "v3"
    verbatim = signatures.compute_v3(SECRET, "POST", encoded, BODY, TS)
    assert check({"X-HubSpot-Signature-v3": verbatim, "X-HubSpot-Request-Timestamp": TS},
                 uri=encoded) == "v3"
    assert signatures.decode_uri("a%3a%2F%3F%40%21%24%27%28%29%2A%2C%3B%20") == "a:/?@!$'()*,;%20"


@pytest.mark.parametrize(("skew", "ok"), [
    (timedelta(minutes=5), True), (-timedelta(minutes=5), True),
    (timedelta(minutes=5, seconds=1), False), (-timedelta(minutes=5, seconds=1), False),
])
def test_timestamp_window_both_directions(skew, ok):
    if ok:
        assert check(V3_HEADERS, now=NOW + skew) == "v3"
    else:
        with pytest.raises(SignatureError, match="from now"):
            check(V3_HEADERS, now=NOW + skew)


def test_legacy_signatures_can_be_refused():
    with pytest.raises(SignatureError, match="accept_legacy_signatures"):
        check({"X-HubSpot-Signature": V1, "X-HubSpot-Signature-Version": "v1"}, legacy=False)
    assert check(V3_HEADERS, legacy=False) == "v3"


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "missing X-HubSpot-Signature-v3"),
    ({"X-HubSpot-Signature-v3": V3}, "missing X-HubSpot-Request-Timestamp"),
    ({"X-HubSpot-Signature-v3": V3, "X-HubSpot-Request-Timestamp": "soon"}, "epoch milliseconds"),
    ({"X-HubSpot-Signature-v3": V3, "X-HubSpot-Request-Timestamp": "9" * 20}, "from now"),
    ({"X-HubSpot-Signature-v3": "###", "X-HubSpot-Request-Timestamp": TS}, "not base64"),
    ({"X-HubSpot-Signature": V1}, "must be v1 or v2"),
    ({"X-HubSpot-Signature": "zz", "X-HubSpot-Signature-Version": "v1"}, "not a hex"),
    ({"X-HubSpot-Signature": V2, "X-HubSpot-Signature-Version": "v1"}, "does not match"),
    ({"X-HubSpot-Signature": V1, "X-HubSpot-Signature-Version": "v2"}, "webhook_url"),
])
def test_bad_headers_raise_with_advice(headers, message):
    with pytest.raises(SignatureError, match=message):
        check(headers)


def test_the_uri_is_part_of_v3_and_v2():
    with pytest.raises(SignatureError, match="webhook_url"):
        check(V3_HEADERS, uri="http://localhost/webhooks/hubspot")
    with pytest.raises(SignatureError):
        check({"X-HubSpot-Signature": V2, "X-HubSpot-Signature-Version": "v2"},
              uri=URL + "/")


# --- through the real endpoint ---------------------------------------------------------------


def post(client, headers, body=BODY):
    return client.post("/webhooks/hubspot", data=body,
                       headers={"Content-Type": "application/json", **headers})


def test_known_answer_delivery_is_accepted_through_the_endpoint(client, engine):
    r = post(client, V3_HEADERS)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "processed"
    assert count(engine, "touchpoints") == 1


def test_v1_delivery_is_accepted_through_the_endpoint(client, engine):
    r = post(client, {"X-HubSpot-Signature": V1, "X-HubSpot-Signature-Version": "v1"})
    assert r.status_code == 200 and r.get_json()["status"] == "processed"


def _stale():
    return {"X-HubSpot-Request-Timestamp": str(int(TS) - 301_000),
            "X-HubSpot-Signature-v3": signatures.compute_v3(SECRET, "POST", URL, BODY,
                                                            str(int(TS) - 301_000))}


def _future():
    return {"X-HubSpot-Request-Timestamp": str(int(TS) + 301_000),
            "X-HubSpot-Signature-v3": signatures.compute_v3(SECRET, "POST", URL, BODY,
                                                            str(int(TS) + 301_000))}


@pytest.mark.parametrize(("headers", "body"), [
    pytest.param(V3_HEADERS, BODY.replace(b"508369434347", b"508369434348"), id="tampered body"),
    pytest.param({"X-HubSpot-Signature-v3": signatures.compute_v3("wrong", "POST", URL, BODY, TS),
                  "X-HubSpot-Request-Timestamp": TS}, BODY, id="wrong secret"),
    pytest.param(_stale(), BODY, id="stale timestamp"),
    pytest.param(_future(), BODY, id="future timestamp"),
    pytest.param({}, BODY, id="no signature"),
    pytest.param({"X-HubSpot-Signature-v3": V3}, BODY, id="no timestamp"),
    pytest.param({"X-HubSpot-Request-Timestamp": TS}, BODY, id="only timestamp"),
    pytest.param({"X-HubSpot-Signature": V1}, BODY, id="no version"),
    pytest.param({"X-HubSpot-Signature": V1, "X-HubSpot-Signature-Version": "v1"},
                 BODY + b" ", id="v1 tampered"),
])
def test_bad_requests_get_401_and_nothing_is_stored(client, engine, headers, body):
    r = post(client, headers, body)
    assert r.status_code == 401
    assert r.get_json()["error"] == "invalid_signature"
    for table in ("deliveries", "touchpoints", "customers", "identities"):
        assert count(engine, table) == 0


def test_signature_is_checked_against_webhook_url_not_the_request_url(client, engine, rt):
    # what the connector signs for itself uses the configured URL, whatever URL is passed in
    signed = rt.connectors["hubspot"].sign(BODY, {}, method="POST", url="http://internal:8000/x",
                                           now=NOW)
    assert signed == V3_HEADERS
    r = client.post("/webhooks/hubspot", base_url="http://internal:8000", data=BODY, headers=signed)
    assert r.status_code == 200
