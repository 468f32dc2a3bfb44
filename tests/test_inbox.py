"""The webhook inbox end to end through the real endpoint (generic connector)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from sqlalchemy import select, text

from cx_connector import inbox
from cx_connector.models import deliveries
from tests.conftest import count

SECRET = b"generic-test-secret-0123456789"


def tp(tid="order:1:placed", email="ann@example.com", kind="order_placed", **kw):
    body = {"touchpoint_id": tid, "occurred_at": "2026-05-01T10:00:00Z",
            "customer": {"source_id": email.split("@")[0], "email": email}, "kind": kind}
    body.update(kw)
    return body


def independent_signature(body: bytes) -> str:
    return base64.b64encode(hmac.new(SECRET, body, hashlib.sha256).digest()).decode()


def test_known_answer_signature_vector(client, engine):
    # computed once with `printf '%s' '<body>' | openssl dgst -sha256 -hmac <secret> -binary | base64`
    body = b'{"touchpoint_id":"kat:1","occurred_at":"2026-05-01T10:00:00Z",' \
           b'"customer":{"source_id":"kat"},"kind":"contact_created"}'
    assert independent_signature(body) == "EAM9E7UD1gYW/saR88TCRlDBMurM8Y89muFR8T67zHg="
    r = client.post("/webhooks/generic", data=body,
                    headers={"X-CX-Signature": "EAM9E7UD1gYW/saR88TCRlDBMurM8Y89muFR8T67zHg="})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "processed"


@pytest.mark.parametrize("headers", [
    {},
    {"X-CX-Signature": "not base64!!"},
    {"X-CX-Signature": base64.b64encode(b"x" * 32).decode()},
])
def test_bad_signature_is_401_and_stores_nothing(client, engine, headers):
    r = client.post("/webhooks/generic", data=json.dumps(tp()), headers=headers)
    assert r.status_code == 401
    assert r.get_json()["error"] == "invalid_signature"
    assert count(engine, "deliveries") == 0 and count(engine, "touchpoints") == 0


def test_tampered_body_is_401(client, engine):
    body = json.dumps(tp()).encode()
    sig = independent_signature(body)
    r = client.post("/webhooks/generic", data=body.replace(b"ann", b"eve"),
                    headers={"x-cx-signature": sig})
    assert r.status_code == 401
    assert count(engine, "deliveries") == 0


def test_header_names_are_case_insensitive(client):
    body = json.dumps(tp()).encode()
    r = client.post("/webhooks/generic", data=body, headers={"x-cx-SIGNATURE": independent_signature(body)})
    assert r.status_code == 200


def test_valid_delivery_stores_raw_body_touchpoint_and_customer(post_signed, engine):
    r = post_signed("generic", tp(value="19.99", currency="EUR"))
    assert r.status_code == 200
    assert r.get_json() == {"status": "processed", "delivery_id": 1, "touchpoints": 1}
    with engine.connect() as conn:
        d = conn.execute(select(deliveries)).mappings().one()
        row = conn.execute(text("SELECT kind, stage, customer_id, value FROM touchpoints")).one()
    assert d["status"] == "processed" and json.loads(d["body"])["touchpoint_id"] == "order:1:placed"
    assert row.kind == "order_placed" and row.stage == "purchase" and row.customer_id == 1
    assert count(engine, "customers", "WHERE changed_at IS NOT NULL") == 1


def test_redelivery_is_200_and_adds_nothing(post_signed, engine):
    body = json.dumps(tp())
    first = post_signed("generic", body, {"X-CX-Delivery-Id": "d-1"})
    again = post_signed("generic", body, {"X-CX-Delivery-Id": "d-1"})
    assert first.status_code == again.status_code == 200
    assert again.get_json()["status"] == "duplicate"
    assert count(engine, "deliveries") == 1 and count(engine, "touchpoints") == 1


def test_same_fact_in_a_new_delivery_is_one_touchpoint(post_signed, engine):
    post_signed("generic", [tp(), tp("order:2:placed")], {"X-CX-Delivery-Id": "a"})
    r = post_signed("generic", [tp("order:2:placed"), tp("order:3:placed")], {"X-CX-Delivery-Id": "b"})
    assert r.get_json()["touchpoints"] == 1
    assert count(engine, "deliveries") == 2 and count(engine, "touchpoints") == 3


@pytest.mark.parametrize("body,needle", [
    (b"{not json", "not valid JSON"),
    (b'"a string"', "expected a touchpoint object"),
    (json.dumps(tp(kind="teleported")).encode(), "kind"),
    (json.dumps(tp(occurred_at="2026-05-01T10:00:00")).encode(), "occurred_at"),
    (json.dumps({**tp(), "customer": {"source_id": "x", "email": "not-an-email"}}).encode(),
     "customer.email"),
    (json.dumps(tp(kind="nps_response")).encode(), "rating"),
    (json.dumps(tp(source="shopify")).encode(), "source"),
    (json.dumps(tp(value="1e30")).encode(), "value: out of range"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (json.dumps(tp(occurred_at="0001-01-01T00:00:00+14:00")).encode(), "occurred_at: out of range"),
    (json.dumps(tp(kind="refund_issued", value="12.50")).encode(), "value: a refund is negative"),
    # NUL only: not empty for the schema, empty once cleaned (was a crash of the normaliser)
    (json.dumps({**tp(), "customer": {"source_id": "\u0000"}}).encode(), "customer.source_id"),
    # Python reads these, PostgreSQL's JSON refuses them: kept in attributes, the store failed
    (json.dumps(tp(attributes={"x": float("inf")})).encode(), "Infinity is not a JSON value"),
    (json.dumps(tp(attributes={"x": [float("nan")]})).encode(), "NaN is not a JSON value"),
    (json.dumps(tp(tid="\u0000")).encode(), "touchpoint_id must be a non-empty string"),
])
def test_malformed_payload_is_stored_failed_with_its_error(post_signed, engine, body, needle):
    r = post_signed("generic", body)
    assert r.status_code == 200
    out = r.get_json()
    assert out["status"] == "failed" and needle in out["error"]
    assert not out["error"].startswith(("internal error", "could not store"))  # no crash
    with engine.connect() as conn:
        d = conn.execute(select(deliveries)).mappings().one()
    assert d["status"] == "failed" and needle in d["error"] and d["body"] == body
    assert count(engine, "touchpoints") == 0


def test_a_payload_too_deep_for_the_normaliser_fails_by_name_not_as_a_crash(post_signed, rt, monkeypatch):
    # how deep a parsed payload may be before walking it exhausts the stack depends on the
    # interpreter: what is under test is that running out of stack is named for what it is
    def too_deep(self, delivery, *, now):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(type(rt.connectors["generic"]), "normalise", too_deep)
    r = post_signed("generic", tp())
    assert r.status_code == 200
    assert r.get_json()["status"] == "failed"
    assert r.get_json()["error"] == "the payload is nested too deeply to be processed"


def test_failed_delivery_is_replayable_after_the_cause_is_fixed(post_signed, rt, engine, monkeypatch):
    connector = rt.connectors["generic"]
    original = type(connector).normalise

    def broken(self, delivery, *, now):
        raise RuntimeError("bug in normaliser")

    monkeypatch.setattr(type(connector), "normalise", broken)
    r = post_signed("generic", tp())
    assert r.status_code == 200 and r.get_json()["status"] == "failed"
    assert "RuntimeError: bug in normaliser" in r.get_json()["error"]
    monkeypatch.setattr(type(connector), "normalise", original)
    receipt = inbox.replay(engine, rt.connectors, r.get_json()["delivery_id"], now=rt.now())
    assert receipt.status == "processed" and receipt.touchpoints == 1
    with engine.connect() as conn:
        d = conn.execute(select(deliveries)).mappings().one()
    assert d["status"] == "processed" and d["error"] is None and d["attempts"] == 2


def test_unknown_or_disabled_connector_is_404(client, database_url):
    assert client.post("/webhooks/nosuch", data=b"{}").status_code == 404
    from cx_connector.app import create_app
    from cx_connector.runtime import build
    from tests.conftest import make_config

    rt = build(make_config(database_url, connectors={}))
    r = create_app(rt=rt, configure_logging=False).test_client().post("/webhooks/generic", data=b"{}")
    assert r.status_code == 404 and "no enabled connector" in r.get_json()["message"]
    rt.engine.dispose()


def test_oversized_body_is_413_before_anything_else(client, engine):
    big = b"[" + b" " * (1024 * 1024) + b"]"
    r = client.post("/webhooks/generic", data=big, headers={"X-CX-Signature": independent_signature(big)})
    assert r.status_code == 413
    assert count(engine, "deliveries") == 0


def test_oversized_chunked_body_is_413(client, engine):
    import io

    r = client.post("/webhooks/generic", input_stream=io.BytesIO(b" " * (1100 * 1024)),
                    headers={"Transfer-Encoding": "chunked"},
                    environ_overrides={"wsgi.input_terminated": True})
    assert r.status_code == 413
    assert count(engine, "deliveries") == 0


def test_database_outage_is_503_and_health_says_so(client, rt, monkeypatch):
    from sqlalchemy import create_engine

    dead = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none",
                         connect_args={"connect_timeout": 1})
    monkeypatch.setattr(rt, "engine", dead)
    body = json.dumps(tp()).encode()
    r = client.post("/webhooks/generic", data=body, headers={"X-CX-Signature": independent_signature(body)})
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert client.get("/healthz").status_code == 503


def test_healthz_ok(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json()["database"] == "ok"
    assert r.headers["X-Request-Id"]


def test_errors_are_json_never_html(client):
    r = client.get("/no/such/page")
    assert r.status_code == 404 and r.is_json
    r = client.get("/webhooks/generic")
    assert r.status_code == 405 and r.is_json


def test_catalogue_entries_keep_the_newest_update(engine):
    from datetime import timedelta

    from cx_connector import db
    from cx_connector.connector import CatalogueProduct
    from cx_connector.inbox import catalogue
    from tests.conftest import NOW

    with db.write(engine) as conn:
        catalogue(conn, CatalogueProduct("shopify", "632910392", "IPod Nano", "Music players",
                                         updated_at=NOW), now=NOW)
        catalogue(conn, CatalogueProduct("shopify", "632910392", "IPod", "Old type",
                                         updated_at=NOW - timedelta(days=1)), now=NOW)
        row = conn.execute(text("SELECT title, category FROM products")).one()
    assert tuple(row) == ("IPod Nano", "Music players")


def test_nul_and_lone_surrogates_never_break_storage(post_signed, engine):
    """PostgreSQL refuses NUL in text and JSONB; JSON happily carries \\u0000 and \\ud800."""
    body = ('{"touchpoint_id":"nul:1\\u0000","occurred_at":"2026-05-01T10:00:00Z",'
            '"customer":{"source_id":"c\\u0000\\ud800","name":"A\\u0000nn"},"kind":"contact_created",'
            '"attributes":{"note\\u0000":"x\\ud800y\\u0000","list":["\\u0000"]}}')
    r = post_signed("generic", body)
    assert r.status_code == 200 and r.get_json()["status"] == "processed"
    with engine.connect() as conn:
        tid, attrs = conn.execute(text("SELECT touchpoint_id, attributes FROM touchpoints")).one()
        name = conn.execute(text("SELECT name FROM customers")).scalar_one()
    attrs = json.loads(attrs) if isinstance(attrs, str) else attrs
    assert tid == "nul:1" and name == "Ann" and attrs == {"note": "xy", "list": [""]}
    bad = post_signed("generic", '{"touchpoint_id":"x","kind":"nope\\u0000"}')
    assert bad.status_code == 200 and bad.get_json()["status"] == "failed"


def test_a_locked_database_is_503_and_stores_nothing(client, rt):
    """The webhook's statements run on the DBAPI cursor (the hot path): a database that
    cannot be written still answers 503 (the platform retries), never 500 or 200."""
    import sqlite3

    from sqlalchemy import event

    if rt.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's lock; PostgreSQL's outage is the test above")
    rt.engine.dispose()
    event.listen(rt.engine, "connect", lambda dbapi_conn, _: dbapi_conn.execute("PRAGMA busy_timeout=50"))
    blocker = sqlite3.connect(rt.engine.url.database, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        body = json.dumps(tp()).encode()
        r = client.post("/webhooks/generic", data=body,
                        headers={"X-CX-Signature": independent_signature(body)})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert r.get_json()["error"]
    r = client.post("/webhooks/generic", data=body, headers={"X-CX-Signature": independent_signature(body)})
    assert r.status_code == 200 and r.get_json()["status"] == "processed"


def test_raw_statements_fail_as_sqlalchemy_errors(engine):
    from sqlalchemy import exc as sa_exc

    from cx_connector import db

    with pytest.raises(sa_exc.DBAPIError) as caught, db.write(engine) as conn:
        db.raw_rows(conn, "SELECT * FROM no_such_table WHERE id = ?", (1,))
    assert "no_such_table" in str(caught.value.orig)


@pytest.mark.parametrize("reads", [True, False])
def test_the_request_url_is_given_only_to_a_connector_that_reads_it(post_signed, rt, monkeypatch, reads):
    """Building the URL costs every webhook; none of the built-in connectors' signatures
    covers it (HubSpot's is over the configured webhook_url), a third-party one may."""
    connector = rt.connectors["generic"]
    assert type(connector).reads_request_url is False
    seen = []
    real_verify = connector.verify

    def verify(body, headers, *, method, url, now):
        seen.append(url)
        return real_verify(body, headers, method=method, url=url, now=now)

    monkeypatch.setattr(connector, "verify", verify)
    monkeypatch.setattr(connector, "reads_request_url", reads)
    assert post_signed("generic", tp()).status_code == 200
    assert seen == (["http://localhost/webhooks/generic"] if reads else [""])


def test_an_email_with_a_lone_surrogate_is_no_address_and_never_breaks_storage(post_signed, engine):
    """It passed the email pattern and reached the identities table (could not store: UTF-8)."""
    body = json.dumps(tp(email="bob@e\ud800xample.com")).replace("\\ud800", "\\ud800")
    r = post_signed("generic", body)
    assert r.get_json()["status"] == "failed" and "customer.email" in r.get_json()["error"]
    assert not r.get_json()["error"].startswith("could not store")


@pytest.mark.parametrize("bodies", [
    [{**tp(), "touchpoint_id": None}, {**tp("x", kind="nope"), "touchpoint_id": None}],
    [[tp(), "not an object"], [tp(), 5]],
    [{"kind": "order_placed"}, {"kind": "order_paid"}],
])
def test_touchpoints_without_ids_are_keyed_by_their_body(post_signed, engine, bodies):
    """A missing id once keyed every such delivery alike ("None"): the second was answered
    as a redelivery of the first and never stored."""
    answers = [post_signed("generic", b).get_json() for b in bodies]
    assert [a["status"] for a in answers] == ["failed", "failed"]
    assert count(engine, "deliveries") == 2


def test_a_blank_delivery_id_header_is_ignored(post_signed, engine):
    post_signed("generic", tp("a"), {"X-CX-Delivery-Id": " "})
    r = post_signed("generic", tp("b"), {"X-CX-Delivery-Id": " "})
    assert r.get_json()["status"] == "processed" and count(engine, "deliveries") == 2


def test_long_delivery_keys_are_not_cut_into_one(post_signed, engine):
    """Keys are 255 characters at most; two ids sharing their first 255 were one delivery."""
    common = "d" * 300
    first = post_signed("generic", tp("a"), {"X-CX-Delivery-Id": common + "1"})
    second = post_signed("generic", tp("b"), {"X-CX-Delivery-Id": common + "2"})
    again = post_signed("generic", tp("b"), {"X-CX-Delivery-Id": common + "2"})
    assert [r.get_json()["status"] for r in (first, second, again)] == ["processed", "processed", "duplicate"]
    with engine.connect() as conn:
        keys = [k for (k,) in conn.execute(text("SELECT delivery_key FROM deliveries"))]
    assert len(keys) == 2 and all(len(k) <= 255 and k.startswith("id:ddd") for k in keys)
