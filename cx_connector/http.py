"""The HTTP-session helper connectors use to call their platform's API.

One place decides timeouts, the User-Agent and how an HTTP answer maps onto the
error tree (:func:`raise_for_status`), so every client reports failures the same
way and the outbox can tell a retryable failure from a permanent one.
"""

from __future__ import annotations

import base64
import email.utils
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from cx_connector import __version__
from cx_connector.errors import (
    PlatformAPIError,
    PlatformAuthError,
    PlatformRateLimited,
    PlatformRecordGone,
    PlatformUnavailable,
    PlatformValidationError,
)

USER_AGENT = f"cx-connector/{__version__} (+https://github.com/cx-connector/cx-connector)"
DEFAULT_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)


class Session(requests.Session):
    """A ``requests.Session`` with a base URL, default timeout and error mapping.

    ``session.call("POST", "/crm/v3/...", json=...)`` returns the response for a
    2xx and raises a :class:`~cx_connector.errors.PlatformAPIError` subclass
    otherwise (connection errors and timeouts included).
    """

    def __init__(self, platform: str, base_url: str, headers: Mapping[str, str] | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.platform = platform
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers["User-Agent"] = USER_AGENT
        self.headers["Accept"] = "application/json"
        self.headers.update(headers or {})

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", self.timeout)
        try:
            resp = self.request(method, self.url(path), **kw)
        except requests.Timeout as exc:
            raise PlatformUnavailable(f"{self.platform}: {method} {path} timed out; will retry",
                                      platform=self.platform) from exc
        except requests.ConnectionError as exc:
            raise PlatformUnavailable(f"{self.platform}: cannot connect for {method} {path}: "
                                      f"{type(exc).__name__}; will retry",
                                      platform=self.platform) from exc
        return raise_for_status(resp, self.platform)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: either a number (``2.0``) or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _snippet(resp: requests.Response) -> str:
    try:
        text = resp.text
    except Exception:  # undecodable body
        return ""
    return text[:500]


#: header and query parameter names whose values are credentials
_CREDENTIAL_NAMES = ("authorization", "token", "secret", "password", "api-key", "api_key", "apikey")


def credentials(request: requests.PreparedRequest | None) -> list[str]:
    """The credential values a request carried (headers, basic auth, query string).

    An error message is built from the platform's answer, and some platforms quote the
    request back; these values are cut out of it before it is logged, stored in the
    outbox or printed (the log filter alone would not cover the last two).
    """
    if request is None:
        return []
    found: list[str] = []
    for name, value in (request.headers or {}).items():
        if not any(n in name.lower() for n in _CREDENTIAL_NAMES) or not isinstance(value, str):
            continue
        found.append(value)
        scheme, _, credential = value.partition(" ")
        if credential:
            found.append(credential)
        if scheme.lower() == "basic":
            try:
                user_pass = base64.b64decode(credential, validate=True).decode()
            except ValueError:
                continue
            found += [user_pass, user_pass.partition(":")[2]]
    for name, value in parse_qsl(urlsplit(request.url or "").query):
        if any(n in name.lower() for n in _CREDENTIAL_NAMES):
            found.append(value)
    return sorted({v for v in found if len(v) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def raise_for_status(resp: requests.Response, platform: str) -> requests.Response:
    """Map an HTTP status onto the error tree; return the response when it is 2xx."""
    status = resp.status_code
    if 200 <= status < 300:
        return resp
    secrets = credentials(resp.request)
    body = redact(_snippet(resp), secrets)
    where = redact(f"{platform}: {resp.request.method if resp.request else ''} {resp.url} -> {status}",
                   secrets)
    kw = {"platform": platform, "status": status, "body": body}
    if status in (401, 403):
        raise PlatformAuthError(
            f"{where}: the access token was refused or lacks a scope; check "
            f"connectors.{platform} credentials and the app's scopes", **kw)
    if status == 429:
        raise PlatformRateLimited(f"{where}: rate limited; backing off",
                                  retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
                                  **kw)
    if status in (404, 410):
        raise PlatformRecordGone(f"{where}: the record does not exist (deleted or merged)", **kw)
    if status in (400, 409, 422):
        raise PlatformValidationError(f"{where}: refused as invalid: {body[:200]}", **kw)
    if status >= 500 or status in (408, 425):
        raise PlatformUnavailable(f"{where}: platform error; will retry", **kw)
    raise PlatformAPIError(f"{where}: unexpected answer: {body[:200]}", **kw)


def patiently(throttle: Any, request: Callable[[], Any], *, attempts: int = 5, first_wait: float = 1.0,
              max_wait: float = 60.0, transient: bool = False) -> Any:
    """``request()``, asked again after a 429 (waiting ``Retry-After``, else an exponential
    backoff from ``first_wait``) and, with ``transient``, after an outage (5xx, timeout).

    For requests that are not the write itself: ``cx-connector setup`` (a 429 from a
    budget other apps share must not fail the command) and Zendesk's job-status polls
    (a refused poll must not send the update again). Gives up, raising the last error,
    after ``attempts`` tries or when the platform asks to wait longer than ``max_wait``.
    ``request`` must take its slot of ``throttle`` itself (``with throttle.slot():``),
    so that the pause is waited out before it is sent again.
    """
    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return request()
        except PlatformRateLimited as exc:
            delay = exc.retry_after if exc.retry_after is not None else wait
            if attempt == attempts or delay > max_wait:
                raise
            throttle.pause(delay)  # every request of the platform waits, not only this one
        except PlatformUnavailable:
            if not transient or attempt == attempts:
                raise
            throttle.sleep(wait)
        wait *= 2
    raise AssertionError("unreachable")  # pragma: no cover
