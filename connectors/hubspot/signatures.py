"""HubSpot request signatures: v3 (preferred), v2 and v1, all keyed with the app's client secret.

https://developers.hubspot.com/docs/apps/developer-platform/build-apps/authentication/request-validation

* v3: ``X-HubSpot-Signature-v3`` = base64(HMAC-SHA256(client_secret,
  METHOD + URI + raw body + X-HubSpot-Request-Timestamp)); the timestamp is epoch
  milliseconds and must be within the tolerance of now (both directions), which is
  the only replay protection HubSpot offers.
* v2: ``X-HubSpot-Signature`` = hex(SHA-256(client_secret + METHOD + URI + raw body)),
  with ``X-HubSpot-Signature-Version: v2`` (workflow webhooks, CRM cards).
* v1: ``X-HubSpot-Signature`` = hex(SHA-256(client_secret + raw body)), with
  ``X-HubSpot-Signature-Version: v1`` (the Webhooks API); no timestamp, so a captured
  v1 request can be replayed: ``accept_legacy_signatures: false`` refuses v1/v2.

The URI is always the configured ``webhook_url`` (the public URL registered in
HubSpot), never the URL the request reached us at: behind a proxy or load balancer
the scheme, host or port differ. For v3 HubSpot's docs say to decode a fixed list of
percent-escapes first, while its SDKs sign the URL verbatim; both forms of our own
configured URL are accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta

from cx_connector.errors import SignatureError

V3_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
LEGACY_HEADER = "X-HubSpot-Signature"
VERSION_HEADER = "X-HubSpot-Signature-Version"

#: escapes HubSpot decodes before signing a v3 URI (request-validation docs, v3 section)
_V3_DECODE = {"%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
              "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";"}


def decode_uri(uri: str) -> str:
    """The URI as HubSpot's docs say to sign it for v3 (only the listed escapes decoded)."""
    out = []
    i = 0
    while i < len(uri):
        chunk = uri[i:i + 3].upper()
        if uri[i] == "%" and chunk in _V3_DECODE:
            out.append(_V3_DECODE[chunk])
            i += 3
        else:
            out.append(uri[i])
            i += 1
    return "".join(out)


def compute_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = method.upper().encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def compute_v2(secret: str, method: str, uri: str, body: bytes) -> str:
    return hashlib.sha256(secret.encode() + method.upper().encode() + uri.encode() + body).hexdigest()


def compute_v1(secret: str, body: bytes) -> str:
    return hashlib.sha256(secret.encode() + body).hexdigest()


def timestamp_ms(now: datetime) -> str:
    return str(int(now.timestamp() * 1000))


def sign_v3(secret: str, method: str, uri: str, body: bytes, now: datetime) -> dict[str, str]:
    ts = timestamp_ms(now)
    return {V3_HEADER: compute_v3(secret, method, uri, body, ts), TIMESTAMP_HEADER: ts}


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, method: str, uri: str,
           now: datetime, tolerance: timedelta, accept_legacy: bool = True) -> str:
    """Check a request's signature on the raw bytes; return the version that matched.

    ``headers`` must be case-insensitive. v3 is used whenever its header is present
    (a bad v3 signature is not retried as v1/v2).
    """
    if headers.get(V3_HEADER) is not None:
        _verify_v3(secret, body, headers, method=method, uri=uri, now=now, tolerance=tolerance)
        return "v3"
    if headers.get(LEGACY_HEADER) is None:
        raise SignatureError(
            f"missing {V3_HEADER} (and {LEGACY_HEADER}): the request was not signed by HubSpot; "
            "check that the webhook target URL belongs to the app whose client secret is "
            "configured as connectors.hubspot.client_secret")
    if not accept_legacy:
        raise SignatureError(
            f"only {LEGACY_HEADER} (v1/v2) was sent and connectors.hubspot."
            "accept_legacy_signatures is false: v1/v2 have no timestamp and can be replayed; "
            "HubSpot sends v3 on app requests, so check the sender")
    version = (headers.get(VERSION_HEADER) or "").strip().lower()
    if version == "v1":
        expected = compute_v1(secret, body)
    elif version == "v2":
        expected = compute_v2(secret, method, uri, body)
    else:
        raise SignatureError(f"{VERSION_HEADER} must be v1 or v2 (got {version or 'nothing'}): "
                             "the request does not follow HubSpot's signing scheme")
    given = _hex(headers[LEGACY_HEADER])
    if not hmac.compare_digest(given, bytes.fromhex(expected)):
        raise SignatureError(
            f"{LEGACY_HEADER} ({version}) does not match: check connectors.hubspot.client_secret"
            + (" and that connectors.hubspot.webhook_url is exactly the URL registered in HubSpot"
               if version == "v2" else "") + " (or the body was changed after signing)")
    return version


def _hex(value: str) -> bytes:
    try:
        return bytes.fromhex(value.strip())
    except ValueError:
        raise SignatureError(f"{LEGACY_HEADER} is not a hex SHA-256 digest") from None


def _verify_v3(secret: str, body: bytes, headers: Mapping[str, str], *, method: str, uri: str,
               now: datetime, tolerance: timedelta) -> None:
    raw_ts = (headers.get(TIMESTAMP_HEADER) or "").strip()
    if not raw_ts:
        raise SignatureError(f"missing {TIMESTAMP_HEADER}: HubSpot sends it with every "
                             f"{V3_HEADER}; the request was not signed by HubSpot")
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 20:
        raise SignatureError(f"{TIMESTAMP_HEADER} must be epoch milliseconds")
    skew_ms = abs(int(timestamp_ms(now)) - int(raw_ts))
    if skew_ms > tolerance.total_seconds() * 1000:
        raise SignatureError(
            f"{TIMESTAMP_HEADER} is {skew_ms / 1000:.0f} s from now, more than "
            f"the {tolerance.total_seconds():.0f} s allowed (webhooks.signature_tolerance): a "
            "replayed request, or this server's clock is wrong (check NTP)")
    try:
        given = base64.b64decode(headers[V3_HEADER].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{V3_HEADER} is not base64") from None
    ok = False
    for candidate in dict.fromkeys((uri, decode_uri(uri))):
        expected = base64.b64decode(compute_v3(secret, method, candidate, body, raw_ts))
        ok |= hmac.compare_digest(given, expected)
    if not ok:
        raise SignatureError(
            f"{V3_HEADER} does not match: check connectors.hubspot.client_secret (the app's "
            "client secret) and that connectors.hubspot.webhook_url is exactly the target URL "
            "registered in HubSpot (or the body was changed after signing)")
