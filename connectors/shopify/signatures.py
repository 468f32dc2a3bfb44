"""Shopify webhook verification: the HMAC over the raw body, then the unsigned headers.

``X-Shopify-Hmac-Sha256`` is ``base64(HMAC-SHA256(client_secret, raw body))``
(https://shopify.dev/docs/apps/build/webhooks/verify-deliveries). Only the body is
signed: the headers, including the shop and the time, are not, so a captured
body + HMAC pair could be replayed with altered headers. Hence, after the HMAC:

* ``X-Shopify-Shop-Domain`` must be the configured shop (no cross-tenant replay);
* ``X-Shopify-Triggered-At``, when present, must not be stale. Shopify retries a
  failed delivery 8 times over 4 hours *with the original payload and trigger
  time* (https://shopify.dev/changelog/updates-to-webhook-retry-mechanism), so the
  accepted age is ``max(signature_tolerance, max_delivery_age)``: a 5-minute window
  would answer every retry with 401 and lose the event for good (Shopify deletes a
  subscription after 8 failures). A time further in the future than
  ``signature_tolerance`` is refused;
* on the mandatory compliance topics the body's ``shop_domain`` must equal the
  header (https://shopify.dev/docs/apps/build/compliance/privacy-law-compliance),
  checked only after the HMAC proved the bytes are Shopify's.

Required headers (401 without them): the HMAC, ``X-Shopify-Topic``,
``X-Shopify-Shop-Domain`` and ``X-Shopify-Webhook-Id`` (the dedupe key), as
``shopify-app-js`` requires (``lib/webhooks/validate.ts``). The ``unstable`` Events
preview sends the same headers without the ``X-`` prefix (``shopify-topic``, ...;
``lib/webhooks/header-names.ts``): both spellings are read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta

from cx_connector.connector import parse_json
from cx_connector.errors import PayloadError, SignatureError

HMAC = "X-Shopify-Hmac-Sha256"
TOPIC = "X-Shopify-Topic"
SHOP_DOMAIN = "X-Shopify-Shop-Domain"
WEBHOOK_ID = "X-Shopify-Webhook-Id"
TRIGGERED_AT = "X-Shopify-Triggered-At"
API_VERSION = "X-Shopify-API-Version"
EVENT_ID = "X-Shopify-Event-Id"

REQUIRED = (HMAC, TOPIC, SHOP_DOMAIN, WEBHOOK_ID)

#: topics Shopify sends to every App Store app; their body names the shop
COMPLIANCE_TOPICS = frozenset({"customers/data_request", "customers/redact", "shop/redact"})


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A Shopify header by its ``X-Shopify-...`` name, also found under ``Shopify-...``.

    ``headers`` is case-insensitive (the inbox passes a ``CaseInsensitiveDict``).
    Returns the stripped value, or ``None`` when absent or blank.
    """
    for key in (name, name[2:]):
        value = headers.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def compute(secret: str, body: bytes) -> str:
    """The ``X-Shopify-Hmac-Sha256`` value for ``body``."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def parse_time(value: str) -> datetime | None:
    """Shopify's ISO-8601 time (``2025-07-10T16:15:47.000000Z``), aware; ``None`` if unusable."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def verify(body: bytes, headers: Mapping[str, str], *, secret: str, shop: str, now: datetime,
           tolerance: timedelta, max_age: timedelta) -> None:
    """Raise :class:`SignatureError` unless the request is a genuine delivery for ``shop``."""
    missing = [name for name in REQUIRED if header(headers, name) is None]
    if missing:
        raise SignatureError(
            f"missing {', '.join(missing)} header{'s' if len(missing) > 1 else ''}: this endpoint "
            "only accepts Shopify webhook deliveries (subscribe the app's webhooks to this URL)")
    given = header(headers, HMAC) or ""
    try:
        given_raw = base64.b64decode(given, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{HMAC} is not base64: it must be the base64 HMAC-SHA256 of the raw "
                             "body") from None
    expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    if not hmac.compare_digest(given_raw, expected):
        raise SignatureError(f"{HMAC} does not match the body: check connectors.shopify.client_secret "
                             "is the app's client secret (after a rotation Shopify may sign with the "
                             "old one for up to an hour), or the body was changed on the way")
    domain = (header(headers, SHOP_DOMAIN) or "").lower()
    if domain != shop.lower():
        raise SignatureError(f"{SHOP_DOMAIN} names another shop than connectors.shopify.shop "
                             f"({shop}): a delivery for another store is refused")
    triggered = header(headers, TRIGGERED_AT)
    if triggered is not None:
        when = parse_time(triggered)
        if when is None:
            raise SignatureError(f"{TRIGGERED_AT} is not an ISO-8601 time with a time zone")
        if when > now + tolerance:
            raise SignatureError(f"{TRIGGERED_AT} is in the future by more than "
                                 "webhooks.signature_tolerance: check this server's clock")
        if when < now - max(tolerance, max_age):
            raise SignatureError(f"{TRIGGERED_AT} is older than connectors.shopify.max_delivery_age: "
                                 "a stale or replayed delivery is refused")
    topic = (header(headers, TOPIC) or "").lower()
    if topic in COMPLIANCE_TOPICS:
        try:
            payload = parse_json(body)
        except PayloadError:  # not JSON, or nested too deeply to read
            payload = None
        body_domain = payload.get("shop_domain") if isinstance(payload, dict) else None
        if not isinstance(body_domain, str) or body_domain.strip().lower() != domain:
            raise SignatureError(f"{topic}: the body's shop_domain must equal {SHOP_DOMAIN} "
                                 "(a compliance request for another shop is refused)")
