"""Erasure and export: Shopify compliance webhooks, platform deletions, and the CLI."""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from cx_connector import db, inbox, privacy, scheduler
from cx_connector.cli import main
from cx_connector.connector import CustomerRef, Forget, Normalised, Touchpoint
from cx_connector.models import (
    Base,
    audit_log,
    customers,
    deliveries,
    identities,
    outbox,
    scores,
    touchpoints,
    written_values,
)
from tests.conftest import NOW, TEST_CONNECTORS, count, make_config, settle
from tests.connectors.shopify.conftest import compliance_sample, sample, shopify_headers

JOHN = ["john@example.com", "jon@example.com", "example@email.com", "john.smith@work.example",
        "John Smith", "Smith", "john", "555-625-1199", "5556251199", "123-123-1234"]
BOB = ["bob@biller.com", "Bob Biller"]


@pytest.fixture
def export_dir(tmp_path):
    return tmp_path / "exports"


@pytest.fixture
def config(database_url, export_dir):
    return make_config(database_url, privacy={"export_dir": str(export_dir)})


@pytest.fixture
def shopify(client, rt):
    """POST a Shopify webhook; a privacy request answered ``queued`` is applied by the clock's
    ``privacy`` job before returning (:func:`tests.conftest.settle`)."""
    def post(topic, body, webhook_id=None):
        body = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = shopify_headers(topic, body, **({"X-Shopify-Webhook-Id": webhook_id} if webhook_id else {}))
        r = client.post("/webhooks/shopify", data=body, headers=headers)
        assert r.status_code == 200, r.get_json()
        return settle(rt, r.get_json())
    return post


def generic_tp(tid, source_id, email, **kw):
    return {"touchpoint_id": tid, "occurred_at": "2026-05-01T10:00:00Z",
            "customer": {"source_id": source_id, "email": email, **kw.pop("customer", {})},
            "kind": "contact_created", **kw}


def john_customer(engine):
    with engine.connect() as conn:
        return conn.execute(select(identities.c.customer_id).where(
            identities.c.value == "115310627314723954")).scalar_one()


@pytest.fixture
def world(shopify, post_signed, engine):
    """John across Shopify and the generic source (one merge leaves an old profile behind),
    an ignored and a failed delivery mentioning him, scores and write-back rows; and Bob."""
    order = json.loads(sample("orders_create.json"))
    post_signed("generic", generic_tp("g:1", "g1", "john.smith@work.example",
                                      customer={"name": "John Smith"}))
    assert shopify("checkouts/create", sample("checkouts_create.json"))["status"] == "processed"
    assert shopify("refunds/create", sample("refunds_create.json"))["status"] == "processed"
    assert shopify("orders/create", sample("orders_create.json"), "w-order")["status"] == "processed"
    update = {"id": 115310627314723954, "email": "john@example.com", "phone": "555-625-1199",
              "first_name": "John", "last_name": "Smith", "updated_at": "2022-02-01T00:00:00Z"}
    assert shopify("customers/update", update)["status"] == "processed"
    post_signed("generic", generic_tp("g:2", "g1", "john@example.com", attributes={
        "note": "called back", "via": "phone", "summary": "John Smith asked for 555 625 1199"}))
    assert shopify("orders/updated", sample("orders_create.json"))["status"] == "ignored"
    assert shopify("orders/create", {**order, "currency": "usd"})["status"] == "failed"
    assert shopify("customers/create", sample("customers_create.json"))["status"] == "processed"
    john = john_customer(engine)
    with db.write(engine) as conn:
        bob = conn.execute(select(customers.c.id).where(customers.c.email == "bob@biller.com")).scalar_one()
        conn.execute(scores.insert(), [
            {"customer_id": john, "scored_at": NOW, "score_values": {"cx_score": 80},
             "explanation": {"summary": "John Smith ordered twice", "cx_score": ["bought"]}},
            {"customer_id": bob, "scored_at": NOW, "score_values": {"cx_score": 50}, "explanation": {}}])
        for who, ext in ((john, "115310627314723954"), (bob, "706405506930370084")):
            conn.execute(outbox.insert().values(
                customer_id=who, source="shopify", external_id=ext, fields={"cx_score": 80},
                previous={}, status="pending", attempts=0, next_attempt_at=NOW, created_at=NOW,
                updated_at=NOW))
            conn.execute(written_values.insert().values(source="shopify", external_id=ext,
                                                        field="cx_score", value=70, written_at=NOW))
    return {"john": john, "bob": bob}


