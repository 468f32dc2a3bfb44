"""Every Shopify sample through the real endpoint, with a valid signature, and what it stored."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select

from cx_connector.models import audit_log, customers, deliveries, identities, products, touchpoints
from tests.conftest import count, fixture_bytes, settle
from tests.connectors.shopify.conftest import compliance_sample, sample

NEW_YEAR = datetime(2022, 1, 1, tzinfo=UTC)  # the samples' 2021-12-31T19:00:00-05:00
ORDER = "820982911946154508"
ORDER_CUSTOMER = "115310627314723954"
CHECKOUT_CUSTOMER = "603851970716743426"
BOB = "706405506930370084"
PRODUCT = "788032119674292922"


def tp_rows(engine, **where):
    q = select(touchpoints).order_by(touchpoints.c.id)
    for k, v in where.items():
        q = q.where(touchpoints.c[k] == v)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def idents(engine, customer_id=None):
    q = select(identities.c.kind, identities.c.source, identities.c.value, identities.c.gone_at)
    if customer_id is not None:
        q = q.where(identities.c.customer_id == customer_id)
    with engine.connect() as conn:
        return {(r.kind, r.source, r.value): r.gone_at for r in conn.execute(q)}


def customer(engine, cid):
    with engine.connect() as conn:
        return dict(conn.execute(select(customers).where(customers.c.id == cid)).mappings().one())


def applied(rt, r):
    """A privacy request: answered 200 ``queued`` at once, then applied by the clock's job."""
    assert r.status_code == 200, r.get_json()
    out = settle(rt, r.get_json())
    assert (out.get("answered"), out["status"], out["touchpoints"]) == ("queued", "processed", 0), out
    return out


def ok(r, touchpoints=1):
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["status"] == "processed", body
    assert body["touchpoints"] == touchpoints
    return body


def order_payload(**changes):
    order = json.loads(sample("orders_create.json"))
    order.update(changes)
    return order


# --- the official samples -------------------------------------------------------------------


def test_orders_create_is_order_placed_with_exact_ids_decimal_money_and_products(deliver, engine):
    ok(deliver("orders/create", sample("orders_create.json")))
    [row] = tp_rows(engine)
    assert row["touchpoint_id"] == f"order:{ORDER}:placed"
    assert row["customer_source_id"] == ORDER_CUSTOMER
    assert (row["kind"], row["stage"], row["channel"]) == ("order_placed", "purchase", "web")
    assert row["occurred_at"] == NEW_YEAR  # processed_at
    assert row["value"] == Decimal("404.95") and isinstance(row["value"], Decimal)
    assert row["currency"] == "USD"
    assert row["products"] == [
        {"id": PRODUCT, "sku": "SKU2006-001", "title": "Aviator sunglasses", "quantity": 1,
         "price": "89.99"},
        {"sku": "LENS-PROTECT-2YR", "title": "Lens Protection Plan (2 Year)", "quantity": 1,
         "price": "19.99"},
        {"sku": "CASE-LEATHER-PREM", "title": "Premium Leather Case", "quantity": 1, "price": "24.99"},
        {"id": PRODUCT, "sku": "SKU2006-020", "title": "Mid-century lounger", "quantity": 1,
         "price": "159.99"},
        {"id": PRODUCT, "sku": "SKU2006-035", "title": "Coffee table", "quantity": 1,
         "price": "119.99"},
    ]
    # the order's typed email (jon@) is not the customer's (john@): kept, never linked
    assert row["attributes"] == {"order_id": ORDER, "contact_email": "jon@example.com", "via": "web",
                                 "financial_status": "voided", "test": True}
    assert idents(engine, row["customer_id"]) == {
        ("id", "shopify", ORDER_CUSTOMER): None, ("email", "", "john@example.com"): None,
        ("id", "shopify", f"order:{ORDER}"): None}
    c = customer(engine, row["customer_id"])
    assert (c["email"], c["name"], c["phone"]) == ("john@example.com", "John Smith", None)


def test_orders_paid_is_order_paid_for_the_same_order(deliver, engine):
    ok(deliver("orders/paid", sample("orders_paid.json")))
    [row] = tp_rows(engine)
    assert row["touchpoint_id"] == f"order:{ORDER}:paid" and row["kind"] == "order_paid"
    assert row["occurred_at"] == NEW_YEAR and row["value"] is None
    assert row["attributes"]["order_id"] == ORDER and row["customer_source_id"] == ORDER_CUSTOMER


