"""Shopify history through the Admin GraphQL API, mapped by the webhook normaliser.

Webhooks carry REST resources; the backfill reads GraphQL (REST is legacy since
2024-10) and rebuilds, per record, the REST-shaped payload the webhook would have
carried (``legacyResourceId`` as ``id``, ``shopMoney`` amounts, snake_case fields),
then calls the same handlers in :mod:`connectors.shopify.normalise`
(``order_placed``, ``order_paid``, ``order_fulfilled``, ``order_cancelled``,
``refund_issued``, ``contact_created``, ``customer_updated``, ``catalogue_product``).
Touchpoint ids are therefore the webhooks' (``order:<id>:placed``,
``refund:<id>:issued``, ``customer:<id>:created``).

Resources, in order:

``products``
    catalogue entries (``productType`` is the category order line items lack);
``customers``
    ``contact_created``, and the contact details as of the customer's last update;
``orders``
    every order of every status (the GraphQL ``orders`` query returns open, closed and
    cancelled ones): ``order_placed``, ``order_paid`` (dated by the last successful sale
    or capture), ``order_fulfilled``, ``order_cancelled``, and a ``refund_issued`` per
    refund. Orders older than 60 days need the ``read_all_orders`` scope
    (https://shopify.dev/docs/api/usage/access-scopes#orders-permissions).

Paging: cursor pagination (``first``/``after``, ``sortKey: ID``). Shopify stops paging a
query after 25,000 objects (https://shopify.dev/docs/api/usage/limits), so every 20,000
records the next query starts again from ``id:>`` the last id read. ``--since`` filters on
``updated_at``.

Cost: each query's cost is estimated beforehand (the page sizes below keep it under the
single-query maximum of 1,000 points) and waited for on the shop's bucket; every answer's
``throttleStatus`` corrects the bucket (:func:`connectors.shopify.graphql.call`), and a
``THROTTLED`` answer is waited out by the core.
https://shopify.dev/docs/api/admin-graphql/latest/queries/orders
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from connectors.shopify import graphql
from connectors.shopify import normalise as norm
from cx_connector.connector import (
    BackfillPage,
    BackfillResource,
    Normalised,
    Throttle,
    combine,
)
from cx_connector.errors import PayloadError, PlatformAPIError
from cx_connector.http import Session

RESOURCES: tuple[BackfillResource, ...] = (
    BackfillResource("products", "products: catalogue entries with their category (product type)"),
    BackfillResource("customers", "customers: contact_created, their contact details"),
    BackfillResource("orders", "orders of every status with their refunds: order_placed, order_paid, "
                               "order_fulfilled, order_cancelled, refund_issued"),
)

#: a query restarts from ``id:>last`` after this many records (Shopify stops at 25,000)
WINDOW = 20_000

PRODUCTS_PAGE = 50
CUSTOMERS_PAGE = 100
ORDERS_PAGE = 8
ORDER_LINE_ITEMS = 15
MORE_LINE_ITEMS = 100
REFUNDS_PER_QUERY = 4

# requested-cost estimates (connection: 2 + first x the node's objects), under the 1,000 maximum
PRODUCTS_COST = 2 + PRODUCTS_PAGE * (1 + 2 + 5)
CUSTOMERS_COST = 2 + CUSTOMERS_PAGE * 3
ORDERS_COST = 2 + ORDERS_PAGE * (1 + 2 + 3 + (2 + ORDER_LINE_ITEMS * 4) + 5 + 10 + 10)
LINE_ITEMS_COST = 1 + 2 + MORE_LINE_ITEMS * 4
REFUNDS_COST = REFUNDS_PER_QUERY * (1 + 1 + (2 + 5 * 3) + (2 + 25 * 7))

_LINE_ITEM = ("sku title name quantity originalUnitPriceSet { shopMoney { amount } } "
              "product { legacyResourceId }")
_CUSTOMER = ("legacyResourceId firstName lastName createdAt updatedAt "
             "defaultEmailAddress { emailAddress } defaultPhoneNumber { phoneNumber }")
_PAGE_INFO = "pageInfo { hasNextPage endCursor }"

QUERIES: dict[str, tuple[str, str, int, int]] = {
    # resource: (connection, node fields, page size, estimated cost)
    "products": ("products", "legacyResourceId title productType createdAt updatedAt "
                             "variants(first: 5) { nodes { sku } }", PRODUCTS_PAGE, PRODUCTS_COST),
    "customers": ("customers", _CUSTOMER, CUSTOMERS_PAGE, CUSTOMERS_COST),
    "orders": ("orders", "id legacyResourceId email phone createdAt processedAt updatedAt cancelledAt "
                         "cancelReason test sourceName displayFinancialStatus displayFulfillmentStatus "
                         "totalPriceSet { shopMoney { amount currencyCode } } "
                         f"customer {{ {_CUSTOMER} }} "
                         f"lineItems(first: {ORDER_LINE_ITEMS}) {{ nodes {{ {_LINE_ITEM} }} {_PAGE_INFO} }} "
                         "fulfillments(first: 5) { createdAt } "
                         "transactions(first: 10) { kind status processedAt } "
                         "refunds(first: 10) { id }", ORDERS_PAGE, ORDERS_COST),
}

LINE_ITEMS_QUERY = (
    "query BackfillLineItems($id: ID!, $after: String) { order(id: $id) { "
    f"lineItems(first: {MORE_LINE_ITEMS}, after: $after) {{ nodes {{ {_LINE_ITEM} }} {_PAGE_INFO} }} }} }}")
REFUNDS_QUERY = (
    "query BackfillRefunds($ids: [ID!]!) { nodes(ids: $ids) { ... on Refund { "
    "legacyResourceId createdAt order { legacyResourceId } "
    "transactions(first: 5) { nodes { kind status amountSet { shopMoney { amount currencyCode } } } } "
    "refundLineItems(first: 25) { nodes { quantity subtotalSet { shopMoney { amount currencyCode } } "
    f"lineItem {{ {_LINE_ITEM} }} }} }} }} }} }}")


def query(resource: str, *, count: bool) -> str:
    """The page query of ``resource``; the first page of a window also asks for the count."""
    connection, fields, _, _ = QUERIES[resource]
    counted = f" {connection}Count(query: $query) {{ count precision }}" if count else ""
    return (f"query Backfill($first: Int!, $after: String, $query: String) {{ "
            f"{connection}(first: $first, after: $after, query: $query, sortKey: ID) {{ "
            f"nodes {{ {fields} }} {_PAGE_INFO} }}{counted} }}")


def search(from_id: str | None, since: datetime | None) -> str | None:
    """Shopify's search syntax for the window and ``--since``."""
    parts = []
    if from_id:
        parts.append(f"id:>{from_id}")
    if since is not None:
        parts.append(f"updated_at:>='{since.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}'")
    return " AND ".join(parts) or None


