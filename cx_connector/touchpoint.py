"""The touchpoint: one business fact about one customer, in one schema for every platform.

This module is the single place where the vocabulary (kinds, stages, channels,
rating types) is defined and documented. Connectors build :class:`Touchpoint`
objects directly; anything arriving from outside as JSON (the generic webhook,
``cx-connector import``) goes through :class:`TouchpointSchema` once, at the
boundary.

``touchpoint_id`` names the *fact*, not the delivery: ``order:5001:placed`` is the
same row whether it came from a webhook, a retried webhook or a backfill, which is
what makes ingestion idempotent.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates,
    validates_schema,
)

STAGES: tuple[str, ...] = ("awareness", "consideration", "purchase", "retention", "advocacy")
"""Journey stages, in order: a later stage means the customer got further."""

CHANNELS: tuple[str, ...] = ("web", "email", "chat", "phone", "store", "social", "api", "other")

RATING_TYPES: tuple[str, ...] = ("nps", "csat", "ces")

# kind -> (default stage, meaning). The meaning is what the README and the admin
# pages show; scoring reads the kind, never free text.
KINDS: dict[str, tuple[str, str]] = {
    "contact_created": ("awareness", "a person became known (CRM contact, shop customer, help-desk user)"),
    "profile_updated": ("awareness", "contact details changed (email, phone, name)"),
    "lifecycle_changed": ("consideration", "CRM lifecycle stage changed (attributes.lifecycle_stage)"),
    "form_submitted": ("consideration", "a form or sign-up was submitted"),
    "deal_created": ("consideration", "a sales deal was opened"),
    "deal_stage_changed": ("consideration", "a deal moved to another pipeline stage"),
    "deal_won": ("purchase", "a deal was closed won (value = deal amount when known)"),
    "deal_lost": ("consideration", "a deal was closed lost"),
    "checkout_started": ("consideration", "a checkout/cart was started"),
    "checkout_abandoned": ("consideration", "a checkout was not completed"),
    "order_placed": ("purchase", "an order was placed (value = order total)"),
    "order_paid": ("purchase", "an order was paid"),
    "order_fulfilled": ("purchase", "an order was shipped/fulfilled"),
    "order_cancelled": ("purchase", "an order was cancelled"),
    "refund_issued": ("retention", "money was refunded (value negative)"),
    "ticket_opened": ("retention", "a support ticket was opened"),
    "ticket_commented": ("retention", "a comment was added to a support ticket"),
    "ticket_solved": ("retention", "a support ticket was solved"),
    "ticket_reopened": ("retention", "a solved support ticket was reopened"),
    "chat_message": ("consideration", "a chat/conversation message"),
    "email_engaged": ("consideration", "a marketing email was opened or clicked"),
    "csat_rating": ("retention", "a customer-satisfaction rating (rating.type = csat)"),
    "nps_response": ("advocacy", "a net-promoter-score answer (rating.type = nps, 0-10)"),
    "ces_response": ("retention", "a customer-effort-score answer (rating.type = ces)"),
    "review_posted": ("advocacy", "a product or service review (rating optional)"),
}

# Attribute conventions: keys that connectors put into ``attributes`` so that scoring
# can relate touchpoints of one thing (a ticket's opening and solving, an order's
# placement and cancellation). Connectors set them whenever the platform says.
ATTRIBUTE_KEYS: dict[str, str] = {
    "ticket_id": "ticket touchpoints: the ticket (pairs opened/solved/reopened for resolution time)",
    "order_id": "order_* and refund_issued: the order",
    "checkout_token": "checkout_* and order_placed: the checkout (abandonment, conversion)",
    "deal_id": "deal_* touchpoints: the deal",
    "author": "ticket_commented/chat_message: 'customer' or 'staff' (contacts per issue)",
    "via": "the platform's own channel name, before mapping to CHANNELS",
    "reason": "ratings, cancellations, refunds: the reason/comment category when given",
}

RATING_KINDS = {"csat_rating": "csat", "nps_response": "nps", "ces_response": "ces"}

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

#: amounts (value, price, rating) are stored with 18 digits, 4 after the point
#: (``models.Money``): anything this large or larger cannot be stored exactly
MONEY_LIMIT = Decimal(10) ** 14
_MONEY_PLACES = Decimal("0.0001")


def _fits(value: Decimal | None) -> None:
    """Refuse an amount the money columns cannot hold once rounded to 4 places."""
    if value is None or not value.is_finite():
        return
    if abs(value) >= MONEY_LIMIT or abs(value.quantize(_MONEY_PLACES)) >= MONEY_LIMIT:
        raise ValidationError("out of range: at most 14 digits before the decimal point")


_FITS = _fits


def clean_text(value: Any) -> Any:
    """Strings (recursively, in lists and dicts) without NUL and lone surrogates.

    Both are valid JSON escapes (``\\u0000``, ``\\ud800``) that no database text or JSON
    column accepts (PostgreSQL refuses NUL); anything copied from a payload into a
    touchpoint, an attribute or an error message goes through here, so storing can
    never fail on them.
    """
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "")
        if not value.isascii():
            value = value.encode("utf-8", "ignore").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_text(v) for v in value]
    return value


def normalise_email(value: Any) -> str | None:
    """Lower-cased, trimmed email, or ``None`` when it is not a usable address.

    Platforms send placeholders and obfuscated addresses (e.g. Zendesk's docs show
    ``[email protected]``); such values must not link customers together.
    """
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    if len(email) > 254 or not _EMAIL_RE.match(email):
        return None
    if clean_text(email) != email:  # a NUL or lone surrogate: no database stores it, no one reads it
        return None
    return email


def normalise_phone(value: Any) -> str | None:
    """Digits with an optional leading ``+``, or ``None`` when not a plausible phone number.

    No country is assumed: ``555-625-1199`` and ``(555) 625 1199`` both become
    ``5556251199``, so the same number typed two ways links one customer.
    """
    if not isinstance(value, str | int):
        return None
    text = str(value).strip()
    if not text or re.search(r"[A-Za-z]", text):
        return None
    digits = re.sub(r"\D", "", text)
    if not 7 <= len(digits) <= 15:
        return None
    return ("+" if text.startswith("+") else "") + digits


def ensure_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("occurred_at must carry a time zone")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class CustomerRef:
    """Who the fact is about, as the source system knows them.

    Email and phone are normalised on construction (an unusable value becomes
    ``None``), so no connector can link customers on a raw, differently typed value.
    """

    source_id: str
    email: str | None = None
    phone: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source_id, str) or not clean_text(self.source_id):
            raise ValueError("customer.source_id must be a non-empty string")
        object.__setattr__(self, "source_id", clean_text(self.source_id))
        object.__setattr__(self, "email", normalise_email(self.email))
        object.__setattr__(self, "phone", normalise_phone(self.phone))
        name = clean_text(self.name).strip() if isinstance(self.name, str) else None
        object.__setattr__(self, "name", name[:255] if name else None)


@dataclass(frozen=True)
class Rating:
    type: str
    score: Decimal
    scale_max: Decimal


@dataclass(frozen=True)
class Product:
    id: str | None = None
    sku: str | None = None
    title: str | None = None
    category: str | None = None
    quantity: int = 1
    price: Decimal | None = None


@dataclass(frozen=True)
class Touchpoint:
    source: str
    touchpoint_id: str
    occurred_at: datetime
    customer: CustomerRef
    kind: str
    channel: str = "other"
    stage: str = ""
    value: Decimal | None = None
    currency: str | None = None
    rating: Rating | None = None
    products: tuple[Product, ...] = ()
    attributes: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown touchpoint kind {self.kind!r}")
        if not self.stage:
            object.__setattr__(self, "stage", KINDS[self.kind][0])
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}")
        if self.channel not in CHANNELS:
            raise ValueError(f"unknown channel {self.channel!r}")
        object.__setattr__(self, "occurred_at", ensure_utc(self.occurred_at))
        object.__setattr__(self, "touchpoint_id", clean_text(self.touchpoint_id))
        if not self.touchpoint_id:
            raise ValueError("touchpoint_id must be a non-empty string")
        object.__setattr__(self, "products", tuple(_clean_product(p) for p in self.products))
        object.__setattr__(self, "attributes", clean_text(dict(self.attributes or {})))

    def to_json(self) -> dict:
        """A JSON-ready dict in the wire schema (Decimals as strings, times ISO-8601)."""
        return TouchpointSchema().dump(self)


def _clean_product(p: Product) -> Product:
    """``p`` with its text cleaned (:func:`clean_text`); ``p`` itself when already clean."""
    values = p.__dict__
    cleaned = {k: clean_text(v) for k, v in values.items()}
    return p if cleaned == values else Product(**cleaned)


# --- the wire schema -----------------------------------------------------------


class _Base(Schema):
    class Meta:
        unknown = RAISE


class CustomerSchema(_Base):
    source_id = fields.String(required=True, validate=validate.Length(min=1, max=255))
    email = fields.String(load_default=None, allow_none=True)
    phone = fields.String(load_default=None, allow_none=True)
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))

    @validates_schema
    def _check(self, data: dict, **_: Any) -> None:
        if data.get("email") is not None and normalise_email(data["email"]) is None:
            raise ValidationError("not a valid email address", "email")
        if data.get("phone") is not None and normalise_phone(data["phone"]) is None:
            raise ValidationError("not a valid phone number", "phone")

    @post_load
    def _make(self, data: dict, **_: Any) -> CustomerRef:
        # CustomerRef normalises email and phone itself
        try:
            return CustomerRef(source_id=data["source_id"], email=data.get("email"),
                               phone=data.get("phone"), name=data.get("name"))
        except ValueError:  # only the source_id can be refused here: NUL characters only
            raise ValidationError("must not be empty once NUL characters and lone surrogates "
                                  "are removed", "source_id") from None


class RatingSchema(_Base):
    type = fields.String(required=True, validate=validate.OneOf(RATING_TYPES))
    score = fields.Decimal(required=True, as_string=True, validate=_FITS)
    scale_max = fields.Decimal(required=True, as_string=True, validate=[validate.Range(min=1), _FITS])

    @validates_schema
    def _check(self, data: dict, **_: Any) -> None:
        if not 0 <= data["score"] <= data["scale_max"]:
            raise ValidationError("must be between 0 and scale_max", "score")

    @post_load
    def _make(self, data: dict, **_: Any) -> Rating:
        return Rating(**data)


class ProductSchema(_Base):
    id = fields.String(load_default=None, allow_none=True)
    sku = fields.String(load_default=None, allow_none=True)
    title = fields.String(load_default=None, allow_none=True)
    category = fields.String(load_default=None, allow_none=True)
    quantity = fields.Integer(load_default=1, validate=validate.Range(min=0))
    price = fields.Decimal(load_default=None, allow_none=True, as_string=True, validate=_FITS)

    @post_load
    def _make(self, data: dict, **_: Any) -> Product:
        return Product(**data)


class TouchpointSchema(_Base):
    """The external shape of a touchpoint (generic webhook body, import file, API output)."""

    source = fields.String(required=True, validate=validate.Regexp(r"^[a-z][a-z0-9_]{0,31}$"))
    touchpoint_id = fields.String(required=True, validate=validate.Length(min=1, max=255))
    occurred_at = fields.AwareDateTime(required=True)
    customer = fields.Nested(CustomerSchema, required=True)
    kind = fields.String(required=True, validate=validate.OneOf(sorted(KINDS)))
    stage = fields.String(load_default="", validate=validate.OneOf(("", *STAGES)))
    channel = fields.String(load_default="other", validate=validate.OneOf(CHANNELS))
    value = fields.Decimal(load_default=None, allow_none=True, as_string=True, validate=_FITS)
    currency = fields.String(load_default=None, allow_none=True, validate=validate.Regexp(r"^[A-Z]{3}$"))
    rating = fields.Nested(RatingSchema, load_default=None, allow_none=True)
    products = fields.List(fields.Nested(ProductSchema), load_default=list)
    attributes = fields.Dict(keys=fields.String(), load_default=dict)

    @validates("occurred_at")
    def _in_range(self, value: datetime, **_: Any) -> None:
        try:
            ensure_utc(value)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before the year 1 in UTC
            raise ValidationError("out of range once converted to UTC") from None

    @validates_schema
    def _check(self, data: dict, **_: Any) -> None:
        kind = data.get("kind")
        rating = data.get("rating")
        wanted = RATING_KINDS.get(kind or "")
        if wanted and rating is None:
            raise ValidationError(f"a {kind} needs a rating of type {wanted}", "rating")
        if wanted and rating is not None and rating.type != wanted:
            raise ValidationError(f"a {kind} needs a rating of type {wanted}", "rating")
        if data.get("value") is not None and data.get("value").is_nan():
            raise ValidationError("must be a number", "value")
        if kind == "refund_issued" and data.get("value") is not None and data["value"] > 0:
            raise ValidationError("a refund is negative: send the refunded amount as -value", "value")

    @post_load
    def _make(self, data: dict, **_: Any) -> Touchpoint:
        data["products"] = tuple(data.get("products") or ())
        try:
            return Touchpoint(**data)
        except ValueError as exc:  # what the schema lets through but the dataclass refuses
            raise ValidationError(str(exc)) from None


def touchpoint_to_dict(tp: Touchpoint) -> dict:
    """Plain dict (Python types) of a touchpoint; used by storage."""
    return asdict(tp)