def test_customers_create_and_update(deliver, engine):
    ok(deliver("customers/create", sample("customers_create.json")))
    moved = {**json.loads(sample("customers_update.json")), "email": "bob@new.example",
             "updated_at": "2022-02-01T00:00:00Z"}
    with engine.begin() as conn:  # scored since: nothing pending
        conn.execute(customers.update().values(changed_at=None))
    r = deliver("customers/update", moved)
    assert r.get_json()["status"] == "processed" and r.get_json()["touchpoints"] == 0
    rows = tp_rows(engine)
    assert [(r["touchpoint_id"], r["kind"], r["stage"], r["channel"]) for r in rows] == [
        (f"customer:{BOB}:created", "contact_created", "awareness", "other")]
    assert rows[0]["occurred_at"] == NEW_YEAR and rows[0]["customer_source_id"] == BOB
    c = customer(engine, rows[0]["customer_id"])
    # the default address's phone belongs to the address, not the customer record
    assert (c["email"], c["name"], c["phone"]) == ("bob@new.example", "Bob Biller", None)
    assert c["profile_times"]["email"] == "2022-02-01T00:00:00+00:00"
    assert ("email", "", "bob@new.example") in idents(engine, c["id"])
    assert c["changed_at"] is None  # contact details are no score input: no rescoring


@pytest.mark.parametrize("edit", [
    {},  # the official sample: the same details as customers/create
    {"tags": "vip", "note": "called", "updated_at": "2022-03-01T00:00:00Z"},
    # what an echo of our own score write could look like, were metafields subscribed
    {"updated_at": "2022-03-01T00:00:05Z",
     "metafields": [{"namespace": "cx", "key": "cx_score", "value": "87"}]},
])
def test_an_update_that_brings_no_new_contact_details_is_ignored_not_rescored(deliver, engine, edit):
    """Loop guard: Shopify sends the whole customer after any edit, without saying what
    changed, so our own metafield writes (if they fire customers/update at all) cannot be
    recognised as ours; what can be recognised is that nothing scoring or linking uses
    changed: then the delivery is ignored and the customer is not rescored."""
    ok(deliver("customers/create", sample("customers_create.json")))
    with engine.begin() as conn:
        conn.execute(customers.update().values(changed_at=None))
    r = deliver("customers/update", {**json.loads(sample("customers_update.json")), **edit})
    body = r.get_json()
    assert body["status"] == "ignored" and body["touchpoints"] == 0
    assert body["error"].startswith("customers/update brought no new contact details")
    with engine.connect() as conn:
        assert conn.execute(select(customers.c.changed_at)).scalar_one() is None
        stored = conn.execute(select(deliveries.c.status, deliveries.c.error)
                              .where(deliveries.c.topic == "customers/update")).one()
    assert stored.status == "ignored" and "this service's own cx scores" in stored.error
    assert count(engine, "touchpoints") == 1


def test_an_update_arriving_before_the_creation_links_the_customer(deliver, engine):
    r = deliver("customers/update", sample("customers_update.json"))
    assert r.get_json()["status"] == "processed"
    assert idents(engine)[("email", "", "bob@biller.com")] is None
    ok(deliver("customers/create", sample("customers_create.json")))
    assert count(engine, "customers") == 1


def test_customers_delete_marks_the_record_gone_without_erasing(deliver, engine):
    ok(deliver("customers/create", sample("customers_create.json")))
    ok(deliver("customers/delete", sample("customers_delete.json")), touchpoints=0)
    found = idents(engine)
    assert found[("id", "shopify", BOB)] is not None  # gone
    assert found[("email", "", "bob@biller.com")] is None
    assert customer(engine, 1)["email"] == "bob@biller.com"
    assert count(engine, "touchpoints") == 1
    with engine.connect() as conn:
        entry = conn.execute(select(audit_log).where(audit_log.c.action == "record_gone")).mappings().one()
    assert entry["external_id"] == BOB and entry["source"] == "shopify"


def test_customers_delete_before_create_stays_gone(deliver, engine):
    ok(deliver("customers/delete", sample("customers_delete.json")), touchpoints=0)
    ok(deliver("customers/create", sample("customers_create.json")))
    assert idents(engine)[("id", "shopify", BOB)] is not None
    assert count(engine, "customers") == 1


