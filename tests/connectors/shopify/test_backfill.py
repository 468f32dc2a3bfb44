"""Shopify backfill against `responses`-mocked Admin GraphQL answers in the documented shapes
(https://shopify.dev/docs/api/admin-graphql/latest/queries/orders, ``customers``,
``products``, ``nodes``; ``extensions.cost.throttleStatus``), asserting exact request bodies."""

from __future__ import annotations

import json
from decimal import Decimal

import responses
from responses import matchers
from sqlalchemy import select, text

from connectors.shopify import backfill as sb
from cx_connector import backfill
from cx_connector.models import products, touchpoints
from tests.clock import SteppingClock as FakeClock
from tests.conftest import NOW, count
from tests.connectors.shopify.conftest import sample

GRAPHQL = "https://acme.myshopify.test/admin/api/2026-07/graphql.json"


def cost(requested: float = 100, available: float = 1900) -> dict:
    return {"cost": {"requestedQueryCost": requested, "actualQueryCost": 20,
                     "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": available,
                                        "restoreRate": 100.0}}}


def gql(query: str, variables: dict, data: dict | None = None, **kw) -> None:
    body = kw.pop("body", None) or {"data": data, "extensions": cost()}
    responses.post(GRAPHQL, match=[matchers.json_params_matcher({"query": query, "variables": variables})],
                   json=body, **kw)


def page_vars(resource: str, after: str | None = None, query: str | None = None) -> dict:
    return {"first": sb.QUERIES[resource][2], "after": after, "query": query}


def conn(resource: str, nodes: list, end: str | None = None, total: int | None = None) -> dict:
    data = {sb.QUERIES[resource][0]: {"nodes": nodes, "pageInfo": {"hasNextPage": end is not None,
                                                                  "endCursor": end}}}
    if total is not None:
        data[f"{sb.QUERIES[resource][0]}Count"] = {"count": total, "precision": "EXACT"}
    return data


def empty(resource: str) -> None:
    gql(sb.query(resource, count=True), page_vars(resource), conn(resource, [], total=0))


def customer(cid: str, email: str | None, created: str, updated: str | None = None, **kw) -> dict:
    return {"legacyResourceId": cid, "firstName": kw.get("first"), "lastName": kw.get("last"),
            "createdAt": created, "updatedAt": updated or created,
            "defaultEmailAddress": {"emailAddress": email} if email else None,
            "defaultPhoneNumber": {"phoneNumber": kw["phone"]} if kw.get("phone") else None}


def line(sku: str, title: str, price: str, product: str | None = "788032119674292922", qty: int = 1) -> dict:
    return {"sku": sku, "title": title, "name": title, "quantity": qty,
            "originalUnitPriceSet": {"shopMoney": {"amount": price}},
            "product": {"legacyResourceId": product} if product else None}


def order(oid: str, *, customer_node: dict | None, total: str = "404.95", items: list | None = None,
          more_items: str | None = None, refunds: tuple[str, ...] = (), **kw) -> dict:
    return {
        "id": f"gid://shopify/Order/{oid}", "legacyResourceId": oid, "email": kw.get("email"),
        "phone": None, "createdAt": kw.get("created", "2021-12-31T19:00:00-05:00"),
        "processedAt": kw.get("created", "2021-12-31T19:00:00-05:00"),
        "updatedAt": kw.get("updated", "2022-01-02T10:00:00-05:00"), "cancelledAt": kw.get("cancelled"),
        "cancelReason": kw.get("reason"), "test": kw.get("test", False), "sourceName": "web",
        "displayFinancialStatus": kw.get("financial", "PAID"),
        "displayFulfillmentStatus": kw.get("fulfillment", "UNFULFILLED"),
        "totalPriceSet": {"shopMoney": {"amount": total, "currencyCode": "USD"}},
        "customer": customer_node,
        "lineItems": {"nodes": items if items is not None else [line("SKU2006-001", "Aviator sunglasses",
                                                                      "89.99")],
                      "pageInfo": {"hasNextPage": more_items is not None, "endCursor": more_items}},
        "fulfillments": [{"createdAt": t} for t in kw.get("fulfilled", [])],
        "transactions": kw.get("transactions", [
            {"kind": "AUTHORIZATION", "status": "SUCCESS", "processedAt": "2022-01-01T09:00:00Z"},
            {"kind": "CAPTURE", "status": "SUCCESS", "processedAt": "2022-01-01T10:00:00Z"}]),
        "refunds": [{"id": f"gid://shopify/Refund/{r}"} for r in refunds],
    }


