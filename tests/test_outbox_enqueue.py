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