def page(session: Session, api_version: str, ctx: norm.Context, resource: str, cursor: str | None, *,
         since: datetime | None, throttles: Mapping[str, Throttle]) -> BackfillPage:
    """One page of ``resource`` (see the module docstring)."""
    if resource not in QUERIES:
        raise ValueError(f"shopify has no backfill resource {resource!r}")
    throttle = throttles["api"]
    state = json.loads(cursor) if cursor else {}
    after, from_id, read = state.get("after"), state.get("from_id"), int(state.get("read") or 0)
    connection, _, size, cost = QUERIES[resource]
    counting = after is None
    data = graphql.call(session, throttle, api_version, query(resource, count=counting),
                        {"first": size, "after": after, "query": search(from_id, since)},
                        cost=cost + (1 if counting else 0))
    conn = data.get(connection)
    if not isinstance(conn, dict):
        raise PlatformAPIError(f"shopify: the {connection} query answered without {connection}",
                               platform="shopify")
    nodes = [n for n in conn.get("nodes") or [] if isinstance(n, dict)]
    skipped: list[str] = []
    if resource == "orders":
        results = _orders(session, throttle, api_version, ctx, nodes, skipped)
    else:
        build = _product if resource == "products" else _customer
        results = [_one(f"{resource[:-1]} {n.get('legacyResourceId')}", lambda n=n: build(ctx, n), skipped)
                   for n in nodes]
    info = conn.get("pageInfo") or {}
    remaining = None
    counted = data.get(f"{connection}Count")
    if counting and isinstance(counted, dict) and isinstance(counted.get("count"), int):
        remaining = max(0, counted["count"] - len(nodes))
    if not info.get("hasNextPage") or not nodes:
        return BackfillPage(result=combine(results), cursor=cursor, done=True, records=len(nodes),
                            remaining=0, skipped=tuple(skipped))
    read += len(nodes)
    if read + size > WINDOW:
        new = {"after": None, "from_id": str(nodes[-1].get("legacyResourceId")), "read": 0}
    else:
        new = {"after": info.get("endCursor"), "from_id": from_id, "read": read}
    return BackfillPage(result=combine(results), cursor=json.dumps(new, sort_keys=True), done=False,
                        records=len(nodes), remaining=remaining, skipped=tuple(skipped))


