"""Shopify webhook payloads -> touchpoints and actions. Pure: no I/O, no clock.

Every payload is the full REST resource (https://shopify.dev/docs/api/webhooks/2026-07).
What each topic becomes (the README section lists the same):

==========================  ==================  ===========================================
topic                       kind                touchpoint id / action
==========================  ==================  ===========================================
orders/create               order_placed        ``order:<id>:placed`` (value = total_price)
orders/paid                 order_paid          ``order:<id>:paid``
orders/fulfilled            order_fulfilled     ``order:<id>:fulfilled``
orders/cancelled            order_cancelled     ``order:<id>:cancelled``
refunds/create              refund_issued       ``refund:<id>:issued`` (value negative)
checkouts/create, /update   checkout_started    ``checkout:<token>:started``
customers/create            contact_created     ``customer:<id>:created``
customers/update            (none)              :class:`ContactDetails` as of ``updated_at``
customers/delete            (none)              :class:`Gone` for the customer record
products/create, /update    (none)              :class:`CatalogueProduct` (product_type = category)
customers/data_request      (none)              :class:`Export`
customers/redact            (none)              :class:`Forget` (customer and its orders)
shop/redact                 (none)              :class:`ForgetAll`
==========================  ==================  ===========================================

Decisions that keep the result independent of delivery order and of retries:

* A touchpoint id names the business fact and its time comes from the payload,
  never from the delivery, so a retry, a redelivery under a new webhook id or a
  late arrival produces the identical row.
* The customer is ``customer.id`` with ``customer.email`` / ``phone`` / name. The
  order's own ``email`` / ``contact_email`` is what was typed at checkout and may
  be someone else's (the reference sample has ``jon@`` on the order and ``john@``
  on the customer), so it never links customers; when it differs it is kept as
  ``attributes.contact_email`` (erased with the person on a privacy request).
  An order without a customer (guest, POS) belongs to the record ``order:<id>``
  with the order's email, which links it by email.
* Orders also link the record ``order:<id>`` to their customer (a :class:`Link`
  carrying only the id, so no profile field is dated by the arrival time):
  ``refunds/create`` names only ``order_id``, and its touchpoint is filed under
  ``order:<order_id>``. Whichever arrives first, the two end up one customer.
* Ids are strings (Shopify ids exceed 2^53); money is ``Decimal`` (the JSON is
  parsed with ``parse_float=Decimal``; Shopify sends most amounts as strings).
* Line items carry no ``product_type``: the category comes from the catalogue
  (``products/*``), which scoring reads; ``product_type`` on a line item, if a
  future version sends it, is used directly.
* ``test: true`` orders are kept, marked ``attributes.test``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cx_connector.connector import (
    Action,
    CatalogueProduct,
    ContactDetails,
    CustomerRef,
    Export,
    Forget,
    ForgetAll,
    Gone,
    Link,
    Normalised,
    Product,
    Touchpoint,
    normalise_email,
)
from cx_connector.errors import PayloadError

#: Shopify ``source_name`` -> touchpoint channel; numeric names are app ids (orders via API)
SOURCE_CHANNELS = {"web": "web", "pos": "store", "shopify_draft_order": "other"}

_DIGITS = re.compile(r"^\d{1,20}$")
_TOKEN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MAX_MONEY = Decimal(10) ** 14  # the money columns hold 18 digits, 4 after the point


@dataclass(frozen=True)
class Context:
    source: str
    shop: str


# --- field readers: each raises PayloadError naming the field ------------------------------


def _obj(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise PayloadError(f"{what}: expected a JSON object")
    return value


def _id(value: Any, what: str, *, required: bool = True) -> str | None:
    """A Shopify numeric id as a string (never through a float)."""
    if value is None and not required:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10 ** 20:
        return str(value)
    if isinstance(value, str) and _DIGITS.match(value.strip()):
        return value.strip()
    raise PayloadError(f"{what}: expected a Shopify id (a whole number)")


def _token(value: Any, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if isinstance(value, str) and _TOKEN.match(value.strip()):
        return value.strip()
    raise PayloadError(f"{what}: expected a token (letters, digits, '-', '_', '.', ':')")


def _time(value: Any, what: str) -> datetime | None:
    """An aware UTC datetime, ``None`` for null/absent; PayloadError when unusable."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            when = None
        if when is not None and when.tzinfo is not None and 1900 <= when.year <= 9998:
            return when.astimezone(UTC)
    raise PayloadError(f"{what}: expected an ISO-8601 time with a time zone")