def everything(engine) -> str:
    """Every value of every column of every table (raw bodies decoded), lower-cased."""
    parts = []
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        value = bytes(value).decode("utf-8", "replace")
                    elif isinstance(value, dict | list):
                        value = json.dumps(value, ensure_ascii=False)
                    parts.append(str(value))
    return "\n".join(parts).lower()


def aggregates(engine):
    with engine.connect() as conn:
        return sorted(conn.execute(text(
            "SELECT source, touchpoint_id, kind, stage, channel, occurred_at, value, currency, products "
            "FROM touchpoints")).all(), key=str)


# --- Shopify customers/redact ----------------------------------------------------------------


def test_redact_leaves_no_trace_of_the_person_and_keeps_aggregates(world, shopify, engine):
    haystack = everything(engine)
    assert all(n.lower() in haystack for n in JOHN + BOB)  # the test would see them
    before = aggregates(engine)
    out = shopify("customers/redact", compliance_sample("customers_redact.json"))
    assert out["status"] == "processed"

    haystack = everything(engine)
    assert [n for n in JOHN if n.lower() in haystack] == []
    assert all(n.lower() in haystack for n in BOB)
    assert aggregates(engine) == before  # kinds, times, values, products: KPIs stay right
    with engine.connect() as conn:
        s = conn.execute(select(scores).where(scores.c.customer_id == world["john"])).mappings().one()
        redacted = conn.execute(select(customers.c.id).where(customers.c.redacted_at.is_not(None))
                                ).scalars().all()
        left = conn.execute(select(outbox.c.external_id)).scalars().all()
        written = conn.execute(select(written_values.c.external_id)).scalars().all()
        tps = conn.execute(select(touchpoints.c.customer_id, touchpoints.c.attributes).where(
            touchpoints.c.customer_id == world["john"])).all()
    assert s["score_values"] == {"cx_score": 80}
    assert s["explanation"] == {"summary": "[redacted] ordered twice", "cx_score": ["bought"]}
    assert world["john"] in redacted and world["bob"] not in redacted and len(redacted) >= 2
    assert left == ["706405506930370084"] and written == ["706405506930370084"]
    generic_note = next(a for _, a in tps if a.get("via") == "phone")
    assert generic_note == {"via": "phone", "summary": "[redacted] asked for [redacted]"}
    # only the erased record's tombstone is left on him, so late orders bring nothing back
    with engine.connect() as conn:
        kept = conn.execute(select(identities.c.kind, identities.c.value, identities.c.gone_at).where(
            identities.c.customer_id == world["john"])).all()
    assert [(k, v) for k, v, _ in kept] == [("id", "191167")] and kept[0].gone_at is not None


def test_redact_empties_every_raw_delivery_about_the_person(world, shopify, engine):
    shopify("customers/redact", compliance_sample("customers_redact.json"))
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.topic, deliveries.c.status, deliveries.c.body,
                                   deliveries.c.headers, deliveries.c.redacted_at)
                            .order_by(deliveries.c.id)).all()
    kept = [(r.topic, r.status) for r in rows if r.body is not None]
    assert kept == [("customers/create", "processed")]  # Bob's
    assert {(r.topic, r.status) for r in rows if r.body is None} >= {
        ("orders/updated", "ignored"), ("orders/create", "failed"), ("customers/redact", "processed")}
    assert all(r.headers == {} and r.redacted_at is not None for r in rows if r.body is None)


def test_redact_is_audit_logged_without_personal_data(world, shopify, engine):
    shopify("customers/redact", compliance_sample("customers_redact.json"))
    with engine.connect() as conn:
        entries = conn.execute(select(audit_log).where(audit_log.c.action == "privacy_forget")
                               .order_by(audit_log.c.id)).mappings().all()
    first = entries[0]
    assert (first["source"], first["external_id"]) == ("shopify", "191167")
    assert first["details"]["reason"] == "shopify customers/redact"
    assert first["details"]["request"] == {"record": "shopify:191167", "by_email": True}
    assert first["details"]["touchpoints"] == 5 and first["details"]["identities"] >= 6
    assert [e["external_id"] for e in entries[1:]] == ["order:299938", "order:280263", "order:220458"]
    assert "john" not in json.dumps([dict(e) for e in entries], default=str).lower()


