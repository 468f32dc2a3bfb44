"""Outbox enqueue: only changed fields, one pending write per record, nothing when unchanged."""

from __future__ import annotations

from sqlalchemy import select

from cx_connector import db, outbox
from cx_connector.connector import Connector, CustomerRef
from cx_connector.identity import resolve
from cx_connector.models import identities, written_values
from cx_connector.models import outbox as outbox_t
from tests.conftest import NOW


class Writable(Connector):
    name = "crm"
    writes_back = True

    def writable_record(self, source_id):
        return not source_id.startswith("deal:")


CONNECTORS = {"crm": Writable(None)}


def customer(engine):
    with db.write(engine) as conn:
        cid = resolve(conn, "crm", [(CustomerRef("7", email="a@example.com"), NOW)], now=NOW)["7"]
        resolve(conn, "crm", [(CustomerRef("deal:9", email="a@example.com"), NOW)], now=NOW)
    return cid


def queued(engine):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(outbox_t).order_by(outbox_t.c.id)).mappings()]


def enqueue(engine, cid, values):
    with db.write(engine) as conn:
        return outbox.enqueue(conn, CONNECTORS, cid, values, now=NOW)


def test_changed_fields_only_and_merged_into_one_pending_write(engine):
    cid = customer(engine)
    assert enqueue(engine, cid, {"cx_score": 71.4, "cx_health": "green", "cx_scored_at": NOW}) == 1
    rows = queued(engine)
    assert len(rows) == 1 and rows[0]["external_id"] == "7"  # the deal is not writable
    assert rows[0]["fields"] == {"cx_score": 71, "cx_health": "green", "cx_scored_at": "2026-06-15T12:00:00Z"}
    assert enqueue(engine, cid, {"cx_score": 80, "cx_health": "green"}) == 1
    rows = queued(engine)
    assert len(rows) == 1 and rows[0]["fields"]["cx_score"] == 80


def test_nothing_changed_since_last_write_means_no_write(engine):
    cid = customer(engine)
    with db.write(engine) as conn:
        conn.execute(written_values.insert(), [
            {"source": "crm", "external_id": "7", "field": "cx_score", "value": 71, "written_at": NOW},
            {"source": "crm", "external_id": "7", "field": "cx_scored_at", "value": "x", "written_at": NOW}])
    assert enqueue(engine, cid, {"cx_score": 71.2, "cx_scored_at": NOW}) == 0  # scored_at alone: no write
    assert queued(engine) == []
    assert enqueue(engine, cid, {"cx_score": 72, "cx_scored_at": NOW}) == 1
    row = queued(engine)[0]
    assert row["fields"] == {"cx_score": 72, "cx_scored_at": "2026-06-15T12:00:00Z"}
    assert row["previous"] == {"cx_score": 71, "cx_scored_at": "x"}


def test_gone_records_get_no_writes(engine):
    cid = customer(engine)
    with db.write(engine) as conn:
        conn.execute(identities.update().where(identities.c.value == "7").values(gone_at=NOW))
    assert enqueue(engine, cid, {"cx_score": 50}) == 0


def _outbox_after(engine, do):
    """Rows the outbox holds after ``do(conn)``, rolled back afterwards."""
    with engine.connect() as conn:
        trans = conn.begin()
        queued = do(conn)
        rows = [{k: v for k, v in r.items() if k != "id"}
                for r in conn.execute(select(outbox_t).order_by(outbox_t.c.source, outbox_t.c.external_id,
                                                                 outbox_t.c.id)).mappings()]
        trans.rollback()
    return queued, rows


def test_enqueue_many_queues_exactly_what_enqueue_does(engine):
    from cx_connector.models import identities as idents
    connectors = {"crm": Writable(None), "shop": type("Shop", (Writable,), {"name": "shop"})(None)}
    with db.write(engine) as conn:
        a = resolve(conn, "crm", [(CustomerRef("7", email="a@example.com"), NOW)], now=NOW)["7"]
        resolve(conn, "crm", [(CustomerRef("deal:9", email="a@example.com"), NOW)], now=NOW)
        resolve(conn, "shop", [(CustomerRef("s7", email="a@example.com"), NOW)], now=NOW)
        b = resolve(conn, "crm", [(CustomerRef("8", email="b@example.com"), NOW)], now=NOW)["8"]
        c = resolve(conn, "crm", [(CustomerRef("10", email="c@example.com"), NOW)], now=NOW)["10"]
        d = resolve(conn, "crm", [(CustomerRef("11", email="d@example.com"), NOW)], now=NOW)["11"]
        e = resolve(conn, "crm", [(CustomerRef("12", email="e@example.com"), NOW)], now=NOW)["12"]
        conn.execute(idents.update().where(idents.c.value == "12").values(gone_at=NOW))
        conn.execute(written_values.insert(), [
            {"source": "crm", "external_id": "8", "field": "cx_score", "value": 50, "written_at": NOW},
            {"source": "crm", "external_id": "8", "field": "cx_health", "value": "green", "written_at": NOW},
            {"source": "crm", "external_id": "10", "field": "cx_score", "value": 40, "written_at": NOW}])
        # a pending write on 10 whose score goes back to what the record already holds
        outbox.enqueue(conn, connectors, c, {"cx_score": 60, "cx_csat": 80}, now=NOW)
    items = [(a, {"cx_score": 71.4, "cx_health": "green", "cx_scored_at": NOW}),
             (b, {"cx_score": 50, "cx_health": "red", "cx_nps_category": None, "cx_scored_at": NOW}),
             (c, {"cx_score": 40, "cx_csat": 80, "cx_scored_at": NOW}),
             (d, {"cx_scored_at": NOW}),                   # only the piggyback field: nothing
             (e, {"cx_score": 1})]                         # record gone: nothing

    def one_by_one(conn):
        return sum(outbox.enqueue(conn, connectors, cid, values, now=NOW) for cid, values in items)

    def at_once(conn):
        return outbox.enqueue_many(conn, connectors, items, now=NOW)

    expected = _outbox_after(engine, one_by_one)
    assert expected[0] == 4  # crm:7, shop:s7, crm:8, crm:10
    assert _outbox_after(engine, at_once) == expected
    rows = {r["external_id"]: r for r in expected[1]}
    assert rows["8"]["fields"] == {"cx_health": "red", "cx_scored_at": "2026-06-15T12:00:00Z"}
    assert rows["10"]["fields"] == {"cx_csat": 80, "cx_scored_at": "2026-06-15T12:00:00Z"}