def _one(what: str, fn: Callable[[], Normalised], skipped: list[str]) -> Normalised:
    try:
        return fn()
    except PayloadError as exc:
        skipped.append(f"{what}: {exc.message}")
        return Normalised()


def _money(value: Any) -> dict[str, Any]:
    money = value.get("shopMoney") if isinstance(value, dict) else None
    return money if isinstance(money, dict) else {}


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


# --- REST shapes ---------------------------------------------------------------------------


def rest_customer(node: Mapping[str, Any]) -> dict[str, Any]:
    """A GraphQL ``Customer`` as the REST customer of ``customers/*`` and ``order.customer``."""
    email = node.get("defaultEmailAddress") if isinstance(node.get("defaultEmailAddress"), dict) else {}
    phone = node.get("defaultPhoneNumber") if isinstance(node.get("defaultPhoneNumber"), dict) else {}
    return {"id": node.get("legacyResourceId"), "email": email.get("emailAddress"),
            "phone": phone.get("phoneNumber"), "first_name": node.get("firstName"),
            "last_name": node.get("lastName"), "created_at": node.get("createdAt"),
            "updated_at": node.get("updatedAt")}


def rest_line_item(node: Mapping[str, Any]) -> dict[str, Any]:
    product = node.get("product") if isinstance(node.get("product"), dict) else {}
    return {"product_id": product.get("legacyResourceId"), "sku": node.get("sku"),
            "title": node.get("title"), "name": node.get("name"), "quantity": node.get("quantity"),
            "price": _money(node.get("originalUnitPriceSet")).get("amount")}


def rest_order(node: Mapping[str, Any], line_items: list[dict[str, Any]]) -> dict[str, Any]:
    """A GraphQL ``Order`` as the REST order of ``orders/*`` webhooks."""
    total = _money(node.get("totalPriceSet"))
    customer = node.get("customer")
    return {
        "id": node.get("legacyResourceId"), "email": node.get("email"), "phone": node.get("phone"),
        "created_at": node.get("createdAt"), "processed_at": node.get("processedAt"),
        "updated_at": node.get("updatedAt"), "cancelled_at": node.get("cancelledAt"),
        "cancel_reason": _lower(node.get("cancelReason")), "test": node.get("test"),
        "source_name": node.get("sourceName"),
        "financial_status": _lower(node.get("displayFinancialStatus")),
        "total_price": total.get("amount"), "currency": total.get("currencyCode"),
        "customer": rest_customer(customer) if isinstance(customer, dict) else None,
        "line_items": [rest_line_item(i) for i in line_items],
        "fulfillments": [{"created_at": f.get("createdAt")} for f in node.get("fulfillments") or []
                         if isinstance(f, dict)],
    }


def rest_refund(node: Mapping[str, Any]) -> dict[str, Any]:
    """A GraphQL ``Refund`` as the REST refund of ``refunds/create``."""
    def nodes(value: Any) -> list[dict[str, Any]]:
        return [n for n in (value or {}).get("nodes") or [] if isinstance(n, dict)] \
            if isinstance(value, dict) else []
    order = node.get("order") if isinstance(node.get("order"), dict) else {}
    transactions = [{"kind": _lower(t.get("kind")), "status": _lower(t.get("status")),
                     "amount": _money(t.get("amountSet")).get("amount"),
                     "currency": _money(t.get("amountSet")).get("currencyCode")}
                    for t in nodes(node.get("transactions"))]
    items = []
    for r in nodes(node.get("refundLineItems")):
        subtotal = _money(r.get("subtotalSet"))
        items.append({"quantity": r.get("quantity"),
                      "line_item": rest_line_item(r["lineItem"]) if isinstance(r.get("lineItem"), dict)
                      else {},
                      "subtotal_set": {"shop_money": {"amount": subtotal.get("amount"),
                                                      "currency_code": subtotal.get("currencyCode")}}})
    return {"id": node.get("legacyResourceId"), "order_id": order.get("legacyResourceId"),
            "created_at": node.get("createdAt"), "transactions": transactions,
            "refund_line_items": items}


# --- records -----------------------------------------------------------------------------


