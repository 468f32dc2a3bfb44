"""Webhook limits come from the configuration and hold at the endpoint, for every
connector: the body size (``webhooks.max_body_bytes``) and the window around a signed
timestamp (``webhooks.signature_tolerance``). The per-connector signature tests check
the schemes themselves; these check that the configured values reach them."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest

from cx_connector.app import create_app
from cx_connector.runtime import build
from tests.conftest import NOW, count, make_config


@pytest.fixture
def limited(database_url):
    rt = build(make_config(database_url, webhooks={"max_body_bytes": 2048, "signature_tolerance": "1m"}),
               clock=lambda: NOW)
    yield rt, create_app(rt=rt, configure_logging=False).test_client()
    rt.engine.dispose()


def padded(size: int) -> bytes:
    head = json.dumps({"touchpoint_id": "big", "occurred_at": "2026-05-01T10:00:00Z",
                       "customer": {"source_id": "b1"}, "kind": "order_placed", "value": "1",
                       "currency": "EUR", "note": ""}).encode()
    return head[:-2] + b"x" * (size - len(head)) + b'"}'


def test_the_configured_body_limit_holds(limited):
    rt, client = limited
    generic = rt.connectors["generic"]

    def post(body: bytes):
        return client.post("/webhooks/generic", data=body,
                           headers=generic.sign(body, {}, method="POST", url="", now=NOW))

    assert post(padded(2047)).status_code == 200
    for size in (2048, 2049, 64 * 1024):
        r = post(padded(size))
        assert r.status_code == 413, size
        assert r.get_json()["error"] == "request_entity_too_large" and "2047 bytes" in r.get_json()["message"]
    r = client.post("/webhooks/generic", input_stream=io.BytesIO(b" " * 4096),
                    headers={"Transfer-Encoding": "chunked"},
                    environ_overrides={"wsgi.input_terminated": True})
    assert r.status_code == 413 and "2047 bytes" in r.get_json()["message"]
    assert count(rt.engine, "deliveries") == 1


@pytest.mark.parametrize("source", ["hubspot", "zendesk", "shopify"])
def test_the_configured_signature_window_holds_at_the_endpoint(limited, source):
    """1 minute configured: a delivery signed 30 s off is taken, 90 s off is refused
    (HubSpot and Zendesk sign a timestamp; Shopify's X-Shopify-Triggered-At may lag by
    its retry window, so for Shopify the window bounds the future only)."""
    rt, client = limited
    connector = rt.connectors[source]
    sample = connector.sample_deliveries()[0]
    skews = {"inside": timedelta(seconds=30), "outside": timedelta(seconds=90)}
    directions = [1] if source == "shopify" else [1, -1]
    for direction in directions:
        for name, skew in skews.items():
            headers = dict(sample.headers)
            headers.update(connector.sign(sample.body, headers, method="POST", url="",
                                          now=NOW + direction * skew))
            r = client.post(f"/webhooks/{source}", data=sample.body, headers=headers)
            assert r.status_code == (200 if name == "inside" else 401), (direction, name, r.get_json())
            if r.status_code == 401:
                assert r.get_json()["error"] == "invalid_signature"
