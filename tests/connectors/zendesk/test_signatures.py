"""Zendesk webhook signatures: known-answer vectors, and 401 with nothing stored through the
real endpoint for every way a request can be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from requests.structures import CaseInsensitiveDict

from connectors.zendesk import signatures
from cx_connector.app import create_app
from cx_connector.errors import SignatureError
from cx_connector.runtime import build
from tests.conftest import NOW, TEST_CONNECTORS, count, fixture_bytes, make_config

SECRET = "zendesk-test-secret"  # connectors.zendesk.webhook_secret in tests/conftest.py
SIG, TS = "X-Zendesk-Webhook-Signature", "X-Zendesk-Webhook-Signature-Timestamp"
SIGNED_BODY = fixture_bytes("zendesk", "user_group_membership_created_signed_body.json")

# Known answers, computed with openssl, independently of the code under test:
#   F=tests/fixtures/zendesk/user_group_membership_created_signed_body.json
#   { printf '%s' '2026-06-15T12:00:00Z'; cat $F; } \
#     | openssl dgst -sha256 -hmac 'zendesk-test-secret' -binary | base64
KAT_SAMPLE = ("zendesk-test-secret", "2026-06-15T12:00:00Z", SIGNED_BODY,
              "9anIqePZ1KJebAQ4guWth0e7m+c8QsdNFHOS5eTOTiU=")
#   printf '%s' '2024-04-17T17:18:10Z{"ping":true}' \
#     | openssl dgst -sha256 -hmac 'dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ==' -binary | base64
# (Zendesk's documented test secret, used as the literal string it is, not base64-decoded)
KAT_LITERAL_SECRET = ("dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ==", "2024-04-17T17:18:10Z",
                      b'{"ping":true}', "884FFZ+tIDbzkaqsBGrXmzQETrjRYviLVlINzWWtLPc=")
#   the same request signed with the base64-*decoded* secret, which Zendesk does not do:
#   printf '%s' '2024-04-17T17:18:10Z{"ping":true}' | openssl dgst -sha256 -mac HMAC \
#     -macopt hexkey:$(printf '%s' 'dGhpc19...b25seQ==' | base64 -d | xxd -p | tr -d '\n') -binary | base64
DECODED_SECRET_SIGNATURE = "NTKYmfEHqkyZH0rwRIdLa9c9USoR6NmS6KY411ouafA="
#   a request without a body signs the timestamp alone:
#   printf '%s' '2026-06-15T12:00:00Z' | openssl dgst -sha256 -hmac 'zendesk-test-secret' -binary | base64
KAT_EMPTY = ("zendesk-test-secret", "2026-06-15T12:00:00Z", b"",
             "dPV1aOlhgL5/vfhqd5N24Tn/vD4HRD2JnS2Kyt6jY0U=")


def independent_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Zendesk's recipe, written out here so the endpoint tests do not trust the code under test."""
    mac = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def headers_for(body: bytes, *, secret: str = SECRET, when=NOW, timestamp: str | None = None) -> dict:
    ts = timestamp or when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {SIG: independent_signature(secret, ts, body), TS: ts, "Content-Type": "application/json"}


@pytest.mark.parametrize("vector", [KAT_SAMPLE, KAT_LITERAL_SECRET, KAT_EMPTY],
                         ids=["sample", "literal", "empty"])
def test_known_answer_vectors(vector):
    secret, timestamp, body, expected = vector
    assert independent_signature(secret, timestamp, body) == expected
    assert signatures.compute(secret, timestamp, body) == expected
    signatures.verify(secret, body, CaseInsensitiveDict({SIG: expected, TS: timestamp}),
                      now=signatures.parse_timestamp(timestamp), tolerance=timedelta(minutes=5))


def test_the_secret_is_not_base64_decoded():
    secret, timestamp, body, _ = KAT_LITERAL_SECRET
    with pytest.raises(SignatureError, match="does not match"):
        signatures.verify(secret, body, CaseInsensitiveDict({SIG: DECODED_SECRET_SIGNATURE, TS: timestamp}),
                          now=signatures.parse_timestamp(timestamp), tolerance=timedelta(minutes=5))


def test_byte_exact_sample_is_accepted_through_the_endpoint(client, engine):
    _, timestamp, body, signature = KAT_SAMPLE
    assert timestamp == NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    r = client.post("/webhooks/zendesk", data=body, headers={
        "x-zendesk-webhook-signature": signature, "X-ZENDESK-WEBHOOK-SIGNATURE-TIMESTAMP": timestamp})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "ignored"  # a group membership is agent bookkeeping
    assert count(engine, "deliveries", "WHERE topic = 'user.group_membership_created'") == 1


def test_sign_produces_what_verify_accepts_and_zendesk_would_send():
    body = b'{"a":1}'
    headers = signatures.sign(SECRET, body, now=NOW)
    assert headers == {SIG: independent_signature(SECRET, "2026-06-15T12:00:00Z", body),
                       TS: "2026-06-15T12:00:00Z"}