def test_refunds_create_is_negative_sum_of_transactions_on_the_orders_customer(deliver, engine):
    ok(deliver("refunds/create", sample("refunds_create.json")))  # before its order
    [row] = tp_rows(engine)
    assert row["touchpoint_id"] == "refund:890088186047892319:issued"
    assert (row["kind"], row["stage"]) == ("refund_issued", "retention")
    assert row["value"] == Decimal("-85.00") and row["currency"] == "USD"  # 75.00 + 10.00
    assert row["customer_source_id"] == f"order:{ORDER}"
    assert row["attributes"] == {"order_id": ORDER, "refund_id": "890088186047892319"}
    assert [p.get("id") for p in row["products"]] == [PRODUCT, None, None, PRODUCT, PRODUCT]
    assert row["products"][0] == {"id": PRODUCT, "sku": "SKU2006-001", "title": "Aviator sunglasses",
                                  "quantity": 1, "price": "89.99"}
    ok(deliver("orders/create", sample("orders_create.json")))
    rows = tp_rows(engine)
    assert rows[0]["customer_id"] == rows[1]["customer_id"]  # the order linked its refund
    assert count(engine, "customers", "WHERE merged_into_id IS NULL") == 1


def test_checkouts_create_is_checkout_started(deliver, engine):
    ok(deliver("checkouts/create", sample("checkouts_create.json")))
    [row] = tp_rows(engine)
    assert row["touchpoint_id"] == "checkout:123123123:started"
    assert (row["kind"], row["stage"], row["channel"]) == ("checkout_started", "consideration", "web")
    assert row["occurred_at"] == NEW_YEAR and row["customer_source_id"] == CHECKOUT_CUSTOMER
    assert row["value"] == Decimal("421.88") and row["currency"] == "USD"
    assert row["products"] == [{"id": "632910392", "sku": "IPOD2008PINK", "title": "IPod Nano - 8GB",
                                "quantity": 1, "price": "199.00"}] * 2
    assert row["attributes"] == {"checkout_token": "123123123", "contact_email": "example@email.com",
                                 "via": "web"}
    assert customer(engine, row["customer_id"])["email"] == "john@example.com"


def test_checkout_and_order_of_one_email_are_one_customer(deliver, engine):
    ok(deliver("checkouts/create", sample("checkouts_create.json")))
    ok(deliver("orders/create", sample("orders_create.json")))
    assert len({r["customer_id"] for r in tp_rows(engine)}) == 1


def test_customers_data_request_writes_an_export_file(deliver, engine, export_dir, rt):
    ok(deliver("orders/create", sample("orders_create.json")))
    applied(rt, deliver("customers/data_request", compliance_sample("customers_data_request.json")))
    [path] = list(export_dir.iterdir())
    assert path.name == "export-20260615T120000Z-shopify-request-9999.json"
    document = json.loads(path.read_text())
    assert document["request"]["request_id"] == "9999"
    assert [c["profile"]["email"] for c in document["customers"]] == ["john@example.com"]
    with engine.connect() as conn:
        entry = conn.execute(select(audit_log).where(audit_log.c.action == "privacy_export")).mappings().one()
    assert entry["details"]["file"] == path.name and entry["external_id"] == "191167"


def test_customers_redact_erases_the_customer(deliver, engine, rt):
    ok(deliver("orders/create", sample("orders_create.json")))
    applied(rt, deliver("customers/redact", compliance_sample("customers_redact.json")))
    c = customer(engine, 1)
    assert (c["email"], c["name"], c["redacted_at"]) == (None, None, c["redacted_at"])
    assert c["redacted_at"] is not None
    # only tombstones are left: the erased records, so that late orders bring nothing back
    assert set(idents(engine)) == {("id", "shopify", i) for i in (
        "191167", "order:299938", "order:280263", "order:220458")}
    assert all(gone is not None for gone in idents(engine).values())
    assert ("id", "shopify", "191167") in idents(engine, c["id"])  # the same person, by email
    assert tp_rows(engine)[0]["value"] == Decimal("404.95")  # the aggregate survives
    with engine.connect() as conn:
        bodies = list(conn.execute(select(deliveries.c.topic, deliveries.c.body)
                                   .order_by(deliveries.c.id)))
    assert bodies == [("orders/create", None), ("customers/redact", None)]


def test_shop_redact_erases_everything_from_shopify(deliver, post_signed, engine, rt):
    ok(deliver("orders/create", sample("orders_create.json")))
    ok(deliver("products/create", fixture_bytes("shopify", "crafted", "products_create.json")), 0)
    applied(rt, deliver("shop/redact", compliance_sample("shop_redact.json")))
    assert count(engine, "touchpoints") == 0 and count(engine, "identities") == 0
    assert count(engine, "products") == 0
    assert count(engine, "deliveries", "WHERE body IS NOT NULL") == 0
    assert count(engine, "customers", "WHERE email IS NOT NULL OR name IS NOT NULL") == 0