def refund(rid: str, oid: str, amounts: tuple[str, ...] = ("75.00", "10.00")) -> dict:
    return {"legacyResourceId": rid, "createdAt": "2021-12-31T19:00:00-05:00",
            "order": {"legacyResourceId": oid},
            "transactions": {"nodes": [{"kind": "REFUND", "status": "SUCCESS",
                                        "amountSet": {"shopMoney": {"amount": a, "currencyCode": "USD"}}}
                                       for a in amounts]},
            "refundLineItems": {"nodes": [{
                "quantity": 1, "subtotalSet": {"shopMoney": {"amount": "89.99", "currencyCode": "USD"}},
                "lineItem": line("SKU2006-001", "Aviator sunglasses", "89.99")}]}}


def run(rt, clock=None, **kw):
    return backfill.run(rt, "shopify", clock=clock or FakeClock(NOW), **kw)


def ids(engine) -> list[str]:
    with engine.connect() as c:
        return sorted(c.execute(text("SELECT touchpoint_id FROM touchpoints")).scalars())


def test_queries_stay_under_the_single_query_cost_maximum():
    assert max(sb.PRODUCTS_COST, sb.CUSTOMERS_COST, sb.ORDERS_COST, sb.LINE_ITEMS_COST,
               sb.REFUNDS_COST) < 1000
    assert sb.search("42", NOW) == "id:>42 AND updated_at:>='2026-06-15T12:00:00Z'"
    assert sb.search(None, None) is None


@responses.activate
def test_empty_store(rt, engine):
    for resource in ("products", "customers", "orders"):
        empty(resource)
    summary = run(rt)
    assert summary["status"] == "ok" and summary["records"] == 0
    assert [r["status"] for r in summary["resources"]] == ["done", "done", "done"]
    assert count(engine, "touchpoints") == 0 and len(responses.calls) == 3


@responses.activate
def test_products_customers_and_orders_of_every_status_with_refunds(rt, engine):
    gql(sb.query("products", count=True), page_vars("products"), conn("products", [
        {"legacyResourceId": "788032119674292922", "title": "Example T-Shirt", "productType": "Shirts",
         "createdAt": "2021-12-31T19:00:00-05:00", "updatedAt": "2022-01-01T19:00:00-05:00",
         "variants": {"nodes": [{"sku": ""}, {"sku": "example-shirt-s"}]}}], total=1))
    gql(sb.query("customers", count=True), page_vars("customers"), conn("customers", [
        customer("706405506930370084", "bob@biller.com", "2021-12-31T19:00:00-05:00",
                 "2022-03-01T08:00:00Z", first="Bob", last="Biller", phone="+16135551111"),
        customer("115310627314723954", "john@example.com", "2021-12-30T12:00:00Z", first="John",
                 last="Smith")], total=2))
    john = customer("115310627314723954", "john@example.com", "2021-12-30T12:00:00Z", first="John",
                    last="Smith")
    gql(sb.query("orders", count=True), page_vars("orders"), conn("orders", [
        order("820982911946154508", customer_node=john, email="jon@example.com",
              fulfillment="FULFILLED", fulfilled=["2022-01-03T10:00:00Z", "2022-01-02T10:00:00Z"],
              financial="PARTIALLY_REFUNDED", refunds=("890088186047892319",), more_items="li1")],
        end="c1", total=2))
    gql(sb.LINE_ITEMS_QUERY, {"id": "gid://shopify/Order/820982911946154508", "after": "li1"}, {"order": {
        "lineItems": {"nodes": [line("SKU2006-020", "Mid-century lounger", "159.99", qty=2)],
                      "pageInfo": {"hasNextPage": False, "endCursor": "li2"}}}})
    gql(sb.REFUNDS_QUERY, {"ids": ["gid://shopify/Refund/890088186047892319"]},
        {"nodes": [refund("890088186047892319", "820982911946154508")]})
    gql(sb.query("orders", count=False), page_vars("orders", after="c1"), conn("orders", [
        order("1001", customer_node=None, email="guest@example.com", financial="VOIDED",
              cancelled="2022-02-01T00:00:00Z", reason="CUSTOMER", transactions=[])]))

    summary = run(rt)

    assert summary["status"] == "ok", summary
    assert ids(engine) == [
        "customer:115310627314723954:created",
        "customer:706405506930370084:created",
        "order:1001:cancelled",
        "order:1001:placed",
        "order:820982911946154508:fulfilled",
        "order:820982911946154508:paid",
        "order:820982911946154508:placed",
        "refund:890088186047892319:issued",
    ]
    with engine.connect() as c:
        rows = {r.touchpoint_id: r for r in c.execute(select(touchpoints))}
        placed = rows["order:820982911946154508:placed"]
        assert placed.value == Decimal("404.95") and placed.currency == "USD"
        assert [(p["sku"], p["quantity"]) for p in placed.products] == [("SKU2006-001", 1),
                                                                         ("SKU2006-020", 2)]
        assert placed.attributes["contact_email"] == "jon@example.com"
        assert rows["order:820982911946154508:paid"].occurred_at.isoformat() == "2022-01-01T10:00:00+00:00"
        assert rows["order:820982911946154508:fulfilled"].occurred_at.isoformat() == \
            "2022-01-03T10:00:00+00:00"
        assert rows["refund:890088186047892319:issued"].value == Decimal("-85.00")
        assert rows["order:1001:cancelled"].attributes["reason"] == "customer"
        # the refund (filed under order:<id>) and the order are one customer
        assert rows["refund:890088186047892319:issued"].customer_id == placed.customer_id
        shirt = c.execute(select(products)).one()
        assert (shirt.category, shirt.sku) == ("Shirts", "example-shirt-s")
        bob = c.execute(text("SELECT phone, name, profile_times FROM customers c JOIN identities i "
                             "ON i.customer_id = c.id WHERE i.value = '706405506930370084'")).one()
        assert tuple(bob)[:2] == ("+16135551111", "Bob Biller")
        # the last update is no touchpoint, but dates the contact details, as the webhook would
        times = bob.profile_times if isinstance(bob.profile_times, dict) else json.loads(bob.profile_times)
        assert times["email"] == "2022-03-01T08:00:00+00:00"