def _product(ctx: norm.Context, node: Mapping[str, Any]) -> Normalised:
    variants = (node.get("variants") or {}).get("nodes") if isinstance(node.get("variants"), dict) else []
    return norm.catalogue_product(ctx, {
        "id": node.get("legacyResourceId"), "title": node.get("title"),
        "product_type": node.get("productType"),
        "variants": [v for v in variants or [] if isinstance(v, dict)],
        "created_at": node.get("createdAt"), "updated_at": node.get("updatedAt")})


def _customer(ctx: norm.Context, node: Mapping[str, Any]) -> Normalised:
    """``customers/create``, and ``customers/update`` at the last update (contact details
    dated by its time, as the webhook's)."""
    customer = rest_customer(node)
    results = [norm.contact_created(ctx, customer)]
    if customer["updated_at"] and customer["updated_at"] != customer["created_at"]:
        results.append(norm.customer_updated(ctx, customer))
    return combine(results)


_PAID = {"PAID", "PARTIALLY_REFUNDED", "REFUNDED"}
_PAYMENTS = {"SALE", "CAPTURE"}


def _paid_at(node: Mapping[str, Any]) -> Any:
    """When the order was paid: its last successful sale or capture (``orders/paid`` dates
    it by the order's ``updated_at`` at that moment)."""
    times = [t.get("processedAt") for t in node.get("transactions") or []
             if isinstance(t, dict) and t.get("kind") in _PAYMENTS and t.get("status") == "SUCCESS"
             and isinstance(t.get("processedAt"), str)]
    return max(times) if times else node.get("processedAt")


def order_results(ctx: norm.Context, node: Mapping[str, Any], line_items: list[dict[str, Any]],
                  refunds: list[Mapping[str, Any]], skipped: list[str]) -> list[Normalised]:
    """Every fact the order's webhooks would have brought, each through its handler."""
    order = rest_order(node, line_items)
    oid = order["id"]
    out = [_one(f"order {oid}", lambda: norm.order_placed(ctx, order), skipped)]
    if node.get("displayFinancialStatus") in _PAID:
        out.append(_one(f"order {oid} payment", lambda: norm.order_paid(
            ctx, {**order, "updated_at": _paid_at(node)}), skipped))
    if node.get("displayFulfillmentStatus") == "FULFILLED":
        out.append(_one(f"order {oid} fulfilment", lambda: norm.order_fulfilled(ctx, order), skipped))
    if node.get("cancelledAt"):
        out.append(_one(f"order {oid} cancellation", lambda: norm.order_cancelled(ctx, order), skipped))
    for refund in refunds:
        out.append(_one(f"refund {refund.get('legacyResourceId')} of order {oid}",
                        lambda refund=refund: norm.refund_issued(ctx, rest_refund(refund)), skipped))
    return out


def _orders(session: Session, throttle: Throttle, api_version: str, ctx: norm.Context,
            nodes: list[dict[str, Any]], skipped: list[str]) -> list[Normalised]:
    items: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        conn = node.get("lineItems") if isinstance(node.get("lineItems"), dict) else {}
        items[str(node.get("id"))] = [i for i in conn.get("nodes") or [] if isinstance(i, dict)]
        info = conn.get("pageInfo") or {}
        while info.get("hasNextPage"):  # an order with more line items than one page holds
            data = graphql.call(session, throttle, api_version, LINE_ITEMS_QUERY,
                                {"id": node.get("id"), "after": info.get("endCursor")}, cost=LINE_ITEMS_COST)
            more = ((data.get("order") or {}).get("lineItems") or {})
            items[str(node.get("id"))] += [i for i in more.get("nodes") or [] if isinstance(i, dict)]
            info = more.get("pageInfo") or {}
    refund_ids = [str(r["id"]) for node in nodes for r in node.get("refunds") or []
                  if isinstance(r, dict) and r.get("id")]
    refunds: dict[str, list[Mapping[str, Any]]] = {}
    for i in range(0, len(refund_ids), REFUNDS_PER_QUERY):
        data = graphql.call(session, throttle, api_version, REFUNDS_QUERY,
                            {"ids": refund_ids[i:i + REFUNDS_PER_QUERY]}, cost=REFUNDS_COST)
        for refund in data.get("nodes") or []:
            if isinstance(refund, dict):
                order_id = str((refund.get("order") or {}).get("legacyResourceId"))
                refunds.setdefault(order_id, []).append(refund)
    out: list[Normalised] = []
    for node in nodes:
        out += order_results(ctx, node, items[str(node.get("id"))],
                             refunds.get(str(node.get("legacyResourceId")), []), skipped)
    return out
