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

Everything outbound (enrichment, write-back, backfill) is declared below in its
own section with a default that says the connector does not support it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any, ClassVar

from marshmallow import RAISE, Schema
from requests.structures import CaseInsensitiveDict

from cx_connector.errors import PayloadError
from cx_connector.touchpoint import (  # re-exported: connectors import them from here
    CHANNELS,
    KINDS,
    STAGES,
    CustomerRef,
    Product,
    Rating,
    Touchpoint,
    normalise_email,
    normalise_phone,
)

__all__ = [
    "CHANNELS", "KINDS", "STAGES", "CatalogueProduct", "Connector", "CustomerRef", "Delivery",
    "Export", "Forget", "ForgetAll", "Gone", "Headers", "Link", "Lookup", "Merge", "Normalised", "Product",
    "Rating", "SampleDelivery", "SettingsSchema", "Touchpoint", "normalise_email",
    "normalise_phone", "parse_json",
]

Headers = CaseInsensitiveDict
"""Header mapping with case-insensitive keys (HTTP/2 lower-cases every header)."""


def parse_json(body: bytes) -> Any:
    """Parse JSON exactly: floats become ``Decimal`` (money), big ints stay ints (ids > 2^53)."""
    try:
        return json.loads(body, parse_float=Decimal)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None


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
class Forget:
    """Erase one person's personal data (platform deletion or a privacy request).

    Matched by ``source_id`` within ``source`` and/or by ``email``.
    """

    source: str
    source_id: str | None = None
    email: str | None = None
    reason: str = ""


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


Action = Merge | Link | Forget | ForgetAll | Export | CatalogueProduct | Gone


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

    # -- write-back (issue: write-back) ----------------------------------------------
    # -- backfill (issue: backfill) --------------------------------------------------


def iter_json_array(payload: Any, what: str) -> Iterator[Any]:
    if isinstance(payload, list):
        yield from payload
    elif isinstance(payload, dict):
        yield payload
    else:
        raise PayloadError(f"expected a JSON object or array of {what}")


def dedupe_keys(parts: Iterable[str]) -> str:
    return "sha256:" + hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()
