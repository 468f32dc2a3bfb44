"""Who may use the admin pages and the JSON API, and how that is checked.

* **The token.** Everything is behind ``admin_token``; without one configured the
  pages and the API refuse every request (:class:`~cx_connector.errors.AdminDisabled`),
  they are never open by default. A token is compared in constant time, and on HMACs
  of both sides so that not even its length shows in the timing.
* **The session.** The login form sets Flask's signed session cookie. Its signing key
  is derived from the token (HMAC-SHA256 of a fixed label), so every gunicorn worker
  and every restart agrees without another secret to configure, and changing the
  token logs every session out. The cookie is ``HttpOnly``, ``SameSite=Lax``, expires
  after ``admin.session_lifetime`` without use, and is ``Secure`` when the request came
  over https (see :func:`is_https`) or always with ``admin.secure_cookie: always``.
* **CSRF.** Every form POST carries the session's random token in a hidden field,
  compared in constant time; ``SameSite=Lax`` alone would not cover older browsers.
* **Slow-down.** Wrong tokens are counted per client address in a token bucket of
  :data:`BURST` attempts refilled one every :data:`REFILL_SECONDS`; an empty bucket
  answers 429 with ``Retry-After`` without looking at the token. The buckets live in
  each worker's memory, so with N workers an address gets at most N times that.
* **The API** takes ``Authorization: Bearer <admin_token>``; the pages' own session
  cookie is accepted for its GETs too.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

from cx_connector.errors import AdminDisabled, CsrfError, InvalidToken, TooManyAttempts, Unauthorized

#: the label HMAC'd with the admin token into the session signing key
KEY_LABEL = b"cx-connector admin session signing key v1"
SESSION_COOKIE = "cx_admin"
#: wrong tokens one client address may send at once, then one per REFILL_SECONDS
BURST = 10
REFILL_SECONDS = 6.0
#: client addresses remembered (the oldest are forgotten first)
MAX_CLIENTS = 10_000

HOW_TO_ENABLE = ("set admin_token in the configuration (16 or more random characters, e.g. "
                 "python -c 'import secrets; print(secrets.token_urlsafe(32))', best through an "
                 "environment variable: admin_token: ${CX_ADMIN_TOKEN}) and restart")


def admin_token(app: Flask | None = None) -> str | None:
    app = app or current_app
    return app.extensions["cx"].config.admin_token


def signing_key(token: str) -> bytes:
    return hmac.new(token.encode(), KEY_LABEL, hashlib.sha256).digest()


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison of HMACs of both (equal length, whatever was typed)."""
    key = b"cx-connector admin token comparison"
    a = hmac.new(key, given.encode("utf-8", "replace"), hashlib.sha256).digest()
    b = hmac.new(key, token.encode("utf-8", "replace"), hashlib.sha256).digest()
    return hmac.compare_digest(a, b)


def is_https() -> bool:
    """Did this request reach us over TLS?

    Directly (``wsgi.url_scheme``), or through a TLS-terminating proxy that says so in
    ``X-Forwarded-Proto`` or ``Forwarded: proto=https`` (RFC 7239). The headers are
    believed whoever sent them because they can only *add* the Secure flag: a client
    forging them gets a cookie its own plain-http connection will not send back, and
    nobody can use them to take the flag away.
    """
    if request.is_secure:
        return True
    forwarded_proto = request.headers.get("X-Forwarded-Proto", "")
    if forwarded_proto.split(",")[0].strip().lower() == "https":
        return True
    first = request.headers.get("Forwarded", "").split(",")[0]
    for pair in first.split(";"):
        name, _, value = pair.strip().partition("=")
        if name.lower() == "proto" and value.strip('"').lower() == "https":
            return True
    return False


class AdminSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, keyed by the admin token (see the module docstring)."""

    salt = "cx-connector admin session"

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        token = admin_token(app)
        if not token:
            return None  # Flask then gives a null session: nothing can be stored
        return URLSafeTimedSerializer(signing_key(token), salt=self.salt, serializer=self.serializer,
                                      signer_kwargs={"key_derivation": "hmac",
                                                     "digest_method": hashlib.sha256})

    def get_cookie_secure(self, app: Flask) -> bool:
        if app.extensions["cx"].config.admin.secure_cookie == "always":
            return True
        return has_request_context() and is_https()


def init_session(app: Flask) -> None:
    config = app.extensions["cx"].config
    app.session_interface = AdminSessionInterface()
    app.config.update(SESSION_COOKIE_NAME=SESSION_COOKIE, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_PATH="/",
                      PERMANENT_SESSION_LIFETIME=config.admin.session_lifetime)
    app.extensions["cx_admin_throttle"] = Throttle()


# --- brute-force slow-down ------------------------------------------------------------------


class Throttle:
    """Wrong tokens per client address: a token bucket (thread-safe, bounded memory)."""

    def __init__(self, burst: int = BURST, refill_seconds: float = REFILL_SECONDS,
                 clock: Callable[[], float] = time.monotonic, max_clients: int = MAX_CLIENTS) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) / self.refill_seconds)

    def wait(self, key: str) -> int:
        """Seconds before ``key`` may try a token again (0: now)."""
        with self._lock:
            level = self._level(key, self.clock())
        return 0 if level >= 1 else math.ceil((1 - level) * self.refill_seconds)

    def failed(self, key: str) -> None:
        with self._lock:
            now = self.clock()
            self._buckets[key] = (self._level(key, now) - 1, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._buckets.pop(key, None)


def throttle() -> Throttle:
    return current_app.extensions["cx_admin_throttle"]


def client_key() -> str:
    return request.remote_addr or "unknown"


def check_token(given: str) -> bool:
    """Compare a token from a client, counting failures against its address.

    Raises :class:`TooManyAttempts` (before comparing) when the address has no attempts left.
    """
    key = client_key()
    wait = throttle().wait(key)
    if wait:
        raise TooManyAttempts(f"too many wrong tokens from this address: try again in {wait} s",
                              retry_after=wait)
    if token_matches(given, admin_token() or ""):
        throttle().succeeded(key)
        return True
    throttle().failed(key)
    return False


# --- sessions and CSRF ----------------------------------------------------------------------


def logged_in() -> bool:
    return bool(admin_token()) and session.get("admin") is True


def log_in() -> None:
    """A new session (nothing carried over from before the login) with a new CSRF token."""
    session.clear()
    session["admin"] = True
    session["csrf"] = secrets.token_urlsafe(32)
    session.permanent = True


def log_out() -> None:
    session.clear()


def csrf_token() -> str:
    """The session's CSRF token (created on first use, also before logging in)."""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    given = request.form.get("csrf_token", "")
    expected = session.get("csrf")
    if not given:
        raise CsrfError("the form was sent without its CSRF token: reload the page and try again")
    if not isinstance(expected, str) or not expected:
        raise CsrfError("no session to check the form against (are cookies enabled?): reload the "
                        "page and try again")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
        raise CsrfError("the form's CSRF token does not match this session: reload the page and "
                        "try again")


# --- the API ---------------------------------------------------------------------------------


def require_api() -> None:
    """Bearer token, or the pages' session; raises the JSON error otherwise."""
    if not admin_token():
        raise AdminDisabled(f"the admin API is disabled: {HOW_TO_ENABLE}")
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise _with_challenge(Unauthorized("use Authorization: Bearer <admin_token>"))
        if not check_token(given.strip()):
            raise _with_challenge(InvalidToken("the token is not the admin token"), error="invalid_token")
        return
    if logged_in():
        return
    raise _with_challenge(Unauthorized("authentication required: send Authorization: Bearer "
                                       "<admin_token> (or log in at /admin/login)"))


def _with_challenge(exc: Any, error: str | None = None) -> Any:
    challenge = 'Bearer realm="cx-connector"' + (f', error="{error}"' if error else "")
    exc.headers = {"WWW-Authenticate": challenge}
    return exc
