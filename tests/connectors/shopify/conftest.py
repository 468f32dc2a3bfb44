"""Shopify deliveries for tests: signed here, independently of the connector's own ``sign``.

``deliver(topic, body)`` posts to the real endpoint with every header Shopify sends
and an HMAC computed with :mod:`hmac` in this file. Export files go to a temporary
directory (``export_dir``), never the working directory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_CONNECTORS, fixture_bytes, make_config

SECRET = TEST_CONNECTORS["shopify"]["client_secret"].encode()
SHOP = TEST_CONNECTORS["shopify"]["shop"]
TRIGGERED_AT = "2026-06-15T12:00:00.000000Z"  # tests.conftest.NOW


def hmac_b64(body: bytes, secret: bytes = SECRET) -> str:
    return base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode()


def sample(name: str) -> bytes:
    """A byte-exact copy of an official sample (tests/fixtures/shopify/)."""
    return fixture_bytes("shopify", name)


def compliance_sample(name: str) -> bytes:
    """A compliance sample with its ``{shop}`` placeholder filled in with the test shop."""
    return sample(name).replace(b"{shop}.myshopify.com", SHOP.encode())


def as_bytes(body: bytes | str | Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def shopify_headers(topic: str, body: bytes, **overrides: str | None) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": hmac_b64(body),
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-API-Version": "2026-07",
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-Triggered-At": TRIGGERED_AT,
        "X-Shopify-Event-Id": str(uuid.uuid4()),
        "Content-Type": "application/json",
    }
    headers.update(overrides)
    return {k: v for k, v in headers.items() if v is not None}


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    return tmp_path / "exports"


@pytest.fixture
def config(database_url: str, export_dir: Path) -> Any:
    return make_config(database_url, privacy={"export_dir": str(export_dir)})


@pytest.fixture
def deliver(client: Any) -> Callable[..., Any]:
    def post(topic: str, body: bytes | str | Any, headers: dict[str, str | None] | None = None) -> Any:
        raw = as_bytes(body)
        return client.post("/webhooks/shopify", data=raw,
                           headers=shopify_headers(topic, raw, **(headers or {})))

    return post