def test_a_redacted_fact_redelivered_is_not_reimported(world, shopify, engine):
    shopify("customers/redact", compliance_sample("customers_redact.json"))
    again = shopify("orders/create", sample("orders_create.json"), "w-order")
    assert again["status"] == "duplicate"
    assert "john@example.com" not in everything(engine)


def test_late_facts_about_a_redacted_customer_stay_anonymous(world, shopify, engine):
    """customers/redact names customer 191167: its id stays as a tombstone, so an order placed
    before the request but delivered after it, and an update, bring no personal data back."""
    shopify("customers/redact", compliance_sample("customers_redact.json"))
    order = json.loads(sample("orders_create.json"))
    late = {**order, "id": 299938, "email": "john@example.com", "customer": {
        **order["customer"], "id": 191167, "email": "john@example.com", "phone": "555-625-1199"}}
    assert shopify("orders/create", late)["status"] == "processed"
    update = {"id": 191167, "email": "john@example.com", "first_name": "John", "last_name": "Smith",
              "updated_at": "2022-03-01T00:00:00Z"}
    out = shopify("customers/update", update)
    assert out["status"] == "ignored" and "personal data was erased" in out["error"]
    assert [n for n in JOHN if n.lower() in everything(engine)] == []
    with engine.connect() as conn:
        owner = conn.execute(select(touchpoints.c.customer_id).where(
            touchpoints.c.touchpoint_id == "order:299938:placed")).scalar_one()
        redacted = conn.execute(select(customers.c.redacted_at).where(customers.c.id == owner)).scalar()
    assert owner == world["john"] and redacted is not None  # the fact counts, for no one


def test_forget_by_email_alone_reaches_deliveries_with_no_customer(shopify, engine):
    shopify("orders/updated", sample("orders_create.json"))  # ignored, but names john@
    with db.write(engine) as conn:
        result = privacy.forget(conn, privacy.Target(email="John@Example.com"), now=NOW, actor="test")
    assert result.customers == [] and result.deliveries == 1
    assert "john@example.com" not in everything(engine)


def test_id_tokens_match_whole_numbers_of_the_same_source_only(shopify, post_signed, engine):
    shopify("customers/create", sample("customers_create.json"))  # Bob 706405506930370084
    post_signed("generic", generic_tp("x", "x", "x@example.org", attributes={"n": "706405506930370084"}))
    shopify("orders/updated", {"id": 7064055069303700841, "note": "not Bob"})
    with db.write(engine) as conn:
        privacy.forget(conn, privacy.Target(source="shopify", source_id="706405506930370084"),
                       now=NOW, actor="test")
        bodies = dict(conn.execute(select(deliveries.c.topic, deliveries.c.body)).all())
    assert bodies["customers/create"] is None
    # another number that merely starts with the id, and the same number in another source
    assert bodies["orders/updated"] is not None and bodies["contact_created"] is not None


# --- HubSpot-style Forget(source, source_id) ---------------------------------------------------


def test_platform_deletion_forget_by_source_id(engine, post_signed):
    ann = CustomerRef(source_id="512", email="ann@example.com", name="Ann Lee")
    tp = Touchpoint(source="hubspot", touchpoint_id="contact:512:created", occurred_at=NOW,
                    customer=ann, kind="contact_created", attributes={"firstname": "Ann"})
    with db.write(engine) as conn:
        inbox.store(conn, "hubspot", Normalised(touchpoints=(tp,)), delivery_id=None, now=NOW, actor="test")
    post_signed("generic", generic_tp("g", "g9", "ann@example.com"))
    post_signed("generic", generic_tp("h", "g10", "carl@example.com"))
    with db.write(engine) as conn:
        deletion = Forget("hubspot", "512", reason="contact.deletion")
        inbox.store(conn, "hubspot", Normalised(actions=(deletion,)), delivery_id=None, now=NOW,
                    actor="webhook")
    haystack = everything(engine)
    assert "ann" not in haystack and "carl@example.com" in haystack
    assert count(engine, "touchpoints") == 3
    with engine.connect() as conn:
        attrs = conn.execute(select(touchpoints.c.attributes).where(
            touchpoints.c.source == "hubspot")).scalar_one()
    assert attrs == {}


