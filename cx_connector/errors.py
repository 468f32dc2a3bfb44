"""The one exception tree of cx-connector.

Every error the service raises on purpose is a :class:`CxError`. Each class knows
the HTTP status the JSON error handler answers with and the exit code the CLI
returns, so neither place needs a table of its own. Messages are written for the
person who has to act on them: they say what went wrong *and* what to do.
"""

from __future__ import annotations

from collections.abc import Iterable


class CxError(Exception):
    """Base of every deliberate cx-connector error."""

    http_status: int = 500
    exit_code: int = 1
    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict:
        return {"error": self.code, "message": self.message}


# --- configuration -----------------------------------------------------------


class ConfigError(CxError):
    """The configuration file is missing, unreadable or invalid.

    ``problems`` holds ``(key_path, message)`` pairs such as
    ``("connectors.shopify.client_secret", "missing")``; ``str()`` renders one
    line per problem so the admin sees every mistake at once, not one per run.
    """

    exit_code = 2
    code = "config_error"

    def __init__(self, problems: Iterable[tuple[str, str]] | str, source: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [("", problems)]
        self.problems = sorted(problems)
        self.source = source
        head = f"invalid configuration in {source}" if source else "invalid configuration"
        lines = [f"{path}: {msg}" if path else msg for path, msg in self.problems]
        super().__init__(head + ":\n  " + "\n  ".join(lines))


class NotMigrated(CxError):
    """The database schema is older (or newer) than this release expects."""

    exit_code = 2
    http_status = 503
    code = "database_not_migrated"


class DatabaseUnavailable(CxError):
    """The database cannot be reached; webhooks answer 503 so platforms retry."""

    http_status = 503
    code = "database_unavailable"


# --- inbound webhooks ----------------------------------------------------------


class SignatureError(CxError):
    """A webhook's signature is missing, malformed, stale or wrong (HTTP 401)."""

    http_status = 401
    code = "invalid_signature"


class PayloadError(CxError):
    """A verified payload cannot be turned into touchpoints.

    The delivery is kept with status ``failed`` and this message, and can be
    replayed once the cause is fixed (``cx-connector events replay``).
    """

    http_status = 422
    code = "invalid_payload"


class NotFound(CxError):
    http_status = 404
    code = "not_found"


class Unauthorized(CxError):
    http_status = 401
    code = "unauthorized"


# --- admin console and JSON API -----------------------------------------------
# ``headers`` of an error go out with its response (the one JSON error handler adds them).


class AdminDisabled(CxError):
    """No ``admin_token`` is configured: the admin pages and the API refuse everything."""

    http_status = 403
    code = "admin_disabled"


class InvalidToken(Unauthorized):
    """A token was given, and it is not the admin token."""

    code = "invalid_token"


class CsrfError(CxError):
    """An admin form was posted without its session's CSRF token (or with another one)."""

    http_status = 403
    code = "csrf_failed"


class TooManyAttempts(CxError):
    """Too many wrong tokens from one client address: wait ``retry_after`` seconds."""

    http_status = 429
    code = "too_many_attempts"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class InvalidParameter(CxError):
    """A query parameter of the JSON API is unknown or has a bad value."""

    http_status = 400
    code = "invalid_parameter"


# --- outbound platform APIs ----------------------------------------------------


class PlatformAPIError(CxError):
    """A platform API call failed. ``retryable`` tells the outbox whether to try again."""

    http_status = 502
    code = "platform_error"
    retryable = False

    def __init__(self, message: str, *, platform: str = "", status: int | None = None,
                 body: str | None = None) -> None:
        super().__init__(message)
        self.platform = platform
        self.status = status
        self.body = body


class PlatformAuthError(PlatformAPIError):
    """401/403: the token is wrong, expired or lacks a scope. Retrying will not help."""

    code = "platform_auth"


class PlatformRateLimited(PlatformAPIError):
    """429 (or a throttled GraphQL answer). ``retry_after`` is in seconds when the platform said."""

    code = "platform_rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class PlatformUnavailable(PlatformAPIError):
    """5xx, timeout or connection failure: transient, retried with backoff."""

    code = "platform_unavailable"
    retryable = True


class PlatformValidationError(PlatformAPIError):
    """400/422: the request was refused as invalid. A batch is split to find the bad record."""

    code = "platform_validation"


class PlatformRecordGone(PlatformAPIError):
    """404/410: the record was deleted or merged on the platform."""

    code = "platform_record_gone"


class PlatformFieldsMissing(PlatformAPIError):
    """The platform refused a write because a score field does not exist there (setup
    was not run, or the field was deleted). No record is at fault: the write-back stops
    for the run instead of splitting the batch down to every single record."""

    code = "platform_fields_missing"


# --- scoring -------------------------------------------------------------------


class FitError(CxError):
    """A population model (BG/NBD, Gamma-Gamma) could not be fitted.

    Never escapes a scoring run: the run uses the documented fallback and puts this
    message into the run report and into every affected customer's explanation.
    """

    code = "fit_failed"
