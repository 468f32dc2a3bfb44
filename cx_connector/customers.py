"""Customers as people read them: the CLI (``customers list/show/explain``), the admin
pages and the JSON API all show a customer through these functions.

Each function is a bounded number of queries whatever the number of customers:
lists are pages of ``customers.id`` (newest first, keyset or offset), and the
details of a page are read with one ``IN`` query per table, never one per customer.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, func, literal_column, or_, select, union_all

from cx_connector.connector import Connector
from cx_connector.fields import FIELDS
from cx_connector.models import customers as customers_t
from cx_connector.models import identities, outbox, scores, touchpoints, written_values

#: values of ``cx_health`` a list can be filtered by; ``none``: not scored, or no health
HEALTH_FILTERS = ("red", "yellow", "green", "none")


def _aware(value: Any) -> datetime | None:
    """SQLite aggregates (``max``) bypass the column type and return naive text."""
    if value is None or (isinstance(value, datetime) and value.tzinfo is not None):
        return value
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def health_of(conn: Connection) -> Any:
    """``scores.score_values ->> 'cx_health'``, spelt the same way as the expression index
    ``ix_scores_health`` (migration ``0004_admin``), so both databases can use it."""
    if conn.dialect.name == "sqlite":
        return literal_column("json_extract(scores.score_values, '$.cx_health')")
    return literal_column("(scores.score_values ->> 'cx_health')")


def identities_of(conn: Connection, ids: list[int],
                  connectors: Mapping[str, Connector] | None = None) -> dict[int, list[dict[str, Any]]]:
    """Each customer's identities, oldest first; with ``connectors``, each platform record
    also gets ``url``: its page in the platform's UI (:meth:`Connector.record_url`)."""
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return out
    for r in conn.execute(select(identities.c.customer_id, identities.c.kind, identities.c.source,
                                 identities.c.value, identities.c.gone_at, identities.c.created_at)
                          .where(identities.c.customer_id.in_(ids))
                          .order_by(identities.c.id)).mappings():
        item: dict[str, Any] = {"kind": r["kind"], "source": r["source"] or None, "value": r["value"],
                                "gone": r["gone_at"] is not None}
        if connectors is not None:
            item["created_at"] = r["created_at"]
            connector = connectors.get(r["source"]) if r["kind"] == "id" else None
            item["url"] = connector.record_url(r["value"]) if connector is not None else None
        out[r["customer_id"]].append(item)
    return out


def summaries(conn: Connection, ids: list[int],
              connectors: Mapping[str, Connector] | None = None) -> list[dict[str, Any]]:
    """Profile, touchpoint count, last touch, platforms, identities and latest scores of
    ``ids``, in the order given (unknown ids are left out)."""
    if not ids:
        return []
    rows = {r["id"]: dict(r) for r in conn.execute(
        select(customers_t.c.id, customers_t.c.email, customers_t.c.phone, customers_t.c.name,
               customers_t.c.created_at, customers_t.c.changed_at, customers_t.c.scored_at)
        .where(customers_t.c.id.in_(ids))).mappings()}
    stats = {r["customer_id"]: r for r in conn.execute(
        select(touchpoints.c.customer_id, func.count().label("touchpoints"),
               func.max(touchpoints.c.occurred_at).label("last_touch"))
        .where(touchpoints.c.customer_id.in_(ids)).group_by(touchpoints.c.customer_id)).mappings()}
    score_rows = {r["customer_id"]: r for r in conn.execute(
        select(scores.c.customer_id, scores.c.score_values).where(scores.c.customer_id.in_(ids))).mappings()}
    idents = identities_of(conn, ids, connectors)
    out = []
    for cid in ids:
        if cid not in rows:
            continue
        r = rows[cid]
        s = stats.get(cid)
        r["touchpoints"] = s["touchpoints"] if s else 0
        r["last_touch"] = _aware(s["last_touch"]) if s else None
        r["sources"] = sorted({i["source"] for i in idents[cid] if i["kind"] == "id"})
        r["identities"] = idents[cid]
        r["scores"] = dict(score_rows[cid]["score_values"]) if cid in score_rows else {}
        out.append(r)
    return out


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def listing(conn: Connection, *, health: str | None = None, query: str | None = None,
            limit: int = 50, before: int | None = None, offset: int = 0) -> list[int]:
    """Ids of customers that are not merged away, newest first.

    ``health``: one of :data:`HEALTH_FILTERS`. ``query``: part of an email address or a
    name (case-insensitive). ``before``: only ids below it (the keyset cursor of the
    next page); ``offset`` is kept for the CLI's ``--offset``.

    Each filter reads in index order, so a page costs the same on the first page and the
    thousandth: a health through ``ix_scores_health`` (health, customer_id); ``none`` as
    two such reads, customers without scores (an anti-join on both primary keys) and
    scores without a health (the index's NULL entries).
    """
    if health is not None and health not in HEALTH_FILTERS:
        raise ValueError(f"health must be one of {', '.join(HEALTH_FILTERS)}")
    h = health_of(conn)
    alive = customers_t.c.merged_into_id.is_(None)

    def page(q: Any, key: Any) -> Any:
        if query:
            pattern = _like(query.strip().lower())
            q = q.where(or_(customers_t.c.email.like(pattern, escape="\\"),
                            func.lower(customers_t.c.name).like(pattern, escape="\\")))
        if before is not None:
            q = q.where(key < before)
        return q.order_by(key.desc()).limit(limit + offset)

    by_health = (select(scores.c.customer_id.label("id"))
                 .join(customers_t, customers_t.c.id == scores.c.customer_id))
    if health is None:
        q = page(select(customers_t.c.id.label("id")).where(alive), customers_t.c.id)
    elif health != "none":
        q = page(by_health.where(h == health, alive), scores.c.customer_id)
    else:
        unscored = ~select(scores.c.customer_id).where(scores.c.customer_id == customers_t.c.id).exists()
        parts = [page(select(customers_t.c.id.label("id")).where(alive, unscored), customers_t.c.id),
                 page(by_health.where(h.is_(None), alive), scores.c.customer_id)]
        parts = [p.subquery() for p in parts]
        both = union_all(*(select(p.c.id) for p in parts)).subquery()
        q = select(both.c.id).order_by(both.c.id.desc()).limit(limit + offset)
    return list(conn.execute(q).scalars())[offset:]