@responses.activate
def test_a_fact_delivered_by_webhook_and_by_backfill_is_one_touchpoint(rt, engine, deliver):
    assert deliver("orders/create", sample("orders_create.json")).status_code == 200
    assert deliver("refunds/create", sample("refunds_create.json")).status_code == 200
    assert deliver("customers/create", sample("customers_create.json")).status_code == 200
    before = ids(engine)
    assert before == ["customer:706405506930370084:created", "order:820982911946154508:placed",
                      "refund:890088186047892319:issued"]
    with engine.connect() as c:
        owner = c.execute(text("SELECT customer_id FROM touchpoints WHERE touchpoint_id = "
                               "'order:820982911946154508:placed'")).scalar_one()
    empty("products")
    gql(sb.query("customers", count=True), page_vars("customers"), conn("customers", [
        customer("706405506930370084", "bob@biller.com", "2021-12-31T19:00:00-05:00")], total=1))
    john = customer("115310627314723954", "john@example.com", "2021-12-30T12:00:00Z", first="John",
                    last="Smith")
    gql(sb.query("orders", count=True), page_vars("orders"), conn("orders", [
        order("820982911946154508", customer_node=john, email="jon@example.com", financial="VOIDED",
              cancelled="2021-12-31T19:00:00-05:00", reason="CUSTOMER", test=True,
              refunds=("890088186047892319",))], total=1))
    gql(sb.REFUNDS_QUERY, {"ids": ["gid://shopify/Refund/890088186047892319"]},
        {"nodes": [refund("890088186047892319", "820982911946154508")]})
    summary = run(rt)
    assert summary["status"] == "ok"
    assert ids(engine) == sorted([*before, "order:820982911946154508:cancelled"])
    with engine.connect() as c:
        owners = c.execute(text("SELECT DISTINCT customer_id FROM touchpoints WHERE touchpoint_id LIKE "
                                "'%820982911946154508%' OR touchpoint_id LIKE 'refund:%'")).scalars().all()
    assert owners == [owner]


@responses.activate
def test_throttled_mid_way_waits_and_asks_the_same_page_again(rt, engine):
    empty("products")
    empty("customers")
    gql(sb.query("orders", count=True), page_vars("orders"),
        conn("orders", [order("1", customer_node=None, email="a@example.com")], end="c1", total=2))
    responses.post(GRAPHQL, status=429, headers={"Retry-After": "2.0"}, body="Too Many Requests",
                   match=[matchers.json_params_matcher({"query": sb.query("orders", count=False),
                                                        "variables": page_vars("orders", after="c1")})])
    gql(sb.query("orders", count=False), page_vars("orders", after="c1"), body={
        "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED",
                                                            "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
        "extensions": cost(requested=746, available=46)})
    gql(sb.query("orders", count=False), page_vars("orders", after="c1"),
        conn("orders", [order("2", customer_node=None, email="b@example.com")]))
    clock = FakeClock(NOW)
    summary = run(rt, clock)
    assert summary["status"] == "ok"
    assert 2.0 in clock.sleeps and 7.0 in clock.sleeps  # Retry-After, then (746 - 46) / 100 points
    assert {"order:1:placed", "order:2:placed"} <= set(ids(engine))