# --- topics without an official sample (built from the samples) ---------------------------------


def test_products_fill_the_catalogue_that_order_categories_come_from(deliver, engine):
    ok(deliver("products/create", fixture_bytes("shopify", "crafted", "products_create.json")), 0)
    ok(deliver("orders/create", sample("orders_create.json")))
    with engine.connect() as conn:
        catalogue = {r.product_id: r for r in conn.execute(select(products))}
    assert catalogue[PRODUCT].category == "Eyewear" and catalogue[PRODUCT].sku == "SKU2006-001"
    assert catalogue[PRODUCT].title == "Aviator sunglasses"
    [order] = tp_rows(engine)
    categories = {catalogue[p["id"]].category for p in order["products"] if p.get("id") in catalogue}
    assert categories == {"Eyewear"}
    assert all("category" not in p for p in order["products"])  # line items carry no product_type


def test_products_update_replaces_an_older_entry_but_not_a_newer_one(deliver, engine):
    product = json.loads(fixture_bytes("shopify", "crafted", "products_create.json"))
    newer = {**product, "product_type": "Sunglasses", "updated_at": "2022-02-01T00:00:00Z"}
    ok(deliver("products/update", newer), 0)
    ok(deliver("products/create", product), 0)  # older, arriving late
    with engine.connect() as conn:
        assert conn.execute(select(products.c.category)).scalar_one() == "Sunglasses"


def test_line_item_product_type_is_used_when_present(deliver, engine):
    order = order_payload()
    order["line_items"][0]["product_type"] = "Eyewear"
    ok(deliver("orders/create", order))
    assert tp_rows(engine)[0]["products"][0]["category"] == "Eyewear"


def test_orders_fulfilled_is_dated_by_its_newest_fulfillment(deliver, engine):
    order = order_payload(fulfillment_status="fulfilled", fulfillments=[
        {"id": 255858046, "created_at": "2022-01-03T10:00:00Z", "status": "success"},
        {"id": 255858047, "created_at": "2022-01-04T10:00:00+02:00", "status": "success"}])
    ok(deliver("orders/fulfilled", order))
    [row] = tp_rows(engine)
    assert row["touchpoint_id"] == f"order:{ORDER}:fulfilled" and row["kind"] == "order_fulfilled"
    assert row["occurred_at"] == datetime(2022, 1, 4, 8, tzinfo=UTC)


def test_orders_cancelled_carries_the_reason(deliver, engine):
    ok(deliver("orders/cancelled", order_payload(cancelled_at="2022-01-02T09:30:00-05:00")))
    [row] = tp_rows(engine)
    assert row["touchpoint_id"] == f"order:{ORDER}:cancelled" and row["kind"] == "order_cancelled"
    assert row["occurred_at"] == datetime(2022, 1, 2, 14, 30, tzinfo=UTC)
    assert row["attributes"]["reason"] == "customer" and row["value"] is None


def test_checkouts_update_is_the_same_fact_as_checkouts_create(deliver, engine):
    checkout = json.loads(sample("checkouts_create.json"))
    updated = {**checkout, "updated_at": "2022-01-01T00:30:00Z", "total_price": "500.00"}
    ok(deliver("checkouts/update", updated))
    r = deliver("checkouts/create", checkout)
    assert r.get_json()["touchpoints"] == 0
    [row] = tp_rows(engine)
    assert row["touchpoint_id"] == "checkout:123123123:started" and row["occurred_at"] == NEW_YEAR


def test_order_with_a_checkout_token_records_it(deliver, engine):
    ok(deliver("orders/create", order_payload(checkout_token="123123123")))
    assert tp_rows(engine)[0]["attributes"]["checkout_token"] == "123123123"


def test_guest_order_belongs_to_its_order_record_linked_by_email(deliver, engine):
    ok(deliver("customers/create", {**json.loads(sample("customers_create.json")),
                                    "email": "jon@example.com"}))
    ok(deliver("orders/create", order_payload(customer=None, phone="+1 555 625 1199")))
    rows = tp_rows(engine)
    assert rows[1]["customer_source_id"] == f"order:{ORDER}"
    assert "contact_email" not in rows[1]["attributes"]
    assert rows[0]["customer_id"] == rows[1]["customer_id"]  # same email: same customer
    assert ("phone", "", "+15556251199") in idents(engine)


def test_pos_and_app_orders_map_their_channel(deliver, engine):
    ok(deliver("orders/create", order_payload(source_name="pos")))
    ok(deliver("orders/create", order_payload(id=1, source_name="1830279")))
    assert [(r["channel"], r["attributes"]["via"]) for r in tp_rows(engine)] == [
        ("store", "pos"), ("api", "1830279")]