def _tampered():
    return SIGNED_BODY.replace(b"user.name@example.com", b"attacker@example.com"), headers_for(SIGNED_BODY)


def _without(header):
    return SIGNED_BODY, {k: v for k, v in headers_for(SIGNED_BODY).items() if k != header}


SLACK = timedelta(minutes=5, seconds=1)
BAD_REQUESTS = {
    "tampered body": _tampered,
    "wrong secret": lambda: (SIGNED_BODY, headers_for(SIGNED_BODY, secret="another-secret")),
    "stale timestamp": lambda: (SIGNED_BODY, headers_for(SIGNED_BODY, when=NOW - SLACK)),
    "future timestamp": lambda: (SIGNED_BODY, headers_for(SIGNED_BODY, when=NOW + SLACK)),
    "missing signature": lambda: _without(SIG),
    "missing timestamp": lambda: _without(TS),
    "no headers": lambda: (SIGNED_BODY, {}),
    "signature not base64": lambda: (SIGNED_BODY, {**headers_for(SIGNED_BODY), SIG: "not base64!!"}),
    "timestamp not ISO": lambda: (SIGNED_BODY, headers_for(SIGNED_BODY, timestamp="yesterday")),
    "timestamp changed": lambda: (SIGNED_BODY, {**headers_for(SIGNED_BODY), TS: "2026-06-15T12:00:01Z"}),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_401_and_nothing_is_stored(client, engine, case):
    body, headers = BAD_REQUESTS[case]()
    r = client.post("/webhooks/zendesk", data=body, headers=headers)
    assert r.status_code == 401, r.get_json()
    assert r.get_json()["error"] == "invalid_signature"
    for table in ("deliveries", "touchpoints", "customers", "identities"):
        assert count(engine, table) == 0


def test_messages_say_what_to_do():
    def reason(body, headers):
        with pytest.raises(SignatureError) as info:
            signatures.verify(SECRET, body, CaseInsensitiveDict(headers), now=NOW,
                              tolerance=timedelta(minutes=5))
        return info.value.message

    assert "webhook_secret" in reason(*BAD_REQUESTS["wrong secret"]())
    assert "old" in reason(*BAD_REQUESTS["stale timestamp"]())
    assert "future" in reason(*BAD_REQUESTS["future timestamp"]())
    assert "NTP" in reason(*BAD_REQUESTS["future timestamp"]())
    assert "missing X-Zendesk-Webhook-Signature-Timestamp" in reason(*BAD_REQUESTS["missing timestamp"]())


@pytest.mark.parametrize("offset", [timedelta(minutes=5), -timedelta(minutes=5)])
def test_the_window_edge_is_accepted(client, offset):
    body = json.dumps({"type": "zen:event-type:organization.created", "id": f"edge{offset.days}"}).encode()
    r = client.post("/webhooks/zendesk", data=body, headers=headers_for(body, when=NOW + offset))
    assert r.status_code == 200


def test_the_window_comes_from_the_configuration(database_url):
    rt = build(make_config(database_url, webhooks={"signature_tolerance": "10m"}), clock=lambda: NOW)
    try:
        client = create_app(rt=rt, configure_logging=False).test_client()
        old = NOW - timedelta(minutes=9)
        assert client.post("/webhooks/zendesk", data=SIGNED_BODY,
                           headers=headers_for(SIGNED_BODY, when=old)).status_code == 200
        older = NOW - timedelta(minutes=11)
        assert client.post("/webhooks/zendesk", data=SIGNED_BODY,
                           headers=headers_for(SIGNED_BODY, when=older)).status_code == 401
    finally:
        rt.engine.dispose()


def test_a_second_webhook_secret_is_accepted(database_url):
    connectors = {**TEST_CONNECTORS, "zendesk": {**TEST_CONNECTORS["zendesk"],
                                                 "trigger_webhook_secret": "trigger-secret"}}
    rt = build(make_config(database_url, connectors=connectors), clock=lambda: NOW)
    try:
        client = create_app(rt=rt, configure_logging=False).test_client()
        for secret, status in (("trigger-secret", 200), (SECRET, 200), ("a third secret", 401)):
            body = json.dumps({"type": "zen:event-type:organization.created", "id": secret[:5]}).encode()
            r = client.post("/webhooks/zendesk", data=body, headers=headers_for(body, secret=secret))
            assert r.status_code == status, secret
    finally:
        rt.engine.dispose()
    assert "trigger-secret" in rt.connectors["zendesk"].secrets()


def test_no_usable_secret_accepts_nothing():
    body, headers = SIGNED_BODY, headers_for(SIGNED_BODY, secret="")
    with pytest.raises(SignatureError):
        signatures.verify(["", ""], body, CaseInsensitiveDict(headers), now=NOW,
                          tolerance=timedelta(minutes=5))