# --- Shopify shop/redact ------------------------------------------------------------------------


def test_shop_redact_erases_shopify_and_keeps_other_sources(world, shopify, post_signed, engine):
    post_signed("generic", generic_tp("z", "z1", "zed@example.com"))
    failed = shopify("orders/create", {"id": 1, "customer": {"id": "bob@biller.com"}})
    assert failed["status"] == "failed" and failed["error"]
    shopify("shop/redact", compliance_sample("shop_redact.json"))
    # the error may quote personal data, so it is gone; the failed delivery still says why
    with engine.connect() as conn:
        error = conn.execute(select(deliveries.c.error).where(
            deliveries.c.id == failed["delivery_id"])).scalar_one()
    assert "bob" not in error and "erased with everything from shopify (shopify shop/redact)" in error
    assert count(engine, "deliveries", "WHERE status IN ('failed', 'ignored') AND "
                                       "(error IS NULL OR error = '')") == 0
    assert count(engine, "touchpoints", "WHERE source = 'shopify'") == 0
    assert count(engine, "identities", "WHERE source = 'shopify'") == 0
    assert count(engine, "deliveries", "WHERE source = 'shopify' AND body IS NOT NULL") == 0
    assert count(engine, "deliveries", "WHERE source = 'generic' AND body IS NOT NULL") == 3
    assert count(engine, "outbox") == 0 and count(engine, "written_values") == 0
    haystack = everything(engine)
    assert "bob@biller.com" not in haystack and "zed@example.com" in haystack
    # John is also a generic contact: he keeps what that source knows, and his scores
    assert "john@example.com" in haystack
    with engine.connect() as conn:
        bob = conn.execute(select(customers).where(customers.c.id == world["bob"])).mappings().one()
        entry = conn.execute(select(audit_log).where(audit_log.c.action == "privacy_forget_all")
                             ).mappings().one()
    assert bob["email"] is None and bob["redacted_at"] is not None
    assert count(engine, "scores", f"WHERE customer_id = {world['bob']}") == 0
    assert count(engine, "scores", f"WHERE customer_id = {world['john']}") == 1
    assert entry["details"]["customers_erased"] >= 1 and entry["details"]["customers_kept"] == 1


# --- export ----------------------------------------------------------------------------------------


def test_data_request_export_holds_everything_about_the_person(world, shopify, engine, export_dir):
    shopify("customers/data_request", compliance_sample("customers_data_request.json"))
    [path] = list(export_dir.iterdir())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["request"] == {"record": "shopify:191167", "by_email": True,
                                   "email": "john@example.com", "request_id": "9999"}
    [person] = document["customers"]
    assert person["customer_id"] == world["john"]
    assert person["profile"]["email"] == "john@example.com" and person["profile"]["name"] == "John Smith"
    assert person["profile"]["phone"] == "5556251199"
    # the generic contact is the oldest customer, so it survived the merges; the Shopify
    # customer and the refund's order record were merged into it and keep their old rows
    assert [m["email"] for m in person["merged_records"]] == ["john@example.com", None]
    assert {(i["kind"], i["value"]) for i in person["identities"]} >= {
        ("email", "john.smith@work.example"),
        ("email", "john@example.com"), ("id", "115310627314723954"), ("id", "603851970716743426"),
        ("id", "order:820982911946154508"), ("phone", "5556251199"), ("id", "g1")}
    assert {t["touchpoint_id"] for t in person["touchpoints"]} == {
        "g:1", "g:2", "checkout:123123123:started", "refund:890088186047892319:issued",
        "order:820982911946154508:placed"}
    assert person["scores"][0]["score_values"] == {"cx_score": 80}
    assert person["write_back"][0]["external_id"] == "115310627314723954"
    assert person["written_values"][0]["value"] == 70
    topics = {(d["topic"], d["status"]) for d in document["raw_deliveries"]}
    assert {("orders/updated", "ignored"), ("orders/create", "failed"),
            ("customers/update", "processed"),  # no touchpoint, but his contact details
            ("customers/data_request", "processed")} <= topics  # the request itself
    assert all(d["body"] for d in document["raw_deliveries"])
    assert "bob@biller.com" not in path.read_text()
    with engine.connect() as conn:
        entry = conn.execute(select(audit_log).where(audit_log.c.action == "privacy_export")).mappings().one()
    assert entry["details"]["file"] == path.name and entry["details"]["request_id"] == "9999"
    assert entry["details"]["customers"] == [world["john"]]


