"""The JSON API: shapes, pagination, validation of every parameter, errors as JSON."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cx_connector import db, identity
from cx_connector.fields import FIELDS
from cx_connector.models import customers, scores
from cx_connector.scoring import explain


def red_ids(rt) -> list[int]:
    with db.read(rt.engine) as conn:
        return sorted((cid for cid, v in conn.execute(select(scores.c.customer_id, scores.c.score_values))
                       if (v or {}).get("cx_health") == "red"), reverse=True)


def test_one_customer_by_id_email_or_platform_id(shop, client, bearer, rt):
    with db.read(rt.engine) as conn:
        cid = identity.find_customer(conn, "shopify:7000000000")
        email = conn.execute(select(customers.c.email).where(customers.c.id == cid)).scalar_one()
    by_id = client.get(f"/api/v1/customers/{cid}", headers=bearer)
    assert by_id.status_code == 200 and by_id.content_type == "application/json"
    body = by_id.get_json()
    for ref in (email, "shopify:7000000000", email.upper()):
        assert client.get(f"/api/v1/customers/{ref}", headers=bearer).get_json() == body
    assert body["id"] == cid and body["email"] == email and body["scored_at"].startswith("2026-06-15T12:00")
    assert set(body["scores"]) == set(FIELDS) and set(body["explanation"]) == set(FIELDS)
    assert body["explanation"]["cx_health"].startswith(f"CX score {body['scores']['cx_score']}")
    assert body["inputs"]["version"] == explain.VERSION and "settings" in body["inputs"]  # context expanded
    shopify = next(i for i in body["identities"] if i["source"] == "shopify")
    assert shopify == {"kind": "id", "source": "shopify", "value": "7000000000", "gone": False,
                       "created_at": shopify["created_at"],
                       "url": "https://admin.shopify.com/store/acme/customers/7000000000"}
    # the customer is on Shopify and HubSpot (same email): a write for each record
    assert [w["source"] for w in body["writeback"]] == ["shopify", "hubspot"]
    assert all(sum(w["counts"].values()) == 1 and w["written"] == {} for w in body["writeback"])
    assert body["touchpoints"] > 0 and body["last_touch"].endswith("+00:00")


def test_an_unknown_customer_is_a_json_404(client, bearer):
    resp = client.get("/api/v1/customers/nobody@example.com", headers=bearer)
    assert resp.status_code == 404
    assert resp.get_json() == {"error": "not_found", "message": "no customer matches 'nobody@example.com' "
                                                                "(give an id, email, phone or source:id)"}


def test_a_customer_not_yet_scored(client, bearer, post_signed):
    post_signed("generic", {"source": "generic", "touchpoint_id": "t1", "occurred_at": "2026-06-01T10:00:00Z",
                            "customer": {"source_id": "c1", "email": "new@example.com"},
                            "kind": "contact_created"})
    body = client.get("/api/v1/customers/new@example.com", headers=bearer).get_json()
    assert body["scores"] == {} and body["explanation"] == {} and body["scored_at"] is None
    assert body["inputs"] is None and body["writeback"] == []


def test_customers_by_health_page_by_page(shop, client, bearer, rt):
    red = red_ids(rt)
    assert len(red) > 3
    seen, cursor, pages = [], None, 0
    while True:
        query = {"health": "red", "limit": 3, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/v1/customers", query_string=query, headers=bearer).get_json()
        assert body["limit"] == 3 and body["health"] == "red" and len(body["customers"]) <= 3
        assert all(c["scores"]["cx_health"] == "red" for c in body["customers"])
        seen += [c["id"] for c in body["customers"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == red and pages == -(-len(red) // 3)


def test_customers_default_list_and_search(shop, client, bearer):
    body = client.get("/api/v1/customers", headers=bearer).get_json()
    assert len(body["customers"]) == shop.customers and body["next_cursor"] is None and body["limit"] == 50
    first = body["customers"][0]
    found = client.get("/api/v1/customers", query_string={"q": first["email"][:8]}, headers=bearer).get_json()
    assert first["id"] in [c["id"] for c in found["customers"]]
    none = client.get("/api/v1/customers?health=none", headers=bearer).get_json()
    assert none["customers"] == []  # every seeded customer is scored with a health


@pytest.mark.parametrize(("query", "message"), [
    ("health=purple", "health: Must be one of: red, yellow, green, none."),
    ("limit=0", "limit: Must be greater than or equal to 1 and less than or equal to 500."),
    ("limit=501", "limit: Must be greater than or equal to 1 and less than or equal to 500."),
    ("limit=ten", "limit: Not a valid integer."),
    ("cursor=-5", "cursor: Must be greater than or equal to 1."),
    ("helth=red", "helth: unknown parameter (known: health, limit, cursor, q)"),
    ("health=red&health=green", "health: give it once"),
    ("limit=0&health=x", "health: Must be one of: red, yellow, green, none.; limit: Must be greater than "
                         "or equal to 1 and less than or equal to 500."),
])
def test_bad_list_parameters_are_a_400_naming_them(client, bearer, query, message):
    resp = client.get(f"/api/v1/customers?{query}", headers=bearer)
    assert resp.status_code == 400
    assert resp.get_json() == {"error": "invalid_parameter", "message": message}


def test_kpis_latest_and_history(shop, client, bearer):
    body = client.get("/api/v1/kpis", headers=bearer).get_json()
    assert len(body["history"]) == 8  # seven earlier days and today
    assert body["latest"] == body["history"][0] and body["latest"]["day"] == "2026-06-15"
    assert [h["day"] for h in body["history"]] == sorted((h["day"] for h in body["history"]), reverse=True)
    for key in ("nps", "csat", "retention_rate", "churn_rate", "cross_sell_rate", "avg_cx_score", "revenue",
                "customers_per_stage", "customers_per_health", "cx_histogram", "pain_points"):
        assert key in body["latest"], key
    three = client.get("/api/v1/kpis?days=3", headers=bearer).get_json()
    assert [h["day"] for h in three["history"]] == ["2026-06-15", "2026-06-14", "2026-06-13"]
    assert client.get("/api/v1/kpis?days=0", headers=bearer).status_code == 400
    assert client.get("/api/v1/kpis?since=2026-01-01", headers=bearer).get_json()["message"] == \
        "since: unknown parameter (known: days)"


def test_kpis_before_the_first_snapshot(client, bearer):
    assert client.get("/api/v1/kpis", headers=bearer).get_json() == {"latest": None, "history": []}


def test_unknown_api_paths_and_methods_answer_json(client, bearer):
    missing = client.get("/api/v1/nothing", headers=bearer)
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"
    wrong = client.post("/api/v1/kpis", headers=bearer)
    assert wrong.status_code == 405 and wrong.get_json()["error"] == "method_not_allowed"
