"""``X-CX-Signature``: base64 HMAC-SHA256 of the raw body, keyed with ``generic.secret``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

from cx_connector.errors import SignatureError

HEADER = "X-CX-Signature"


def compute(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    given = headers.get(HEADER)
    if not given:
        raise SignatureError(f"missing {HEADER} header: sign the raw body with HMAC-SHA256 "
                             "using generic.secret and send it base64-encoded")
    try:
        given_raw = base64.b64decode(given.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{HEADER} is not base64") from None
    expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    if not hmac.compare_digest(given_raw, expected):
        raise SignatureError(f"{HEADER} does not match the body (wrong secret, or the body was "
                             "changed after signing)")