def test_export_of_an_unknown_person_says_nothing_is_held(engine, export_dir):
    with db.write(engine) as conn:
        path, document = privacy.export(conn, privacy.Target(email="nobody@example.com"), now=NOW,
                                        actor="test", export_dir=export_dir)
    assert path.name == "export-20260615T120000Z-manual-no-match.json"
    assert document["customers"] == [] and document["raw_deliveries"] == []
    with db.write(engine) as conn:
        again, _ = privacy.export(conn, privacy.Target(email="nobody@example.com"), now=NOW,
                                  actor="test", export_dir=export_dir)
    assert again.name == "export-20260615T120000Z-manual-no-match-1.json"  # never overwritten


# --- webhook privacy requests are queued for the clock ---------------------------------------------


@pytest.fixture
def post_raw(client):
    """POST a Shopify webhook and return its answer as given (no clock run)."""
    def post(topic, body, webhook_id=None):
        body = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = shopify_headers(topic, body, **({"X-Shopify-Webhook-Id": webhook_id} if webhook_id else {}))
        r = client.post("/webhooks/shopify", data=body, headers=headers)
        assert r.status_code == 200, r.get_json()
        return r.get_json()
    return post


def delivery(engine, delivery_id):
    with engine.connect() as conn:
        return conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).mappings().one()


def test_a_webhook_erasure_is_answered_queued_and_erases_nothing_until_the_clock(world, post_raw, engine, rt):
    before = everything(engine)
    out = post_raw("customers/redact", compliance_sample("customers_redact.json"))
    assert (out["status"], out["touchpoints"]) == ("queued", 0)
    row = delivery(engine, out["delivery_id"])
    assert (row["status"], row["error"], row["redacted_at"]) == ("queued", None, None)
    assert row["body"] is not None  # the request is read from it by the clock
    assert all(n.lower() in everything(engine) for n in JOHN)  # nothing erased yet
    assert count(engine, "audit_log", "WHERE action = 'privacy_forget'") == 0
    assert len(everything(engine)) > len(before)  # only the queued delivery was added

    [job] = [j for j in scheduler.jobs() if j.id == "privacy"]
    assert job.every(rt.config) == timedelta(minutes=1) and job.func is inbox.privacy_job
    run = scheduler.run_job(rt, job.id, job.func, lease=job.lease or None)
    assert (run["status"], run["details"]) == ("ok", {"queued": 1, "processed": 1, "failed_ids": []})
    row = delivery(engine, out["delivery_id"])
    assert (row["status"], row["error"], row["body"]) == ("processed", None, None)  # its own body erased
    assert row["attempts"] == 2 and row["redacted_at"] is not None
    assert [n for n in JOHN if n.lower() in everything(engine)] == []
    assert count(engine, "audit_log", "WHERE action = 'privacy_forget' AND actor = 'webhook'") >= 1


def test_the_clock_applies_each_queued_request_once_oldest_first(world, post_raw, engine, rt, export_dir):
    first = post_raw("customers/data_request", compliance_sample("customers_data_request.json"))
    second = post_raw("customers/redact", compliance_sample("customers_redact.json"), "w-redact")
    assert first["status"] == second["status"] == "queued"
    assert inbox.privacy_job(rt) == {"queued": 2, "processed": 2, "failed_ids": []}
    # the export ran before the erasure: it holds John
    [path] = list(export_dir.iterdir())
    assert "john@example.com" in path.read_text()
    audits = count(engine, "audit_log", "WHERE action LIKE 'privacy_%'")
    assert inbox.privacy_job(rt) == {"queued": 0, "failed_ids": []}
    assert scheduler.run_job(rt, "privacy", inbox.privacy_job)["details"] == {"queued": 0, "failed_ids": []}
    assert count(engine, "audit_log", "WHERE action LIKE 'privacy_%'") == audits
    assert len(list(export_dir.iterdir())) == 1
    assert {delivery(engine, d["delivery_id"])["attempts"] for d in (first, second)} == {2}
    # the same request delivered again is a duplicate: not queued twice
    again = post_raw("customers/redact", compliance_sample("customers_redact.json"), "w-redact")
    assert again["status"] == "duplicate"
    assert count(engine, "deliveries", "WHERE status = 'queued'") == 0


