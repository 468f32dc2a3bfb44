"""Zendesk webhook signatures.

Zendesk signs every webhook request with
``X-Zendesk-Webhook-Signature = base64(HMAC-SHA256(TIMESTAMP + BODY))``, where
``TIMESTAMP`` is the value of ``X-Zendesk-Webhook-Signature-Timestamp`` (ISO-8601,
UTC) and the key is the webhook's signing secret *as a literal UTF-8 string*: it
looks like base64 but must not be decoded. A request without a body signs the
timestamp alone. https://developer.zendesk.com/documentation/webhooks/verifying/

Zendesk calls verification optional and sets no replay window; because the
timestamp is part of what is signed, we enforce one ourselves
(``webhooks.signature_tolerance``, 5 minutes by default), in both directions, so
a captured request cannot be replayed later and a clock far ahead is noticed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from cx_connector.errors import SignatureError

SIGNATURE_HEADER = "X-Zendesk-Webhook-Signature"
TIMESTAMP_HEADER = "X-Zendesk-Webhook-Signature-Timestamp"


def compute(secret: str, timestamp: str, body: bytes) -> str:
    """The base64 signature Zendesk sends for ``body`` signed at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("utf-8") + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def format_timestamp(when: datetime) -> str:
    """A timestamp in the form Zendesk sends (``2024-04-17T17:18:10Z``)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str) -> datetime:
    """The signed timestamp as an aware UTC datetime (a missing zone means UTC, as documented)."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not an ISO-8601 time ({value[:40]!r}); "
                             "the request did not come from Zendesk unchanged") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def verify(secret: str | Sequence[str], body: bytes, headers: Mapping[str, str], *, now: datetime,
           tolerance: timedelta) -> None:
    """Raise :class:`SignatureError` unless ``body`` carries a valid, fresh Zendesk signature.

    ``secret`` may be several secrets (each Zendesk webhook has its own, and an event
    webhook and a trigger webhook can post to the same URL); any one of them matching is
    enough. Works on the raw bytes only; nothing is parsed before the signature matched.
    ``headers`` must be case-insensitive (the inbox passes a ``CaseInsensitiveDict``).
    """
    secrets = [secret] if isinstance(secret, str) else [s for s in secret if s]
    given = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not given or not timestamp:
        missing = " and ".join(h for h, v in ((SIGNATURE_HEADER, given), (TIMESTAMP_HEADER, timestamp))
                               if not v)
        raise SignatureError(f"missing {missing}: point a Zendesk webhook at this URL (Admin Center > "
                             "Apps and integrations > Webhooks); Zendesk signs every request")
    timestamp = timestamp.strip()
    try:
        given_raw = base64.b64decode(given.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{SIGNATURE_HEADER} is not base64") from None
    matched = False
    for key in secrets:  # every candidate is compared, in constant time each
        expected = base64.b64decode(compute(key, timestamp, body))
        matched = hmac.compare_digest(given_raw, expected) or matched
    if not matched:
        raise SignatureError(
            f"{SIGNATURE_HEADER} does not match: set connectors.zendesk.webhook_secret (and "
            "trigger_webhook_secret for a second webhook) to the webhook's signing secret (Admin "
            "Center > Webhooks > the webhook > Reveal secret), or the body was changed after signing")
    when = parse_timestamp(timestamp)
    skew = now - when
    if abs(skew) > tolerance:
        direction = "old" if skew > timedelta(0) else "far in the future"
        raise SignatureError(
            f"{TIMESTAMP_HEADER} {timestamp} is {direction} (more than {tolerance} from now): "
            "a replayed request, or this server's clock is wrong (check NTP); "
            "webhooks.signature_tolerance sets the window")


def sign(secret: str, body: bytes, *, now: datetime) -> dict[str, str]:
    """The two headers Zendesk would send for ``body`` at ``now`` (demo, tests, load tests)."""
    timestamp = format_timestamp(now)
    return {SIGNATURE_HEADER: compute(secret, timestamp, body), TIMESTAMP_HEADER: timestamp}
