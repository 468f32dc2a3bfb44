"""Bulk reads and writes of scoring results: ``scores``, ``score_snapshots``, ``customers.scored_at``
(and the run's ``score_contexts`` row).

They go through the DBAPI cursor of the caller's transaction with JSON serialised
once by the caller, because a full pass writes 100,000 rows to each of these
tables and SQLAlchemy's per-row parameter processing would cost more than the
scoring itself. The SQL is the same on both databases except for placeholders,
the JSONB casts on PostgreSQL, and SQLite's storage format for times (naive UTC
text, as :class:`cx_connector.models.UTCDateTime` writes them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

from sqlalchemy import Connection, select

from cx_connector.models import score_contexts


class _Writer:
    def __init__(self, conn: Connection) -> None:
        self.sqlite = conn.dialect.name == "sqlite"
        self.raw = conn.connection.dbapi_connection

    def sql(self, text: str) -> str:
        """``?`` placeholders (``?j`` for JSON) in the dialect's style."""
        if self.sqlite:
            return text.replace("?j", "?")
        return text.replace("?j", "%s::jsonb").replace("?", "%s")

    def time(self, when: datetime) -> Any:
        if self.sqlite:
            return when.astimezone(UTC).replace(tzinfo=None).isoformat(" ", timespec="microseconds")
        return when

    def many(self, text: str, rows: Sequence[tuple]) -> None:
        if not rows:
            return
        cur = self.raw.cursor()
        try:
            cur.executemany(self.sql(text), rows)
        finally:
            cur.close()

    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = self.raw.cursor()
        try:
            cur.execute(self.sql(text), tuple(params))
            return cur.fetchall() if cur.description else []
        finally:
            cur.close()


def previous_values(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The stored ``score_values`` of these customers (those that have any)."""
    if not ids:
        return {}
    w = _Writer(conn)
    listed = ", ".join(str(int(i)) for i in ids)  # integers, from our own tables
    out = {}
    sql = f"SELECT customer_id, score_values FROM scores WHERE customer_id IN ({listed})"
    for cid, values in w.query(sql):
        out[cid] = json.loads(values) if isinstance(values, str | bytes) else values
    return out


def upsert_scores(conn: Connection, scored_at: datetime, ids: Sequence[int], values: Sequence[str],
                  explanations: Sequence[str]) -> None:
    """Customers ``ids`` get their latest scores: values and explanations as JSON text,
    aligned with ``ids``."""
    w = _Writer(conn)
    w.many("INSERT INTO scores (customer_id, scored_at, score_values, explanation) VALUES (?, ?, ?j, ?j) "
           "ON CONFLICT (customer_id) DO UPDATE SET scored_at = excluded.scored_at, "
           "score_values = excluded.score_values, explanation = excluded.explanation",
           _rows(ids, w.time(scored_at), values, explanations))


def insert_snapshots(conn: Connection, scored_at: datetime, ids: Sequence[int],
                     values: Sequence[str]) -> None:
    """Customers ``ids`` get a row in the score history: values as JSON text, aligned with ``ids``."""
    w = _Writer(conn)
    w.many("INSERT INTO score_snapshots (customer_id, scored_at, score_values) VALUES (?, ?, ?j)",
           _rows(ids, w.time(scored_at), values))


def _rows(ids: Sequence[int], at: Any, *columns: Sequence[str]) -> list[tuple]:
    """Statement rows ``(id, at, *columns)`` (zipped in C, not built per row in Python)."""
    if any(len(c) != len(ids) for c in columns):
        raise ValueError("columns of different lengths")
    return list(zip(ids, repeat(at), *columns))


def set_scored_at(conn: Connection, rows: Iterable[tuple[int, Any]]) -> None:
    """``(customer_id, watermark)``: the ``changed_at`` the scores reflect, as the
    database returned it (written back unchanged).

    Customers sharing a watermark (marked changed by one import or webhook batch)
    are updated by one statement.
    """
    w = _Writer(conn)
    groups: dict[Any, list[int]] = {}
    for cid, at in rows:
        groups.setdefault(at, []).append(cid)
    singles = []
    for at, ids in groups.items():
        if len(ids) == 1:
            singles.append((at, ids[0]))
            continue
        listed = ", ".join(str(int(i)) for i in ids)  # integers, from our own tables
        w.query(f"UPDATE customers SET scored_at = ? WHERE id IN ({listed})", [at])
    w.many("UPDATE customers SET scored_at = ? WHERE id = ?", singles)


def alive(conn: Connection, ids: Sequence[int]) -> set[int]:
    """Those of ``ids`` that are still customers in their own right (not merged away)."""
    if not ids:
        return set()
    w = _Writer(conn)
    listed = ", ".join(str(int(i)) for i in ids)
    return {r[0] for r in w.query(
        f"SELECT id FROM customers WHERE id IN ({listed}) AND merged_into_id IS NULL")}


def context_id(conn: Connection, context: dict[str, Any], now: datetime) -> int:
    """The id of the ``score_contexts`` row holding ``context``, added if new.

    Rows are deduplicated by the SHA-256 of the canonical JSON: incremental runs
    between two full passes, with unchanged settings, share their context.
    """
    text = json.dumps(context, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    found = conn.execute(select(score_contexts.c.id).where(score_contexts.c.digest == digest)).scalar()
    if found is not None:
        return int(found)
    return int(conn.execute(score_contexts.insert().values(
        digest=digest, created_at=now, context=context).returning(score_contexts.c.id)).scalar_one())