def test_a_failing_request_is_failed_with_its_reason_and_replayable(world, post_raw, engine, rt, export_dir,
                                                                     cli):
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    export_dir.write_text("not a directory")  # the export cannot be written
    out = post_raw("customers/data_request", compliance_sample("customers_data_request.json"))
    assert inbox.privacy_job(rt) == {"queued": 1, "failed": 1, "failed_ids": [out["delivery_id"]]}
    row = delivery(engine, out["delivery_id"])
    assert row["status"] == "failed" and row["body"] is not None
    assert row["error"].startswith("could not apply the privacy request: FileExistsError"), row["error"]
    assert count(engine, "audit_log", "WHERE action = 'privacy_export'") == 0  # rolled back
    assert inbox.privacy_job(rt) == {"queued": 0, "failed_ids": []}  # failed is not retried by the clock

    export_dir.unlink()  # the cause fixed: a replay applies it at once
    r = cli("events", "replay", str(out["delivery_id"]))
    assert r.exit_code == 0 and f"delivery {out['delivery_id']}: processed" in r.output, r.output
    assert delivery(engine, out["delivery_id"])["status"] == "processed"
    [path] = list(export_dir.iterdir())
    assert "john@example.com" in path.read_text()


def test_a_queued_request_replayed_by_hand_is_applied_at_once(world, post_raw, engine, rt, cli):
    out = post_raw("customers/redact", compliance_sample("customers_redact.json"))
    r = cli("events", "list", "--queued")
    assert r.exit_code == 0 and "customers/redact" in r.output and "queued" in r.output, r.output
    r = cli("events", "replay", str(out["delivery_id"]))
    assert r.exit_code == 0, r.output
    assert [n for n in JOHN if n.lower() in everything(engine)] == []
    assert delivery(engine, out["delivery_id"])["status"] == "processed"
    assert inbox.privacy_job(rt) == {"queued": 0, "failed_ids": []}  # nothing left for the clock


def test_a_queued_request_whose_body_an_earlier_erasure_emptied_is_failed_not_lost(world, post_raw, engine,
                                                                                    rt):
    first = post_raw("customers/redact", compliance_sample("customers_redact.json"))
    second = post_raw("customers/redact", compliance_sample("customers_redact.json"), "w-redact-again")
    assert first["status"] == second["status"] == "queued"
    assert inbox.privacy_job(rt) == {"queued": 2, "processed": 1, "failed": 1,
                                     "failed_ids": [second["delivery_id"]]}
    row = delivery(engine, second["delivery_id"])
    assert row["status"] == "failed" and row["error"] == inbox.ERASED_BEFORE
    assert [n for n in JOHN if n.lower() in everything(engine)] == []


# --- the command line ------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path, database_url, export_dir):
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(json.dumps({"database_url": database_url,
                               "privacy": {"export_dir": str(export_dir)},
                               "connectors": {k: TEST_CONNECTORS[k] for k in ("generic", "shopify")}}))

    def run(*args, input=None):
        return CliRunner().invoke(main, ["--config", str(cfg), *args], input=input,
                                  catch_exceptions=False)
    return run


def test_cli_forget_asks_first_and_erases_on_yes(world, cli, engine):
    r = cli("forget", "john@example.com", input="n\n")
    assert r.exit_code == 1 and "Aborted" in r.output
    assert "john@example.com" in everything(engine)
    assert "john@example.com: 1 customer (1), 5 platform records, 5 touchpoints to anonymise, 8 raw " \
        "deliveries to erase" in r.output
    r = cli("forget", "john@example.com", input="y\n")
    assert r.exit_code == 0 and "erased: " in r.output
    assert [n for n in JOHN if n.lower() in everything(engine)] == []
    with engine.connect() as conn:
        entry = conn.execute(select(audit_log).where(audit_log.c.action == "privacy_forget")).mappings().one()
    assert entry["actor"] == "cli" and entry["details"]["reason"] == "erasure request"