def count(conn: Connection, *, health: str | None = None) -> int:
    """How many customers :func:`listing` lists with ``health`` over all its pages (one
    count query; the CLI asks only when a page is full, to say that more exist)."""
    if health is not None and health not in HEALTH_FILTERS:
        raise ValueError(f"health must be one of {', '.join(HEALTH_FILTERS)}")
    alive = customers_t.c.merged_into_id.is_(None)
    if health is None:
        q = select(func.count()).select_from(customers_t).where(alive)
    else:
        h = health_of(conn)
        joined = customers_t.outerjoin(scores, scores.c.customer_id == customers_t.c.id)
        # "none": not scored (no scores row: the outer join's NULL), or scored without a health
        q = select(func.count()).select_from(joined).where(alive, h.is_(None) if health == "none"
                                                            else h == health)
    return int(conn.execute(q).scalar_one())


def timeline(conn: Connection, customer_id: int, *, limit: int = 50,
             before: tuple[datetime, int] | None = None) -> list[dict[str, Any]]:
    """The customer's touchpoints, newest first; ``before`` = ``(occurred_at, id)`` of the
    last one shown (the keyset cursor of the next page)."""
    t = touchpoints.c
    q = (select(t.id, t.source, t.touchpoint_id, t.occurred_at, t.kind, t.stage, t.channel, t.value,
                t.currency, t.rating_type, t.rating_score, t.rating_scale_max, t.delivery_id)
         .where(t.customer_id == customer_id)
         .order_by(t.occurred_at.desc(), t.id.desc()).limit(limit))
    if before is not None:
        at, tid = before
        q = q.where(or_(t.occurred_at < at, and_(t.occurred_at == at, t.id < tid)))
    return [dict(r) for r in conn.execute(q).mappings()]


def explained(conn: Connection, customer_id: int) -> dict[str, Any] | None:
    """Every score field with its value and its explanation in words, plus the stored
    inputs; ``None`` before the customer is first scored."""
    from cx_connector.scoring import explain  # numpy: loaded only where explanations are shown

    row = conn.execute(select(scores.c.scored_at, scores.c.score_values, scores.c.explanation)
                       .where(scores.c.customer_id == customer_id)).first()
    if row is None:
        return None
    values, inputs = dict(row.score_values), explain.stored(conn, dict(row.explanation or {}))
    words = explain.render(inputs, values)
    return {"customer_id": customer_id, "scored_at": row.scored_at,
            "scores": {name: {"value": values.get(name), "explanation": words[name]} for name in FIELDS},
            "inputs": inputs}


def writeback(conn: Connection, connectors: Mapping[str, Connector],
              customer_id: int) -> list[dict[str, Any]]:
    """Per platform record of the customer: its open and finished outbox writes (counts,
    the newest ones with their reasons) and the values last written to it.

    Reads by ``(source, external_id)``, the outbox's and ``written_values``' own keys:
    one query per platform the customer has records on.
    """
    records: dict[str, list[str]] = {}
    for r in conn.execute(select(identities.c.source, identities.c.value, identities.c.gone_at)
                          .where(identities.c.customer_id == customer_id, identities.c.kind == "id")
                          .order_by(identities.c.id)):
        connector = connectors.get(r.source)
        if connector is not None and connector.writes_back and connector.writable_record(r.value):
            records.setdefault(r.source, []).append(r.value)
    out: list[dict[str, Any]] = []
    for source, ids in records.items():
        per: dict[str, dict[str, Any]] = {
            i: {"source": source, "external_id": i, "url": connectors[source].record_url(i),
                "counts": {}, "writes": [], "written": {}, "written_at": None} for i in ids}
        for w in conn.execute(
                select(outbox.c.id, outbox.c.external_id, outbox.c.status, outbox.c.attempts,
                       outbox.c.fields, outbox.c.last_error, outbox.c.next_attempt_at,
                       outbox.c.updated_at, outbox.c.done_at)
                .where(outbox.c.source == source, outbox.c.external_id.in_(ids))
                .order_by(outbox.c.id.desc()).limit(200)).mappings():
            rec = per[w["external_id"]]
            status = "retrying" if w["status"] == "pending" and w["attempts"] else w["status"]
            rec["counts"][status] = rec["counts"].get(status, 0) + 1
            if len(rec["writes"]) < 10:
                rec["writes"].append({**dict(w), "status": status})
        for v in conn.execute(select(written_values.c.external_id, written_values.c.field,
                                     written_values.c.value, written_values.c.written_at)
                              .where(written_values.c.source == source,
                                     written_values.c.external_id.in_(ids))).mappings():
            rec = per[v["external_id"]]
            rec["written"][v["field"]] = v["value"]
            if rec["written_at"] is None or v["written_at"] > rec["written_at"]:
                rec["written_at"] = v["written_at"]
        out.extend(per.values())
    return out
