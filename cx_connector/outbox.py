"""The outbox: score changes waiting to be written to the platforms.

Scoring calls :func:`enqueue` inside its transaction; a change therefore becomes a
pending write atomically with the snapshot that caused it, and nothing is lost
between "scored" and "sent". One pending write per platform record holds only the
fields whose value differs from the value last *successfully* written to that
record (``written_values``); nothing changed, no row, no request.

The sending side (claim, batch, send, mark done / retry / dead) is in
:mod:`cx_connector.sync`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from cx_connector.connector import Connector
from cx_connector.fields import FIELDS, canonical_values
from cx_connector.models import identities, outbox, written_values


def writable_records(conn: Connection, connectors: Mapping[str, Connector],
                     customer_id: int) -> list[tuple[str, str]]:
    """``(source, external_id)`` of the customer's records that scores can be written to."""
    rows = conn.execute(select(identities.c.source, identities.c.value).where(
        identities.c.customer_id == customer_id, identities.c.kind == "id",
        identities.c.gone_at.is_(None)).order_by(identities.c.id)).all()
    out = []
    for source, value in rows:
        connector = connectors.get(source)
        if connector is not None and connector.writes_back and connector.writable_record(value):
            out.append((source, value))
    return out


def enqueue(conn: Connection, connectors: Mapping[str, Connector], customer_id: int,
            values: Mapping[str, Any], *, now: datetime) -> int:
    """Queue the changed score fields of one customer for each of its platform records.

    Returns the number of records that got (or had updated) a pending write.
    """
    new = canonical_values(dict(values))
    queued = 0
    for source, external_id in writable_records(conn, connectors, customer_id):
        last = dict(conn.execute(select(written_values.c.field, written_values.c.value).where(
            written_values.c.source == source, written_values.c.external_id == external_id)).all())
        pending = conn.execute(select(outbox.c.id, outbox.c.fields, outbox.c.previous).where(
            outbox.c.source == source, outbox.c.external_id == external_id,
            outbox.c.status == "pending").order_by(outbox.c.id.desc()).limit(1)).first()
        base = dict(last)
        if pending is not None:
            base.update(pending.fields)  # what the record will hold once the pending write lands
        changed = {f: v for f, v in new.items()
                   if not FIELDS[f].piggyback and base.get(f) != v}
        if not changed:
            continue
        changed.update({f: v for f, v in new.items()
                        if FIELDS[f].piggyback and base.get(f) != v})
        if pending is not None:
            fields = {**pending.fields, **changed}
            previous = {**{f: last.get(f) for f in changed}, **pending.previous}
            # a field that went back to the value already on the record needs no write
            fields = {f: v for f, v in fields.items() if last.get(f) != v or f not in last}
            conn.execute(update(outbox).where(outbox.c.id == pending.id).values(
                fields=fields, previous={f: previous.get(f) for f in fields},
                customer_id=customer_id, updated_at=now))
        else:
            conn.execute(outbox.insert().values(
                customer_id=customer_id, source=source, external_id=external_id, fields=changed,
                previous={f: last.get(f) for f in changed}, status="pending", attempts=0,
                next_attempt_at=now, created_at=now, updated_at=now))
        queued += 1
    return queued