def test_ids_beyond_2_pow_53_stay_exact(deliver, engine):
    big = 2 ** 63 - 1
    ok(deliver("orders/create", order_payload(id=big)))
    assert tp_rows(engine)[0]["touchpoint_id"] == f"order:{big}:placed"


# --- what is not a touchpoint ---------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["orders/updated", "app/uninstalled", "carts/create"])
def test_unknown_topics_are_stored_ignored_with_200(deliver, engine, topic):
    r = deliver(topic, b"not even json")
    assert r.status_code == 200
    assert r.get_json()["status"] == "ignored" and topic in r.get_json()["error"]
    with engine.connect() as conn:
        d = conn.execute(select(deliveries)).mappings().one()
    assert (d["status"], d["topic"]) == ("ignored", topic)


@pytest.mark.parametrize("topic,body,needle", [
    ("orders/create", b"{broken", "not valid JSON"),
    ("orders/create", b"[]", "expected a JSON object"),
    ("orders/create", {"id": "12a"}, "order.id: expected a Shopify id"),
    ("orders/create", {"id": 1.5}, "order.id"),
    ("orders/create", {"id": 1, "processed_at": "2022-01-01T00:00:00", "total_price": "1"},
     "order.processed_at: expected an ISO-8601 time with a time zone"),
    ("orders/create", {"id": 1, "created_at": "2022-01-01T00:00:00Z", "total_price": "NaN",
                       "currency": "USD"}, "order.total_price"),
    ("orders/create", {"id": 1, "created_at": "2022-01-01T00:00:00Z", "total_price": "1",
                       "currency": "usd"}, "order.currency"),
    ("orders/create", {"id": 1}, "needs processed_at or created_at"),
    ("refunds/create", {"id": 1, "order_id": 2, "created_at": "2022-01-01T00:00:00Z",
                        "transactions": [{"kind": "refund", "status": "success", "amount": "1",
                                          "currency": "USD"},
                                         {"kind": "refund", "status": "success", "amount": "1",
                                          "currency": "EUR"}]}, "several currencies"),
    ("checkouts/create", {"token": "a b"}, "checkout.token"),
    ("customers/redact", {"shop_domain": "acme.myshopify.com", "customer": {}},
     "neither an id nor a usable email"),
])
def test_malformed_payloads_are_stored_failed_with_a_message(deliver, engine, topic, body, needle):
    r = deliver(topic, body)
    assert r.status_code == 200
    out = r.get_json()
    assert out["status"] == "failed" and needle in out["error"], out
    assert count(engine, "touchpoints") == 0 and count(engine, "deliveries", "WHERE status='failed'") == 1


# --- the connector's other duties -------------------------------------------------------------------


def test_records_and_their_admin_urls(rt):
    shopify = rt.connectors["shopify"]
    assert shopify.record_url(BOB) == f"https://admin.shopify.com/store/acme/customers/{BOB}"
    assert shopify.record_url(f"order:{ORDER}") == f"https://admin.shopify.com/store/acme/orders/{ORDER}"
    assert shopify.record_url("checkout:123123123") is None
    assert shopify.writable_record(BOB)
    assert not shopify.writable_record(f"order:{ORDER}") and not shopify.writable_record("checkout:x")


def test_delivery_key_is_the_webhook_id(deliver, engine):
    deliver("customers/create", sample("customers_create.json"),
            {"X-Shopify-Webhook-Id": "545ebdd4-b7be-4d3d-b14e-54aa78e0e0f9"})
    with engine.connect() as conn:
        key = conn.execute(select(deliveries.c.delivery_key)).scalar_one()
    assert key == "webhook:545ebdd4-b7be-4d3d-b14e-54aa78e0e0f9"


def test_bundled_samples_process_through_the_endpoint(post_signed, rt, engine):
    samples = rt.connectors["shopify"].sample_deliveries()
    assert {s.headers["X-Shopify-Topic"] for s in samples} >= {"orders/create", "products/create"}
    for s in samples:
        r = post_signed("shopify", s.body, dict(s.headers))
        # the official update sample repeats the creation's contact details: nothing new
        want = "ignored" if s.headers["X-Shopify-Topic"] == "customers/update" else "processed"
        assert r.status_code == 200 and r.get_json()["status"] == want, (s.name, r.get_json())
    assert count(engine, "touchpoints") == 5 and count(engine, "products") == 1
