"""The outbox: score changes waiting to be written to the platforms.

Scoring calls :func:`enqueue` (one customer) or :func:`enqueue_many` (a batch, a
few queries per 500 customers, same result) inside its transaction; a change
therefore becomes a pending write atomically with the snapshot that caused it, and
nothing is lost between "scored" and "sent". One pending write per platform record holds only the
fields whose value differs from the value last *successfully* written to that
record (``written_values``); nothing changed, no row, no request.

The sending side (claim, batch, send, mark done / retry / dead) is in
:mod:`cx_connector.sync`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from cx_connector.connector import Connector
from cx_connector.db import json_dumps
from cx_connector.db import raw_many as _raw_many  # hot-path helpers (see cx_connector.db)
from cx_connector.db import raw_rows as _rows
from cx_connector.db import stored_time as _time
from cx_connector.fields import FIELDS, canonical, canonical_values
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
        # locked (PostgreSQL) until we commit: a sync worker skips it rather than sending
        # it and marking it done before our new value is stored into it (see enqueue_many)
        pending = conn.execute(select(outbox.c.id, outbox.c.fields, outbox.c.previous).where(
            outbox.c.source == source, outbox.c.external_id == external_id,
            outbox.c.status == "pending").order_by(outbox.c.id.desc()).limit(1)
            .with_for_update()).first()
        flying: dict[str, Any] = {}
        for fields in conn.execute(select(outbox.c.fields).where(
                outbox.c.source == source, outbox.c.external_id == external_id,
                outbox.c.status == "in_flight").order_by(outbox.c.id)).scalars():
            flying.update(fields or {})
        result = _changes(new, last, pending, flying)
        if result is None:
            continue
        fields, previous = result
        if pending is not None:
            conn.execute(update(outbox).where(outbox.c.id == pending.id).values(
                fields=fields, previous=previous, customer_id=customer_id, updated_at=now))
        else:
            conn.execute(outbox.insert().values(
                customer_id=customer_id, source=source, external_id=external_id, fields=fields,
                previous=previous, status="pending", attempts=0, next_attempt_at=now,
                created_at=now, updated_at=now))
        queued += 1
    return queued


#: customers per batch in :func:`enqueue_many` (bounded ``IN`` lists)
BATCH = 500
#: fields that are only written along with another change (see ScoreField.piggyback)
_PIGGYBACK = frozenset(name for name, f in FIELDS.items() if f.piggyback)


def _changes(new: dict[str, Any], last: dict[str, Any], pending: Any,
             flying: dict[str, Any] | None = None) -> tuple[dict, dict] | None:
    """What :func:`enqueue` writes for one record: ``(fields, previous)``, or None for nothing.

    ``flying``: the fields of the record's write a sync worker is sending right now. They
    count as on the record (as a pending write's do): a value already on its way is not
    queued a second time, which would send the platform the same write twice. Should
    that write fail instead, it goes back to pending and is sent again, so nothing is lost.
    """
    flying = flying or {}
    if not last and pending is None and not flying:  # never written to: every value that is set
        fields = {f: v for f, v in new.items() if v is not None}
        if fields.keys() <= _PIGGYBACK:
            return None
        return fields, dict.fromkeys(fields)
    base = {**last, **flying}
    if pending is not None:
        base.update(pending.fields)  # what the record will hold once the pending write lands
    changed = {f: v for f, v in new.items() if not FIELDS[f].piggyback and base.get(f) != v}
    if not changed:
        return None
    changed.update({f: v for f, v in new.items() if FIELDS[f].piggyback and base.get(f) != v})
    if pending is None:
        return changed, {f: last.get(f) for f in changed}
    fields = {**pending.fields, **changed}
    previous = {**{f: last.get(f) for f in changed}, **pending.previous}
    # a field that went back to the value already on the record (and not about to be
    # overwritten by the write in flight) needs no write
    landing = {**last, **flying}
    fields = {f: v for f, v in fields.items() if landing.get(f) != v or f not in landing}
    return fields, {f: previous.get(f) for f in fields}


def _canonical_cached(values: Mapping[str, Any], memo: dict[tuple[str, type, Any], Any]) -> dict[str, Any]:
    """:func:`canonical_values` with a memo: scores repeat (0-100, a few options), and the
    canonical form costs a Decimal round trip per value."""
    out = {}
    for name, value in values.items():
        if name not in FIELDS:
            continue
        try:
            key = (name, type(value), value)
            out[name] = memo[key]
        except KeyError:
            out[name] = memo[key] = canonical(name, value)
        except TypeError:  # unhashable: no memo
            out[name] = canonical(name, value)
    return out


def enqueue_many(conn: Connection, connectors: Mapping[str, Connector],
                 items: Iterable[tuple[int, Mapping[str, Any]]], *, now: datetime,
                 canonical_input: bool = False, encoded: Sequence[str] | None = None) -> int:
    """:func:`enqueue` for many customers at once: the same pending writes, in a few
    queries per :data:`BATCH` customers instead of a few per customer (the daily
    full scoring pass queues changes for up to every customer).

    ``items``: ``(customer_id, values)``, each customer at most once.
    ``canonical_input``: the values are already canonical (as scoring makes them:
    ``canonical(name, v) == v``), so they are not converted again.
    ``encoded`` (with ``canonical_input``): for each item, :func:`json_dumps` of its
    values without the ``None`` ones, which is what the first write of a record
    holds; scoring builds them column by column, cheaper than per dict. Returns the
    number of records that got (or had updated) a pending write.
    """
    items = list(items)
    if encoded is not None and (not canonical_input or len(encoded) != len(items)):
        raise ValueError("enqueue_many: encoded needs canonical_input and one text per item")
    if len({cid for cid, _ in items}) != len(items):
        raise ValueError("enqueue_many: a customer appears more than once; merge its values first")
    sqlite = conn.dialect.name == "sqlite"

    def stored(value: Any) -> Any:
        """A JSON column's value: psycopg parses it; SQLite hands back the text, except
        numbers, which the column's numeric affinity already turned into numbers."""
        return json.loads(value) if sqlite and isinstance(value, str) else value

    queued = 0
    memo: dict[tuple[str, type, Any], Any] = {}
    nulls: dict[tuple[str, ...], str] = {}
    # only the identities of platforms that take writes are read
    sources = sorted(name for name, c in connectors.items() if c.writes_back)
    if not sources:
        return 0
    in_sources = ", ".join("?" * len(sources))
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        records: dict[int, list[tuple[str, str]]] = {cid: [] for cid, _ in chunk}
        listed = ", ".join(str(int(cid)) for cid in records)  # integers: customer ids
        for cid, source, value in _rows(conn, (
                f"SELECT customer_id, source, value FROM identities WHERE customer_id IN ({listed}) "
                f"AND kind = 'id' AND source IN ({in_sources}) AND gone_at IS NULL ORDER BY id"), sources):
            if connectors[source].writable_record(value):
                records[cid].append((source, value))
        keys = [k for recs in records.values() for k in recs]
        if not keys:
            continue
        last: dict[tuple[str, str], dict[str, Any]] = {k: {} for k in keys}
        pending: dict[tuple[str, str], Any] = {}
        flying: dict[tuple[str, str], dict[str, Any]] = {}
        by_source: dict[str, list[str]] = {}
        for source, ext in keys:
            by_source.setdefault(source, []).append(ext)
        for source, exts in by_source.items():
            marks = ", ".join("?" * len(exts))
            for ext, field, value in _rows(conn, (
                    f"SELECT external_id, field, value FROM written_values WHERE source = ? "
                    f"AND external_id IN ({marks})"), [source, *exts]):
                if (source, ext) in last:
                    last[(source, ext)][field] = stored(value)
            # status || '' keeps SQLite (without statistics) on the (source, external_id) index
            # rather than the status index, which would read every pending write of the outbox.
            # FOR UPDATE (PostgreSQL; SQLite has one writer at a time anyway): the pending
            # writes we are about to change stay ours until we commit. Unlocked, a sync worker
            # could claim, send and mark one done in between, and the new value, stored
            # into a write already done, would never be sent. A write a worker has just
            # claimed is no longer pending when our lock wait ends: a new write is queued.
            for row_id, ext, fields, previous in _rows(conn, (
                    f"SELECT id, external_id, fields, previous FROM outbox WHERE source = ? "
                    f"AND external_id IN ({marks}) AND status || '' = 'pending' ORDER BY id"
                    + ("" if sqlite else " FOR UPDATE")), [source, *exts]):
                # the newest wins, as in enqueue
                pending[(source, ext)] = _Pending(row_id, stored(fields), stored(previous))
            # writes a sync worker is sending right now (see _changes); read, not locked
            for ext, fields in _rows(conn, (
                    f"SELECT external_id, fields FROM outbox WHERE source = ? "
                    f"AND external_id IN ({marks}) AND status || '' = 'in_flight' ORDER BY id"),
                    [source, *exts]):
                if (source, ext) in last:
                    flying.setdefault((source, ext), {}).update(stored(fields) or {})
        inserts: list[tuple] = []
        updates: list[tuple] = []
        for k, (cid, values) in enumerate(chunk, start):
            if canonical_input:
                new = values if values.keys() <= FIELDS.keys() else {
                    k: v for k, v in values.items() if k in FIELDS}
            else:
                new = _canonical_cached(values, memo)
            for key in records[cid]:
                row = pending.get(key)
                if encoded is not None and row is None and not last[key] and not flying.get(key):
                    # a record never written to, nothing queued or sent (as in _changes):
                    # every value that is set, with all-null previous values; the names
                    # decide both, so the JSON of the latter is made once per set of names
                    names = tuple(f for f, v in new.items() if v is not None)
                    if _PIGGYBACK.issuperset(names):
                        continue
                    previous_json = nulls.get(names) or nulls.setdefault(
                        names, json_dumps(dict.fromkeys(names)))
                    inserts.append((cid, key[0], key[1], encoded[k], previous_json))
                    queued += 1
                    continue
                result = _changes(new, last[key], row, flying.get(key))
                if result is None:
                    continue
                fields, previous = result
                olds = list(previous.values())
                if olds.count(None) == len(olds):  # the usual first write: cached
                    names = tuple(previous)
                    previous_json = nulls.get(names) or nulls.setdefault(names, json_dumps(previous))
                else:
                    previous_json = json_dumps(previous)
                if row is not None:
                    updates.append((json_dumps(fields), previous_json, cid, row.id))
                else:
                    inserts.append((cid, key[0], key[1], json_dumps(fields), previous_json))
                queued += 1
        at = _time(conn, now)
        if inserts:
            _raw_many(conn, "INSERT INTO outbox (customer_id, source, external_id, fields, previous, status, "
                            "attempts, next_attempt_at, created_at, updated_at) "
                            "VALUES (?, ?, ?, ?j, ?j, 'pending', 0, ?, ?, ?)",
                      [(*r, at, at, at) for r in inserts])
        if updates:
            _raw_many(conn, "UPDATE outbox SET fields = ?j, previous = ?j, customer_id = ?, updated_at = ? "
                            "WHERE id = ?", [(f, p, c, at, i) for f, p, c, i in updates])
    return queued


@dataclass(frozen=True)
class _Pending:
    id: int
    fields: dict[str, Any]
    previous: dict[str, Any]