@pytest.mark.parametrize("who", ["shopify:603851970716743426", "555 625 1199", "{john}"])
def test_cli_forget_by_record_phone_or_customer_id(world, cli, engine, who):
    who = who.format(john=world["john"])
    r = cli("forget", who, "--yes")
    assert r.exit_code == 0, r.output
    assert "john@example.com" not in everything(engine)


def test_cli_forget_of_someone_unknown_says_so(cli, engine):
    r = cli("forget", "nobody@example.com", "--yes")
    assert r.exit_code == 0 and "nothing is held about nobody@example.com" in r.output
    with engine.connect() as conn:
        entry = conn.execute(select(audit_log)).mappings().one()
    assert entry["action"] == "privacy_forget" and entry["details"]["customers"] == []
    assert entry["details"]["request"] == {"by_email": True}


def test_cli_export_to_the_export_dir_to_a_file_and_to_stdout(world, cli, export_dir, tmp_path):
    r = cli("export", "shopify:115310627314723954", "--request-id", "T-1")
    assert r.exit_code == 0 and "exported 1 customer, 5 touchpoints, 8 raw deliveries to " in r.output
    [path] = list(export_dir.iterdir())
    assert re.fullmatch(r"export-\d{8}T\d{6}Z-shopify-request-T-1\.json", path.name)
    assert json.loads(path.read_text())["customers"][0]["profile"]["email"] == "john@example.com"
    out = tmp_path / "for-john.json"
    assert cli("export", "john@example.com", "--output", str(out)).exit_code == 0
    assert json.loads(out.read_text())["request"]["email"] == "john@example.com"
    assert cli("export", "john@example.com", "--output", str(out)).exit_code == 2  # never overwrites
    r = cli("export", "john@example.com", "--output", "-")
    assert json.loads(r.output)["customers"][0]["customer_id"] == world["john"]


# --- the parts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,personal", [
    ("contact_email", True), ("firstName", True), ("last_name", True), ("phone", True),
    ("billing_address", True), ("note", True), ("ip", True), ("order_id", False), ("via", False),
    ("checkout_token", False), ("author", False), ("reason", False), ("ticket_id", False),
    ("lifecycle_stage", False), ("shipping", False),
])
def test_personal_attribute_keys(key, personal):
    assert privacy.personal_key(key) is personal


@pytest.mark.parametrize("ref,target", [
    ("42", privacy.Target(customer_id=42)),
    ("Ann@Example.com", privacy.Target(email="ann@example.com")),
    ("shopify:7064", privacy.Target(source="shopify", source_id="7064")),
    ("hubspot:deal:1", privacy.Target(source="hubspot", source_id="deal:1")),
    ("+1 (555) 625-1199", privacy.Target(phone="+15556251199")),
])
def test_what_an_admin_types(ref, target):
    assert privacy.target_from_ref(ref) == target


def test_export_dir_reaches_webhook_transactions_through_the_engine(rt, export_dir):
    assert rt.engine.get_execution_options()[privacy.EXPORT_DIR_OPTION] == str(export_dir)
    assert make_config("sqlite://").privacy.export_dir == "exports"
    assert make_config("sqlite://").checkouts.abandon_after == timedelta(hours=6)


def test_scrubber_replaces_the_persons_values_inside_text_and_drops_personal_keys():
    person = privacy.Person(emails={"ann@example.com"}, phones={"5556251199"}, names={"Ann Lee"})
    scrub = privacy.Scrubber(person)
    value = {"contactEmail": "ann@example.com", "via": "email", "reason": "other",
             "summary": "ANN@example.com wrote; call +1 (555) 625-1199, not 2022-01-01",
             "items": [{"title": "Lee's mug", "last_name": "Lee"}], "count": 3}
    assert scrub.json(value, drop_personal_keys=True) == {
        "via": "email", "reason": "other",
        "summary": "[redacted] wrote; call [redacted], not 2022-01-01",
        "items": [{"title": "[redacted]'s mug"}], "count": 3}