def _first_time(payload: dict, fields: tuple[str, ...], what: str) -> datetime:
    for name in fields:
        when = _time(payload.get(name), f"{what}.{name}")
        if when is not None:
            return when
    raise PayloadError(f"{what}: needs {' or '.join(fields)}")


def _money(value: Any, what: str, *, required: bool = False) -> Decimal | None:
    if value is None and not required:
        return None
    if isinstance(value, Decimal | int | str) and not isinstance(value, bool):
        try:
            amount = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            amount = None
        if amount is not None and amount.is_finite() and abs(amount) < _MAX_MONEY:
            return amount
    raise PayloadError(f"{what}: expected an amount of money (e.g. \"19.99\")")


def _currency(value: Any, what: str, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if isinstance(value, str) and _CURRENCY.match(value.strip()):
        return value.strip()
    raise PayloadError(f"{what}: expected an ISO 4217 currency code (e.g. USD)")


def _clean(value: Any) -> str | None:
    """A payload string the databases can store: without NUL characters (PostgreSQL text
    and JSONB refuse them) and lone surrogates (not encodable as UTF-8)."""
    if not isinstance(value, str):
        return None
    return value.encode("utf-8", "ignore").decode("utf-8").replace("\x00", "")


def _text(value: Any, limit: int = 255) -> str | None:
    text = (_clean(value) or "").strip()
    return text[:limit] if text else None


def _quantity(value: Any, what: str) -> int:
    if value is None:
        return 1
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10 ** 9:
        return value
    raise PayloadError(f"{what}: expected a whole number of items")


def _list(value: Any, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(f"{what}: expected a JSON array")
    return value


def channel_for(source_name: Any) -> str:
    """Touchpoint channel for Shopify's ``source_name`` (the raw value goes to ``via``)."""
    if not isinstance(source_name, str):
        return "other"
    if source_name.isdigit():
        return "api"
    return SOURCE_CHANNELS.get(source_name, "other")


# --- parties -------------------------------------------------------------------------------


def customer_ref(customer: dict, what: str = "customer") -> CustomerRef:
    """The Shopify customer record: id, email, phone and name (unusable values dropped)."""
    cid = _id(customer.get("id"), f"{what}.id")
    assert cid is not None
    name = " ".join(p for p in (_text(customer.get("first_name")), _text(customer.get("last_name"))) if p)
    phone = customer.get("phone")
    return CustomerRef(source_id=cid, email=_clean(customer.get("email")),
                       phone=phone if isinstance(phone, str | int) and not isinstance(phone, bool) else None,
                       name=name or None)


def _has_customer(payload: dict) -> bool:
    customer = payload.get("customer")
    return isinstance(customer, dict) and customer.get("id") is not None


def _contact_email(payload: dict, *fields: str) -> str | None:
    for name in fields:
        email = normalise_email(_clean(payload.get(name)))
        if email:
            return email
    return None


def _party(ctx: Context, payload: dict, record: str, what: str) -> tuple[CustomerRef, list[Action], dict]:
    """Who an order/checkout belongs to, the actions linking ``record`` to them, extra attributes."""
    typed = _contact_email(payload, "email", "contact_email")
    attrs: dict[str, Any] = {}
    if _has_customer(payload):
        ref = customer_ref(payload["customer"], f"{what}.customer")
        if typed and typed != ref.email:
            attrs["contact_email"] = typed
        return ref, [Link(ctx.source, record, CustomerRef(source_id=ref.source_id))], attrs
    phone = payload.get("phone")
    ref = CustomerRef(source_id=record, email=typed,
                      phone=phone if isinstance(phone, str) else None)
    return ref, [], attrs


def _products(items: Any, what: str) -> tuple[Product, ...]:
    out = []
    for i, item in enumerate(_list(items, what)):
        item = _obj(item, f"{what}[{i}]")
        out.append(Product(
            id=_id(item.get("product_id"), f"{what}[{i}].product_id", required=False),
            sku=_text(item.get("sku")),
            title=_text(item.get("title")) or _text(item.get("name")),
            category=_text(item.get("product_type")),
            quantity=_quantity(item.get("quantity"), f"{what}[{i}].quantity"),
            price=_money(item.get("price"), f"{what}[{i}].price"),
        ))
    return tuple(out)


# --- orders --------------------------------------------------------------------------------


def _order(ctx: Context, order: dict, kind: str, suffix: str,
           occurred: Callable[[dict], datetime], *, money: bool = False,
           extra: dict | None = None) -> Normalised:
    oid = _id(order.get("id"), "order.id")
    occurred_at = occurred(order)
    ref, actions, attrs = _party(ctx, order, f"order:{oid}", "order")
    attrs = {"order_id": oid, **attrs}
    if _text(order.get("source_name"), 64):
        attrs["via"] = _text(order.get("source_name"), 64)
    if order.get("checkout_token") is not None:
        attrs["checkout_token"] = _token(order["checkout_token"], "order.checkout_token")
    if order.get("test") is True:
        attrs["test"] = True
    attrs.update(extra or {})
    tp = Touchpoint(
        source=ctx.source, touchpoint_id=f"order:{oid}:{suffix}", occurred_at=occurred_at,
        customer=ref, kind=kind, channel=channel_for(order.get("source_name")),
        value=_money(order.get("total_price"), "order.total_price", required=True) if money else None,
        currency=_currency(order.get("currency"), "order.currency", required=True) if money else None,
        products=_products(order.get("line_items"), "order.line_items") if money else (),
        attributes=attrs,
    )
    return Normalised(touchpoints=(tp,), actions=tuple(actions))


def order_placed(ctx: Context, order: dict) -> Normalised:
    """``orders/create``: the purchase, at ``processed_at`` (the date Shopify's own reports
    use; it differs from ``created_at`` for imported orders)."""
    extra = {}
    if _text(order.get("financial_status"), 32):
        extra["financial_status"] = _text(order.get("financial_status"), 32)
    return _order(ctx, order, "order_placed", "placed",
                  lambda o: _first_time(o, ("processed_at", "created_at"), "order"),
                  money=True, extra=extra)


def order_paid(ctx: Context, order: dict) -> Normalised:
    """``orders/paid``: the REST order has no paid-at field; its ``updated_at`` is the
    payment's update (identical on every retry of the delivery)."""
    return _order(ctx, order, "order_paid", "paid",
                  lambda o: _first_time(o, ("updated_at", "processed_at", "created_at"), "order"))


def order_fulfilled(ctx: Context, order: dict) -> Normalised:
    """``orders/fulfilled``: at the newest fulfillment's ``created_at``, else ``updated_at``."""
    def when(o: dict) -> datetime:
        times = [_time(_obj(f, f"order.fulfillments[{i}]").get("created_at"),
                       f"order.fulfillments[{i}].created_at")
                 for i, f in enumerate(_list(o.get("fulfillments"), "order.fulfillments"))]
        times = [t for t in times if t is not None]
        return max(times) if times else _first_time(o, ("updated_at", "processed_at", "created_at"),
                                                    "order")

    return _order(ctx, order, "order_fulfilled", "fulfilled", when)


def order_cancelled(ctx: Context, order: dict) -> Normalised:
    """``orders/cancelled``: at ``cancelled_at``; ``cancel_reason`` (customer, fraud,
    inventory, declined, staff, other) goes to ``attributes.reason``."""
    extra = {}
    if _text(order.get("cancel_reason"), 32):
        extra["reason"] = _text(order.get("cancel_reason"), 32)
    return _order(ctx, order, "order_cancelled", "cancelled",
                  lambda o: _first_time(o, ("cancelled_at", "updated_at"), "order"), extra=extra)


def refund_issued(ctx: Context, refund: dict) -> Normalised:
    """``refunds/create``: value = minus the successful ``refund`` transactions.

    The payload names the order, not the customer: the touchpoint belongs to the
    record ``order:<order_id>``, which the order's own deliveries link to the
    customer. Transactions may have ``currency: null`` (reference sample): the
    currency then comes from the refunded line items' shop money.
    """
    rid = _id(refund.get("id"), "refund.id")
    oid = _id(refund.get("order_id"), "refund.order_id")
    when = _first_time(refund, ("processed_at", "created_at"), "refund")
    total = Decimal(0)
    currencies = set()
    for i, tx in enumerate(_list(refund.get("transactions"), "refund.transactions")):
        tx = _obj(tx, f"refund.transactions[{i}]")
        if tx.get("kind") != "refund" or tx.get("status") != "success":
            continue
        total += _money(tx.get("amount"), f"refund.transactions[{i}].amount", required=True)
        if tx.get("currency") is not None:
            currencies.add(_currency(tx.get("currency"), f"refund.transactions[{i}].currency"))
    items = []
    for i, rli in enumerate(_list(refund.get("refund_line_items"), "refund.refund_line_items")):
        rli = _obj(rli, f"refund.refund_line_items[{i}]")
        line = rli.get("line_item")
        line = _obj(line, f"refund.refund_line_items[{i}].line_item") if line is not None else {}
        items.append({**line, "quantity": rli.get("quantity", line.get("quantity"))})
        if not currencies:
            money = rli.get("subtotal_set")
            shop_money = money.get("shop_money") if isinstance(money, dict) else None
            if isinstance(shop_money, dict) and shop_money.get("currency_code") is not None:
                currencies.add(_currency(shop_money.get("currency_code"),
                                         f"refund.refund_line_items[{i}].subtotal_set"))
    if abs(total) >= _MAX_MONEY:
        raise PayloadError(f"refund {rid}: the refunded amount is out of range")
    if len(currencies) > 1:
        raise PayloadError(f"refund {rid}: transactions in several currencies "
                           f"({', '.join(sorted(currencies))})")
    tp = Touchpoint(
        source=ctx.source, touchpoint_id=f"refund:{rid}:issued", occurred_at=when,
        customer=CustomerRef(source_id=f"order:{oid}"), kind="refund_issued", channel="other",
        value=0 - total, currency=currencies.pop() if currencies else None,
        products=_products(items, "refund.refund_line_items"),
        attributes={"order_id": oid, "refund_id": rid},
    )
    return Normalised(touchpoints=(tp,))


def checkout_started(ctx: Context, checkout: dict) -> Normalised:
    """``checkouts/create`` and ``checkouts/update``: one fact per checkout token, dated
    ``created_at``, so either topic arriving first gives the same row (its cart is the
    one first seen). Whether it was abandoned is decided later by the core
    ``checkouts`` job: a ``checkout_started`` older than ``checkouts.abandon_after``
    with no ``order_placed`` carrying the same ``checkout_token``."""
    token = _token(checkout.get("token"), "checkout.token")
    when = _first_time(checkout, ("created_at", "updated_at"), "checkout")
    ref, actions, attrs = _party(ctx, checkout, f"checkout:{token}", "checkout")
    attrs = {"checkout_token": token, **attrs}
    if _text(checkout.get("source_name"), 64):
        attrs["via"] = _text(checkout.get("source_name"), 64)
    tp = Touchpoint(
        source=ctx.source, touchpoint_id=f"checkout:{token}:started", occurred_at=when,
        customer=ref, kind="checkout_started", channel=channel_for(checkout.get("source_name")),
        value=_money(checkout.get("total_price"), "checkout.total_price"),
        currency=_currency(checkout.get("currency") or checkout.get("presentment_currency"),
                           "checkout.currency"),
        products=_products(checkout.get("line_items"), "checkout.line_items"),
        attributes=attrs,
    )
    return Normalised(touchpoints=(tp,), actions=tuple(actions))


# --- customers and products --------------------------------------------------------------


def contact_created(ctx: Context, customer: dict) -> Normalised:
    ref = customer_ref(customer)
    when = _first_time(customer, ("created_at", "updated_at"), "customer")
    return Normalised(touchpoints=(Touchpoint(
        source=ctx.source, touchpoint_id=f"customer:{ref.source_id}:created", occurred_at=when,
        customer=ref, kind="contact_created", attributes={}),))


#: why a ``customers/update`` that brings no new contact details is ignored
UNCHANGED = ("customers/update brought no new contact details (email, phone and name are as "
             "stored): another field changed, e.g. a tag, a note, an address, marketing consent or "
             "a metafield, this service's own cx scores included")


def customer_updated(ctx: Context, customer: dict) -> Normalised:
    """``customers/update`` is the whole customer after any edit, and says neither what
    changed nor who changed it (https://shopify.dev/docs/api/webhooks/2026-07: the payload
    is the REST resource; metafields only appear for namespaces the subscription lists,
    https://shopify.dev/docs/api/admin-graphql/latest/input-objects/WebhookSubscriptionInput).
    An echo of our own metafield writes therefore cannot be told apart from a merchant's
    tag edit; both change nothing scoring uses. So it is no touchpoint: its contact details
    (dated by ``updated_at``, so an older update arriving late never overwrites a newer
    email, phone or name) are applied, nothing is rescored, and when they are what is
    stored already the delivery is ignored."""
    ref = customer_ref(customer)
    when = _first_time(customer, ("updated_at",), "customer")
    return Normalised(actions=(ContactDetails(ctx.source, ref, when, unchanged=UNCHANGED),))


def customer_deleted(ctx: Context, customer: dict) -> Normalised:
    """``customers/delete`` marks the record gone (history kept, never written to) rather
    than erasing the person: Shopify only deletes customers without orders, and deletes
    the losing record when a merchant merges two customers, so the person may well
    still exist. Erasure requests arrive as ``customers/redact``."""
    return Normalised(actions=(Gone(ctx.source, _id(customer.get("id"), "customer.id") or ""),))


def catalogue_product(ctx: Context, product: dict) -> Normalised:
    """``products/create`` / ``products/update``: the catalogue entry whose
    ``product_type`` is the category order line items lack."""
    pid = _id(product.get("id"), "product.id")
    assert pid is not None
    variants = _list(product.get("variants"), "product.variants")
    sku = next((_text(v.get("sku")) for v in variants if isinstance(v, dict) and _text(v.get("sku"))),
               None)
    when = _time(product.get("updated_at"), "product.updated_at") or \
        _time(product.get("created_at"), "product.created_at")
    return Normalised(actions=(CatalogueProduct(
        source=ctx.source, product_id=pid, title=_text(product.get("title")),
        category=_text(product.get("product_type")), sku=sku, updated_at=when),))


# --- mandatory compliance topics ------------------------------------------------------------


def _compliance_shop(ctx: Context, payload: dict, topic: str) -> None:
    domain = payload.get("shop_domain")
    if not isinstance(domain, str) or domain.strip().lower() != ctx.shop.lower():
        raise PayloadError(f"{topic}: shop_domain is not {ctx.shop}; the request is for another shop")


def _compliance_customer(payload: dict, topic: str) -> tuple[str | None, str | None]:
    customer = _obj(payload.get("customer"), f"{topic}: customer")
    cid = _id(customer.get("id"), "customer.id", required=False)
    email = normalise_email(_clean(customer.get("email")))
    if cid is None and email is None:
        raise PayloadError(f"{topic}: customer has neither an id nor a usable email")
    return cid, email


def data_request(ctx: Context, payload: dict) -> Normalised:
    """``customers/data_request``: an export file for the store owner to hand over
    (https://shopify.dev/docs/apps/build/compliance/privacy-law-compliance)."""
    _compliance_shop(ctx, payload, "customers/data_request")
    cid, email = _compliance_customer(payload, "customers/data_request")
    request = payload.get("data_request")
    request_id = _id(request.get("id"), "data_request.id", required=False) \
        if isinstance(request, dict) else None
    return Normalised(actions=(Export(ctx.source, source_id=cid, email=email, request_id=request_id),))


def customer_redact(ctx: Context, payload: dict) -> Normalised:
    """``customers/redact``: erase the customer and the orders Shopify lists (guest
    orders are records of their own, ``order:<id>``)."""
    _compliance_shop(ctx, payload, "customers/redact")
    cid, email = _compliance_customer(payload, "customers/redact")
    reason = "shopify customers/redact"
    actions: list[Action] = [Forget(ctx.source, source_id=cid, email=email, reason=reason)]
    for i, oid in enumerate(_list(payload.get("orders_to_redact"), "orders_to_redact")):
        actions.append(Forget(ctx.source, source_id=f"order:{_id(oid, f'orders_to_redact[{i}]')}",
                              reason=reason))
    return Normalised(actions=tuple(actions))


def shop_redact(ctx: Context, payload: dict) -> Normalised:
    """``shop/redact`` (48 hours after the app is uninstalled): erase everything from Shopify."""
    _compliance_shop(ctx, payload, "shop/redact")
    return Normalised(actions=(ForgetAll(ctx.source, reason="shopify shop/redact"),))


HANDLERS: dict[str, Callable[[Context, dict], Normalised]] = {
    "orders/create": order_placed,
    "orders/paid": order_paid,
    "orders/fulfilled": order_fulfilled,
    "orders/cancelled": order_cancelled,
    "refunds/create": refund_issued,
    "checkouts/create": checkout_started,
    "checkouts/update": checkout_started,
    "customers/create": contact_created,
    "customers/update": customer_updated,
    "customers/delete": customer_deleted,
    "products/create": catalogue_product,
    "products/update": catalogue_product,
    "customers/data_request": data_request,
    "customers/redact": customer_redact,
    "shop/redact": shop_redact,
}


def supported(topic: str) -> bool:
    return topic in HANDLERS


def normalise(topic: str, payload: Any, ctx: Context) -> Normalised:
    """Touchpoints and actions for one delivery of ``topic`` (lower-case, e.g. ``orders/create``)."""
    handler = HANDLERS.get(topic)
    if handler is None:
        return Normalised.ignore(f"Shopify topic {topic or '(none)'!r} is not used by cx-connector")
    return handler(ctx, _obj(payload, f"{topic} body"))