@responses.activate
def test_resume_after_a_failure_on_page_3(rt, engine):
    gql(sb.query("customers", count=True), page_vars("customers"),
        conn("customers", [customer("1", "a@example.com", "2024-01-01T00:00:00Z")], end="c1", total=4))
    gql(sb.query("customers", count=False), page_vars("customers", after="c1"),
        conn("customers", [customer("2", "b@example.com", "2024-01-01T00:00:00Z")], end="c2"))
    responses.post(GRAPHQL, status=500, json={"errors": "Internal Server Error"},
                   match=[matchers.json_params_matcher({"query": sb.query("customers", count=False),
                                                        "variables": page_vars("customers", after="c2")})])
    summary = run(rt, only=["customers"])
    assert summary["status"] == "failed"
    assert ids(engine) == ["customer:1:created", "customer:2:created"]

    responses.reset()
    gql(sb.query("customers", count=False), page_vars("customers", after="c2"),
        conn("customers", [customer("3", "c@example.com", "2024-01-01T00:00:00Z")], end="c3"))
    gql(sb.query("customers", count=False), page_vars("customers", after="c3"),
        conn("customers", [customer("4", "d@example.com", "2024-01-01T00:00:00Z")]))
    summary = run(rt, resume=True)
    assert summary["status"] == "ok"
    assert [json.loads(c.request.body)["variables"]["after"] for c in responses.calls] == ["c2", "c3"]
    assert ids(engine) == [f"customer:{i}:created" for i in (1, 2, 3, 4)]


@responses.activate
def test_a_query_restarts_from_the_last_id_before_the_25000_object_limit(rt, engine):
    from cx_connector import db
    from cx_connector.models import backfill_state
    with db.write(engine) as c:
        c.execute(backfill_state.insert().values(
            source="shopify", resource="customers", status="interrupted", pages=199, records=19_900,
            cursor=json.dumps({"after": "c199", "from_id": None, "read": 19_900}),
            started_at=NOW, updated_at=NOW))
    gql(sb.query("customers", count=False), page_vars("customers", after="c199"),
        conn("customers", [customer("19900", None, "2024-01-01T00:00:00Z")], end="c200"))
    gql(sb.query("customers", count=True), page_vars("customers", query="id:>19900"),
        conn("customers", [customer("19901", None, "2024-01-01T00:00:00Z")], total=1))
    summary = run(rt, resume=True)
    assert summary["status"] == "ok"
    assert ids(engine) == ["customer:19900:created", "customer:19901:created"]


@responses.activate
def test_webhooks_interleaved_with_backfill_pages_are_neither_lost_nor_doubled(rt, engine, deliver):
    """Order 2 is paid while page 2 is fetched: the webhook brings it, page 2 (read after the
    payment) brings it too; order 1's placement arrives by webhook after page 1 stored it."""
    empty("products")
    empty("customers")
    first = order("1", customer_node=None, email="a@example.com", financial="PENDING", transactions=[])
    gql(sb.query("orders", count=True), page_vars("orders"), conn("orders", [first], end="c1", total=2))
    paid_hook = {"id": 2, "email": "b@example.com", "created_at": "2021-12-31T19:00:00-05:00",
                 "processed_at": "2021-12-31T19:00:00-05:00", "updated_at": "2022-01-01T10:00:00Z",
                 "total_price": "404.95", "currency": "USD", "source_name": "web", "line_items": []}
    placed_hook = {**paid_hook, "id": 1, "email": "a@example.com"}

    def page_2(request):
        assert deliver("orders/create", json.dumps(placed_hook)).status_code == 200
        assert deliver("orders/paid", json.dumps(paid_hook)).status_code == 200
        data = conn("orders", [order("2", customer_node=None, email="b@example.com")])
        return 200, {}, json.dumps({"data": data, "extensions": cost()})

    responses.add_callback(responses.POST, GRAPHQL, callback=page_2, match=[matchers.json_params_matcher(
        {"query": sb.query("orders", count=False), "variables": page_vars("orders", after="c1")})])
    summary = run(rt)
    assert summary["status"] == "ok"
    assert ids(engine) == ["order:1:placed", "order:2:paid", "order:2:placed"]
    with engine.connect() as c:
        assert c.execute(text("SELECT count(DISTINCT customer_id) FROM touchpoints "
                              "WHERE touchpoint_id LIKE 'order:2:%'")).scalar_one() == 1


@responses.activate
def test_a_malformed_order_fact_is_skipped_by_name_and_the_page_kept(rt, engine):
    empty("products")
    empty("customers")
    bad = order("3", customer_node=None, email="c@example.com", total="lots")
    gql(sb.query("orders", count=True), page_vars("orders"), conn("orders", [
        bad, order("4", customer_node=None, email="d@example.com", financial="PENDING")], total=2))
    summary = run(rt)
    assert summary["status"] == "ok" and summary["skipped"] == 1
    assert summary["resources"][2]["skipped_reasons"][0].startswith("order 3: order.total_price")
    # only the fact that needs the total is left out: order 3's payment is still a fact
    assert ids(engine) == ["order:3:paid", "order:4:placed"]