def test_enqueue_many_refuses_a_customer_twice(engine):
    import pytest
    cid = customer(engine)
    with db.write(engine) as conn, pytest.raises(ValueError, match="more than once"):
        outbox.enqueue_many(conn, CONNECTORS, [(cid, {"cx_score": 1}), (cid, {"cx_score": 2})], now=NOW)


def test_enqueue_many_with_canonical_input_trusts_the_values(engine):
    cid = customer(engine)
    values = {"cx_score": 71, "cx_expected_purchases_90d": 1.25, "cx_health": "green",
              "cx_scored_at": "2026-06-15T12:00:00Z"}

    def trusted(conn):
        return outbox.enqueue_many(conn, CONNECTORS, [(cid, values)], now=NOW, canonical_input=True)

    def converted(conn):
        return outbox.enqueue_many(conn, CONNECTORS, [(cid, values)], now=NOW)

    assert _outbox_after(engine, trusted) == _outbox_after(engine, converted)


def test_encoded_texts_need_canonical_input_and_one_per_item(engine):
    import pytest

    with db.write(engine) as conn, pytest.raises(ValueError, match="encoded needs canonical_input"):
        outbox.enqueue_many(conn, {}, [(1, {"cx_score": 1})], now=NOW, encoded=["{}"])


def test_enqueue_many_with_encoded_first_writes_queues_what_enqueue_does(engine):
    """Records never written to take the encoded text (and all-null previous values) without
    a diff; records with written values, a pending or an in-flight write are diffed as ever."""
    from cx_connector.models import identities as idents
    connectors = {"crm": Writable(None), "shop": type("Shop", (Writable,), {"name": "shop"})(None)}
    stamp = "2026-06-15T12:00:00Z"
    with db.write(engine) as conn:
        a = resolve(conn, "crm", [(CustomerRef("7", email="a@example.com"), NOW)], now=NOW)["7"]
        resolve(conn, "shop", [(CustomerRef("s7", email="a@example.com"), NOW)], now=NOW)
        b = resolve(conn, "crm", [(CustomerRef("8", email="b@example.com"), NOW)], now=NOW)["8"]
        c = resolve(conn, "crm", [(CustomerRef("10", email="c@example.com"), NOW)], now=NOW)["10"]
        d = resolve(conn, "crm", [(CustomerRef("11", email="d@example.com"), NOW)], now=NOW)["11"]
        e = resolve(conn, "crm", [(CustomerRef("12", email="e@example.com"), NOW)], now=NOW)["12"]
        f = resolve(conn, "crm", [(CustomerRef("13", email="f@example.com"), NOW)], now=NOW)["13"]
        conn.execute(idents.update().where(idents.c.value == "12").values(gone_at=NOW))
        conn.execute(written_values.insert(), [
            {"source": "crm", "external_id": "8", "field": "cx_score", "value": 50, "written_at": NOW}])
        outbox.enqueue(conn, connectors, c, {"cx_score": 60, "cx_csat": 80}, now=NOW)   # pending
        outbox.enqueue(conn, connectors, f, {"cx_score": 30, "cx_health": "red"}, now=NOW)
        conn.execute(outbox_t.update().where(outbox_t.c.external_id == "13").values(status="in_flight"))
    items = [(a, {"cx_score": 71, "cx_health": "green", "cx_nps_last": None, "cx_scored_at": stamp}),
             (b, {"cx_score": 50, "cx_health": "red", "cx_scored_at": stamp}),
             (c, {"cx_score": 40, "cx_csat": 80, "cx_scored_at": stamp}),
             (d, {"cx_nps_last": None, "cx_scored_at": stamp}),   # only the piggyback field: nothing
             (e, {"cx_score": 1, "cx_scored_at": stamp}),         # record gone: nothing
             (f, {"cx_score": 30, "cx_health": "green", "cx_scored_at": stamp})]  # in flight: the change only
    encoded = [db.json_dumps({k: v for k, v in values.items() if v is not None}) for _, values in items]

    def one_by_one(conn):
        return sum(outbox.enqueue(conn, connectors, cid, values, now=NOW) for cid, values in items)

    def at_once(conn):
        return outbox.enqueue_many(conn, connectors, items, now=NOW, canonical_input=True, encoded=encoded)

    expected = _outbox_after(engine, one_by_one)
    assert expected[0] == 5  # crm:7, shop:s7, crm:8, crm:10, crm:13
    assert _outbox_after(engine, at_once) == expected
    rows = {r["external_id"]: r for r in expected[1] if r["status"] == "pending"}
    assert rows["7"]["fields"] == {"cx_score": 71, "cx_health": "green", "cx_scored_at": stamp}
    assert rows["7"]["previous"] == {"cx_score": None, "cx_health": None, "cx_scored_at": None}
    assert rows["13"]["fields"] == {"cx_health": "green", "cx_scored_at": stamp}
