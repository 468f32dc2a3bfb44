"""The connector contract: everything the core needs from a platform, in one place.

A platform (HubSpot, Zendesk, Shopify, the generic JSON webhook, or a fourth one
someone adds) is a package under ``connectors/`` with one subclass of
:class:`Connector`, registered in the ``cx_connector.connectors`` entry-point
group. The core talks only to this class; a connector imports only this module,
:mod:`cx_connector.errors` and :mod:`cx_connector.http`.

One name everywhere: :attr:`Connector.name` is the package, the webhook URL
(``/webhooks/<name>``), the config section (``connectors.<name>``), the
``source`` column of touchpoints and identities, the logger name and the job id.

Inbound, a request goes through two pure methods:

* :meth:`Connector.verify` takes the raw bytes and headers (never
  ``flask.request``) and raises :class:`~cx_connector.errors.SignatureError`.
* :meth:`Connector.normalise` turns a verified :class:`Delivery` into a
  :class:`Normalised` result: frozen touchpoints plus identity/privacy
  :data:`Action` objects. It does no I/O; the clock is passed in.

Everything outbound (enrichment, write-back, backfill, alerts) is declared below in
its own section with a default that says the connector does not support it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any, ClassVar

from marshmallow import RAISE, Schema, ValidationError, fields
from requests.structures import CaseInsensitiveDict

from cx_connector.errors import PayloadError
from cx_connector.fields import FIELDS, SCORE_FIELDS, ScoreField  # re-exported for connectors
from cx_connector.touchpoint import (  # re-exported: connectors import them from here
    CHANNELS,
    KINDS,
    STAGES,
    CustomerRef,
    Product,
    Rating,
    Touchpoint,
    clean_text,
    normalise_email,
    normalise_phone,
)

__all__ = [
    "CHANNELS",
    "FIELDS",
    "KINDS",
    "SCORE_FIELDS",
    "STAGES",
    "BackfillPage",
    "BackfillResource",
    "CatalogueProduct",
    "Connector",
    "ContactDetails",
    "CustomerRef",
    "Delivery",
    "Duration",
    "Export",
    "Forget",
    "ForgetAll",
    "Gone",
    "Headers",
    "Link",
    "Lookup",
    "Merge",
    "Normalised",
    "PlannedRequest",
    "Product",
    "RateBudget",
    "Rating",
    "RecordAlert",
    "RecordWrite",
    "Restore",
    "SampleDelivery",
    "ScoreField",
    "ServiceUrl",
    "SettingsSchema",
    "SetupItem",
    "SetupReport",
    "Throttle",
    "Touchpoint",
    "WriteResult",
    "clean_text",
    "combine",
    "normalise_email",
    "normalise_phone",
    "parse_json",
]

_DURATION_RE = re.compile(r"(\d+)\s*([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

Headers = CaseInsensitiveDict
"""Header mapping with case-insensitive keys (HTTP/2 lower-cases every header)."""


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(body: bytes) -> Any:
    """Parse JSON exactly: floats become ``Decimal`` (money), big ints stay ints (ids > 2^53).

    ``NaN`` and ``Infinity``, which Python's parser accepts, are refused: they are not JSON,
    and PostgreSQL's JSON columns refuse them, so one kept in an attribute failed the store.
    """
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("body is JSON nested too deeply to be read") from None


@dataclass(frozen=True)
class Delivery:
    """One verified inbound webhook request, as stored in the inbox."""

    source: str
    body: bytes
    headers: Mapping[str, str]
    received_at: datetime
    method: str = "POST"
    url: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.headers, CaseInsensitiveDict):
            object.__setattr__(self, "headers", CaseInsensitiveDict(self.headers))

    @cached_property
    def payload(self) -> Any:
        """The body parsed as JSON (see :func:`parse_json`); raises PayloadError."""
        return parse_json(self.body)


# --- what normalise returns ------------------------------------------------------


@dataclass(frozen=True)
class Merge:
    """The platform merged records: identities ``source/merged_ids`` now mean ``source/into_id``."""

    source: str
    merged_ids: tuple[str, ...]
    into_id: str


@dataclass(frozen=True)
class Link:
    """Two identities of one source are the same customer (e.g. a deal and its contact)."""

    source: str
    source_id: str
    customer: CustomerRef


@dataclass(frozen=True)
class ContactDetails:
    """A record's contact details as they were at ``at``, from an event that says neither
    what changed nor who changed it (Shopify ``customers/update`` sends the whole
    customer after any edit: a tag, a note, an address, a metafield, maybe our own).

    The core links and dates them like a touchpoint's customer (an older snapshot
    arriving late never overwrites a newer one), but they are no fact to score: no
    touchpoint is stored and no rescoring is asked for. A delivery whose only effect is
    contact details that change nothing (the record is known, with this email, phone
    and name) is stored as ``ignored`` with ``unchanged`` as the reason.
    """

    source: str
    customer: CustomerRef
    at: datetime
    unchanged: str = "no new contact details: the record is already known with this email, phone and name"


@dataclass(frozen=True)
class Forget:
    """Erase one person's personal data (platform deletion or a privacy request).

    Matched by ``source_id`` within ``source`` and/or by ``email``. The platform no
    longer holds record ``source_id`` (deleted at ``occurred_at``, default: when the
    action is applied): its id is kept as a tombstone, so that facts about it arriving
    afterwards are filed anonymously and bring no personal data back.
    """

    source: str
    source_id: str | None = None
    email: str | None = None
    reason: str = ""
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class Restore:
    """The platform restored deleted record ``source/source_id`` at ``occurred_at``, under the
    same id (HubSpot ``contact.restore``: a restorable deletion can be undone within 90
    days). Lifts the tombstone a :class:`Forget` of that record left, when older."""

    source: str
    source_id: str
    occurred_at: datetime


@dataclass(frozen=True)
class ForgetAll:
    """Erase everything that came from ``source`` (e.g. Shopify ``shop/redact``)."""

    source: str
    reason: str = ""


@dataclass(frozen=True)
class Export:
    """Produce a personal-data export for the admin to hand over (e.g. ``customers/data_request``)."""

    source: str
    source_id: str | None = None
    email: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Gone:
    """The platform deleted record ``source/source_id`` (e.g. Shopify ``customers/delete``).

    Not an erasure: the identity stays linked (history kept) but is marked gone, so
    nothing is written to it again. A record unknown so far is kept as gone, so a
    creation arriving after its deletion does not bring it back.
    """

    source: str
    source_id: str


@dataclass(frozen=True)
class CatalogueProduct:
    """A product's current catalogue entry (e.g. Shopify ``products/update``).

    Order line items often lack the category (Shopify's carry no ``product_type``);
    scoring takes the category from this catalogue when the touchpoint has none.
    """

    source: str
    product_id: str
    title: str | None = None
    category: str | None = None
    sku: str | None = None
    updated_at: datetime | None = None


Action = (Merge | Link | ContactDetails | Forget | ForgetAll | Export | CatalogueProduct | Gone
          | Restore)


@dataclass(frozen=True)
class Normalised:
    """The result of normalising one delivery.

    ``ignored`` set (with a reason) stores the delivery as ``ignored``: a known
    but uninteresting or unknown event, answered 200 and not retried.
    """

    touchpoints: tuple[Touchpoint, ...] = ()
    actions: tuple[Action, ...] = ()
    ignored: str | None = None

    @classmethod
    def ignore(cls, reason: str) -> Normalised:
        return cls(ignored=reason)


@dataclass(frozen=True)
class Lookup:
    """What a platform said about records the enrichment job asked for.

    ``found``: one :class:`Link` per record, whose ``customer`` carries the contact
    details (for a plain contact ``customer.source_id == source_id``; for a deal or
    ticket it is the associated contact). ``missing``: ids the platform no longer
    has (deleted or merged away); they are marked gone and never written to.
    """

    found: tuple[Link, ...] = ()
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class SampleDelivery:
    """A bundled example request (unsigned): used by ``cx-connector demo`` and tests."""

    name: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


# --- write-back ----------------------------------------------------------------------


@dataclass(frozen=True)
class RecordWrite:
    """One record's changed score fields, as :meth:`Connector.write_batch` receives them.

    ``fields`` maps score-field names (:data:`SCORE_FIELDS`) to canonical values
    (:func:`cx_connector.fields.canonical`); ``None`` means "clear the field".
    """

    external_id: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class WriteResult:
    """What happened to one record of a batch.

    ``ok``: written. ``retry``: not written, try again later (``retry_after``
    seconds when the platform said; counts as an attempt). ``resend``: not written
    only because another record made the batch fail (atomic batches): sent again
    at once, no attempt counted. ``failed``: refused for good (``reason`` says
    why). ``gone``: the record no longer exists (deleted). ``merged``: the record
    was merged into ``merged_into``; ``landed`` tells whether the write reached
    the surviving record anyway.
    """

    status: str
    reason: str = ""
    retry_after: float | None = None
    merged_into: str | None = None
    landed: bool = False

    STATUSES: ClassVar[tuple[str, ...]] = ("ok", "retry", "resend", "failed", "gone", "merged")

    @classmethod
    def ok(cls) -> WriteResult:
        return cls("ok", landed=True)

    @classmethod
    def retry(cls, reason: str, retry_after: float | None = None) -> WriteResult:
        return cls("retry", reason, retry_after=retry_after)

    @classmethod
    def resend(cls, reason: str) -> WriteResult:
        return cls("resend", reason)

    @classmethod
    def failed(cls, reason: str) -> WriteResult:
        return cls("failed", reason)

    @classmethod
    def gone(cls, reason: str) -> WriteResult:
        return cls("gone", reason)

    @classmethod
    def merged(cls, into: str, *, landed: bool, reason: str = "") -> WriteResult:
        return cls("merged", reason or f"merged into {into}", merged_into=into, landed=landed)


@dataclass(frozen=True)
class RecordAlert:
    """One alert to put on one platform record, as :meth:`Connector.post_alert` receives it.

    ``key`` names this alert on this record and is the same on every attempt: put it
    into what is created, so that a retry can find an earlier attempt that landed.
    ``title`` is one line; ``lines`` the body, plain text (the connector formats it for
    its platform). ``at``: when the alert fired. ``maybe_sent``: an earlier attempt may
    have landed (it timed out, or its worker died): look before creating again when
    the platform allows it.
    """

    key: str
    external_id: str
    title: str
    lines: tuple[str, ...]
    at: datetime
    maybe_sent: bool = False


@dataclass(frozen=True)
class RateBudget:
    """A platform's rate limit, as the core's throttle enforces it.

    ``kind="window"``: at most ``limit`` cost units in any rolling ``per_seconds``
    (HubSpot: 190 requests / 10 s; Zendesk: 400 requests / 60 s). ``kind="bucket"``:
    a leaky bucket holding ``limit`` units that refills ``refill_per_second``
    (Shopify GraphQL cost points). ``cost`` is the default cost of one request.
    """

    kind: str  # "window" | "bucket"
    limit: float
    per_seconds: float = 1.0
    refill_per_second: float = 0.0
    cost: float = 1.0
    describe: str = ""


class Throttle:
    """What a connector calls around its HTTP requests (implemented by the core).

    ``with slot(cost): resp = session.call(...)`` waits until the budget allows a
    request of that cost and holds it while the request is on the wire (a rolling
    window counts the request until its answer is back, so latency can never push the
    platform's own count over the limit); ``wait(cost)`` only waits, for callers that
    cannot wrap the request; ``observe(...)`` reports what the platform said about the
    budget (Shopify's ``throttleStatus``) so the client follows the server rather than
    its own guess.
    """

    @contextmanager
    def slot(self, cost: float | None = None) -> Iterator[None]:
        """Wait for the budget, then hold it while the wrapped request is in flight."""
        self.wait(cost)
        yield

    def wait(self, cost: float | None = None) -> None:
        """Block until a request of ``cost`` (default: the budget's cost) may be sent."""

    def observe(self, *, available: float | None = None, capacity: float | None = None,
                refill_per_second: float | None = None) -> None:
        """Align the budget with the platform's own figures."""

    def sleep(self, seconds: float) -> None:
        """Sleep (injectable: tests never really sleep), e.g. between job-status polls."""

    def pause(self, seconds: float) -> None:
        """Hold every request through this throttle for ``seconds`` (a 429's ``Retry-After``)."""
        self.sleep(seconds)


@dataclass(frozen=True)
class PlannedRequest:
    """One HTTP request exactly as it would be sent (``--dry-run``)."""

    method: str
    path: str
    body: Any = None
    params: Mapping[str, Any] | None = None

    def render(self) -> str:
        query = ""
        if self.params:
            query = "?" + "&".join(f"{k}={v}" for k, v in self.params.items())
        line = f"{self.method} {self.path}{query}"
        if self.body is not None:
            line += "\n" + json.dumps(self.body, indent=2, ensure_ascii=False, default=str)
        return line


@dataclass(frozen=True)
class SetupItem:
    """One thing setup looked after: ``created``, ``exists``, ``conflict``,
    ``would_create`` (dry run) or ``failed``."""

    name: str
    status: str
    detail: str = ""
    request: PlannedRequest | None = None


@dataclass(frozen=True)
class SetupReport:
    source: str
    items: tuple[SetupItem, ...] = ()

    @property
    def changed(self) -> bool:
        return any(i.status == "created" for i in self.items)

    @property
    def conflicts(self) -> tuple[SetupItem, ...]:
        return tuple(i for i in self.items if i.status in ("conflict", "failed"))


class Duration(fields.Field):
    """A marshmallow field for durations, for the core config and connector settings alike."""

    # ``15m``, ``1h30m``, ``90s``, ``2d``, ``1w`` or a number of seconds

    default_error_messages = {"invalid": "not a duration (use e.g. 30s, 15m, 1h, 1d)"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> timedelta:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and value.strip().isdigit():
            seconds = float(value.strip())
        elif isinstance(value, str):
            text = value.strip().lower().replace(" ", "")
            parts = _DURATION_RE.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise self.make_error("invalid")
            seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
        else:
            raise self.make_error("invalid")
        if seconds != seconds:  # NaN (YAML .nan)
            raise self.make_error("invalid")
        if seconds <= 0:
            raise ValidationError("must be longer than zero")
        try:
            return timedelta(seconds=seconds)
        except OverflowError:  # YAML .inf, or more weeks than a timedelta holds
            raise ValidationError("too long (timedelta overflow)") from None


class WholeNumber(fields.Integer):
    """A marshmallow field for a whole-number setting (days, attempts, a batch size), for
    the core config and connector settings alike.

    marshmallow's ``Integer`` turns ``90.5`` into 90 without a word (``int(90.5)``), so a
    fractional value passed ``check-config`` and was silently cut. Here it is an error. A
    float with no fraction (``90.0``) loses nothing and is taken; so is ``"90"``, what a
    ``${VAR}`` gives (``strict=True`` would refuse it: interpolation yields strings).
    """

    default_error_messages = {"invalid": "not a whole number"}

    def _validated(self, value: Any) -> int:
        if isinstance(value, str):  # from a ${VAR}
            text = value.strip()
            try:
                return super()._validated(int(text))
            except ValueError:
                pass
            try:
                value = float(text)  # "90.5" is refused below, "90.0" taken as 90
            except ValueError:
                raise self.make_error("invalid") from None
        if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
            raise ValidationError(f"must be a whole number, not {value!r}")
        return super()._validated(value)


#: hosts that may be called over plain http: this machine (tests, local mock servers)
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class ServiceUrl(fields.String):
    """A marshmallow field for a configured URL (an API base, a public webhook address).

    https only, except for this machine (``localhost``, ``127.0.0.1``, ``::1``: tests and
    local mock servers); no user name or password in it (credentials have their own
    settings, and a URL is printed and logged where a secret must never be); no
    ``#fragment`` (never sent). Messages never repeat the value, which might hold a secret.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> str:
        from urllib.parse import urlsplit

        text = super()._deserialize(value, attr, data, **kw).strip()
        try:
            parts = urlsplit(text)
            host = (parts.hostname or "").lower()
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            raise ValidationError("not a valid URL (use https://host/path)") from None
        if parts.scheme not in ("http", "https") or not host:
            raise ValidationError("not a valid URL (use https://host/path)")
        if parts.username is not None or parts.password is not None:
            raise ValidationError("must not contain a user name or password (credentials go in "
                                  "their own settings, never in a URL)")
        if parts.scheme == "http" and host not in LOCAL_HOSTS:
            raise ValidationError("use https:// (plain http is only allowed for localhost)")
        if parts.fragment or text.endswith("#"):
            raise ValidationError("must not contain a #fragment")
        if any(c.isspace() for c in text):
            raise ValidationError("must not contain spaces")
        return text


class SettingsSchema(Schema):
    """Base for a connector's config-section schema: unknown keys are errors."""

    class Meta:
        unknown = RAISE


# --- the contract ------------------------------------------------------------------


class Connector:
    """Base class of every platform connector. Subclasses set the class attributes and
    override the methods of the capabilities they support."""

    #: the one name (see module docstring); lower-case, ``[a-z][a-z0-9_]*``
    name: ClassVar[str] = ""
    #: human name for messages and the admin pages
    title: ClassVar[str] = ""
    #: marshmallow schema of ``connectors.<name>``; ``load`` returns the settings object
    settings_schema: ClassVar[type[Schema]] = SettingsSchema
    #: names of settings that are secrets (never logged, never shown)
    secret_settings: ClassVar[tuple[str, ...]] = ()
    #: whether scores are written back to this platform's records
    writes_back: ClassVar[bool] = False
    #: how far a signed timestamp may be from now (set from ``webhooks.signature_tolerance``)
    signature_tolerance: timedelta = timedelta(minutes=5)
    #: whether :meth:`verify` (or anything reading ``Delivery.url``) uses the URL the request
    #: arrived at; when False the inbox passes ``""`` and the URL is never built (it costs
    #: the web server a few tens of microseconds per webhook)
    reads_request_url: ClassVar[bool] = True

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    @classmethod
    def demo_settings(cls) -> dict[str, Any]:
        """A settings section that makes the connector work offline for ``cx-connector demo``."""
        return {}

    def secrets(self) -> list[str]:
        """Configured secret values, so logging can scrub them anywhere they appear."""
        values = []
        for key in self.secret_settings:
            value = getattr(self.settings, key, None)
            if value is None and isinstance(self.settings, Mapping):
                value = self.settings.get(key)
            if value:
                values.append(str(value))
        return values

    # -- inbound ------------------------------------------------------------------

    def verify(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
               now: datetime) -> None:
        """Check the request's signature over the raw ``body``; raise SignatureError.

        Must use a constant-time comparison and must not parse the body first.
        """
        raise NotImplementedError

    def sign(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
             now: datetime) -> dict[str, str]:
        """Headers that make ``verify`` accept ``body`` (demo, load tests, fuzzing)."""
        raise NotImplementedError

    def delivery_key(self, delivery: Delivery) -> str:
        """A key identical for redeliveries of the same request (dedupe in the inbox).

        Default: SHA-256 of the body. Override with the platform's delivery id when it
        has one, or with a key that ignores retry counters inside the body.
        """
        return "sha256:" + hashlib.sha256(delivery.body).hexdigest()

    def topic(self, delivery: Delivery) -> str:
        """The event type, for the inbox listing and metrics (never raises)."""
        return ""

    def normalise(self, delivery: Delivery, *, now: datetime) -> Normalised:
        """Turn a verified delivery into touchpoints and actions. Pure: no I/O.

        Raise PayloadError for a malformed payload; return ``Normalised.ignore(...)``
        for an event type the connector does not use.
        """
        raise NotImplementedError

    def sample_deliveries(self) -> list[SampleDelivery]:
        """Bundled example deliveries for ``cx-connector demo``."""
        return []

    def writable_record(self, source_id: str) -> bool:
        """Whether scores can be written to this identity (a contact, not a deal)."""
        return True

    def record_url(self, source_id: str) -> str | None:
        """Link to the record in the platform's UI, for the admin pages."""
        return None

    # -- enrichment ---------------------------------------------------------------------
    #: how many ids one :meth:`lookup` call may take (the platform's batch maximum);
    #: 0 means the connector cannot look records up (the enrichment job skips it)
    lookup_batch_size: ClassVar[int] = 0

    def lookup(self, source_ids: list[str], *, now: datetime) -> Lookup:
        """Fetch contact details for records seen without them (HubSpot ids, Zendesk
        requester ids). Called by the enrichment job, never inside a webhook request.
        Raises :class:`~cx_connector.errors.PlatformAPIError` subclasses."""
        raise NotImplementedError

    # -- write-back ---------------------------------------------------------------------
    # The core (:mod:`cx_connector.sync`) claims pending outbox writes, packs them
    # into requests of at most :meth:`write_batch_size` units (a unit is what the
    # platform's batch maximum counts: a record for HubSpot/Zendesk, a metafield for
    # Shopify, see :meth:`write_units`), spends the :meth:`rate_budget` through the
    # :class:`Throttle` it passes in, and calls :meth:`write_batch`. It retries, splits,
    # parks and audits; the connector only speaks its platform's API.
    #: the platform's maximum units per write request (0: the connector does not write)
    write_batch_max: ClassVar[int] = 0
    #: may one record's fields be spread over two requests? (Shopify metafields: yes,
    #: which is what lets 25-metafield calls be filled completely)
    write_splits_records: ClassVar[bool] = False
    #: how many write requests may be in flight at once (Zendesk: jobs run server-side)
    write_concurrency: ClassVar[int] = 1

    def write_batch_size(self) -> int:
        """Units per request: the ``batch_size`` setting, never above :attr:`write_batch_max`."""
        size = getattr(self.settings, "batch_size", None) or self.write_batch_max
        return max(1, min(int(size), self.write_batch_max))

    def write_units(self, fields: Mapping[str, Any]) -> int:
        """How many units of a request one record's changed ``fields`` take."""
        return 1

    def rate_budget(self) -> RateBudget:
        """The platform's rate limit for this account's plan (from the settings)."""
        raise NotImplementedError

    def write_batch(self, writes: list[RecordWrite], throttle: Throttle) -> dict[str, WriteResult]:
        """Write one batch; return a :class:`WriteResult` per ``external_id``.

        Make every HTTP request inside ``with throttle.slot(cost):``. A failure of the whole
        request raises the :class:`~cx_connector.errors.PlatformAPIError` subclass
        :func:`cx_connector.http.raise_for_status` maps it to (429 rate limited, 5xx or
        timeout unavailable, 400/422 validation: the core splits the batch to isolate
        the bad record). A record missing from the returned mapping is retried.
        """
        raise NotImplementedError

    def describe_write(self, writes: list[RecordWrite]) -> list[PlannedRequest]:
        """The exact request(s) :meth:`write_batch` would make (dry run), without I/O."""
        raise NotImplementedError

    def setup(self, *, dry_run: bool, throttle: Throttle) -> SetupReport:
        """Create the score fields on the platform, idempotently.

        Reads what exists; creates what is missing; reports a field that exists with
        another type as a conflict and leaves it alone. With ``dry_run`` only the
        reads are made and each create is returned as its exact request.
        """
        raise NotImplementedError

    # -- alerts (issue 7) ------------------------------------------------------------------
    # An alert rule (``alerts.rules.<name>.platforms``) can put its alert on the customer's
    # record on a platform: a task on a HubSpot contact, an internal note on a Zendesk
    # user. The core (:mod:`cx_connector.alerts.deliver`) decides when, picks the record
    # (the customer's oldest identity of this source that is not gone and passes
    # :meth:`writable_record`), spends :meth:`rate_budget` through the :class:`Throttle`
    # it passes in, retries with backoff, parks what keeps failing and audits every
    # attempt; the connector only speaks its API. Called by the clock process, never
    # inside a webhook request.
    #: what :meth:`post_alert` creates, for messages (``"task"``, ``"user note"``);
    #: empty: the connector cannot take alerts (rules naming it are a config error)
    alert_target: ClassVar[str] = ""

    def post_alert(self, alert: RecordAlert, throttle: Throttle) -> str:
        """Put ``alert`` on record ``alert.external_id``; return a short reference for
        the audit log (the task id, ``"note appended"``, ``"already there"``).

        Call ``throttle.wait()`` before every HTTP request. Failures raise the
        :class:`~cx_connector.errors.PlatformAPIError` subclass
        :func:`cx_connector.http.raise_for_status` maps them to: a 429 or an outage is
        retried with backoff, a refusal (400/422) or a deleted record (404) is given up
        with its reason. Never overwrite what people wrote on the record.
        """
        raise NotImplementedError

    # -- backfill (issue: backfill) --------------------------------------------------
    # ``cx-connector backfill SOURCE`` imports a platform's history through its API. The
    # core (:mod:`cx_connector.backfill`) works through :attr:`backfill_resources` in
    # order; for each it calls :meth:`backfill_page` with the cursor saved after the
    # previous page (``None`` to start) until a page says ``done``. Every page is stored
    # through the webhook path (:func:`cx_connector.inbox.store`: same touchpoint ids,
    # same identity resolution) in one transaction with its new cursor, so a crash or
    # Ctrl-C resumes at the next page and nothing is stored twice. The core spends the
    # :meth:`backfill_budgets` through the throttles it passes in, waits out 429s
    # (``Retry-After``) and retries outages; the connector only speaks its API.
    #
    # The connector must map API records with its own normalise code (e.g. by building
    # the webhook-shaped payload from the API record), so that a fact seen by a webhook
    # and by the backfill is one touchpoint with one ``touchpoint_id``.
    #: what :meth:`backfill_page` can import, in the order the core imports it
    backfill_resources: ClassVar[tuple[BackfillResource, ...]] = ()

    def backfill_budgets(self) -> dict[str, RateBudget]:
        """Named rate budgets the backfill spends (a throttle per name is passed to
        :meth:`backfill_page`). Default: ``{"api": self.rate_budget()}``. A platform
        with stricter limits on some endpoints adds a budget for them (Zendesk's
        incremental exports, HubSpot's search API)."""
        return {"api": self.rate_budget()}

    def backfill_page(self, resource: str, cursor: str | None, *, since: datetime | None,
                      throttles: Mapping[str, Throttle], now: datetime) -> BackfillPage:
        """Fetch and normalise one page of ``resource``, starting at ``cursor``.

        ``since``: only records changed on the platform at or after this time (``None``:
        everything); it is the same on every page of a run. Call
        ``throttles[name].wait(cost)`` before every HTTP request. HTTP failures raise the
        :class:`~cx_connector.errors.PlatformAPIError` subclass
        :func:`cx_connector.http.raise_for_status` maps them to: the core retries the
        same cursor after a 429 or an outage. A record that cannot be normalised is
        left out and named in :attr:`BackfillPage.skipped`, never a reason to stop.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class BackfillResource:
    """One kind of record a connector can backfill (``orders``, ``tickets``).

    ``name`` keys the saved cursor (``backfill_state.resource``): keep it stable.
    """

    name: str
    description: str = ""


@dataclass(frozen=True)
class BackfillPage:
    """One page of a backfill, as :meth:`Connector.backfill_page` returns it.

    ``result``: the page's touchpoints and actions (:func:`combine` joins per-record
    results). ``cursor``: where the next page starts, opaque to the core (saved as
    text). ``done``: the resource has no further page. ``records``: platform records
    read. ``remaining``: records still to come after this page when the platform says
    (for the progress bar's ETA). ``skipped``: records left out, each with its reason.
    """

    result: Normalised = field(default_factory=Normalised)
    cursor: str | None = None
    done: bool = False
    records: int = 0
    remaining: int | None = None
    skipped: tuple[str, ...] = ()


def combine(results: Iterable[Normalised]) -> Normalised:
    """The touchpoints and actions of several normalised records as one result. The
    reasons of ignored ones are dropped (ignoring is what they are for), and an action
    repeated by several records (every order links the same customer) is kept once."""
    tps: list[Touchpoint] = []
    actions: list[Action] = []
    for result in results:
        tps += result.touchpoints
        actions += result.actions
    return Normalised(touchpoints=tuple(tps), actions=tuple(dict.fromkeys(actions)))



def iter_json_array(payload: Any, what: str) -> Iterator[Any]:
    if isinstance(payload, list):
        yield from payload
    elif isinstance(payload, dict):
        yield payload
    else:
        raise PayloadError(f"expected a JSON object or array of {what}")


def dedupe_keys(parts: Iterable[str]) -> str:
    return "sha256:" + hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()
