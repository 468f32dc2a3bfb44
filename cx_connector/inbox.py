"""The webhook inbox: verify, dedupe, keep the raw delivery, normalise, store, link.

Order of work for one request (one database transaction, committed before the
200 goes out, so an acknowledged event survives the process being killed):

1. signature check on the raw bytes (bad: :class:`SignatureError`, nothing stored);
2. delivery dedupe on ``(source, delivery_key)``: a redelivery is answered 200
   and changes nothing;
3. the raw delivery is stored;
4. the connector normalises it (pure); a malformed payload, or a bug, keeps the
   delivery with status ``failed`` and the error; an unknown event is ``ignored``;
5. touchpoints are stored, deduplicated on ``(source, touchpoint_id)``;
6. identities are resolved and the customers marked for rescoring.

Privacy requests (:class:`Forget`, :class:`ForgetAll`, :class:`Export`) are not carried
out in the request: an erasure searches every stored body, so its cost grows with the
inbox and past ``webhooks.database_timeout`` the platform would be answered 503 until it
gave up. The delivery is stored ``queued`` (with its touchpoints and other actions) and
answered 200; the clock's ``privacy`` job (:func:`privacy_job`, every minute) applies
the queued requests oldest first, each in its own transaction, and marks the delivery
``processed`` (or ``failed`` with the reason, replayable). A delivery stays ``queued``
until its request committed, so a crash loses none.

Only a database outage escapes as :class:`DatabaseUnavailable` (HTTP 503), in
which case nothing was written and the platform retries.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy import exc as sa_exc

from cx_connector import audit, db, identity, privacy
from cx_connector.connector import (
    CatalogueProduct,
    Connector,
    ContactDetails,
    Delivery,
    Export,
    Forget,
    ForgetAll,
    Gone,
    Headers,
    Link,
    Merge,
    Normalised,
    Restore,
    Touchpoint,
)
from cx_connector.errors import PayloadError
from cx_connector.metrics import stored as stored_metrics
from cx_connector.models import deliveries, products, touchpoints
from cx_connector.touchpoint import clean_text

log = logging.getLogger(__name__)

#: headers never stored with a delivery (credentials of proxies or endpoint auth)
_DROP_HEADERS = {"authorization", "cookie", "proxy-authorization", "x-api-key"}


@dataclass(frozen=True)
class Receipt:
    """What happened to one delivery. ``status``: processed | queued | failed | ignored |
    duplicate (``queued``: stored, its privacy request left to the clock's ``privacy`` job);
    ``failed_at``: ``normalise`` or ``store`` when it failed."""

    status: str
    delivery_id: int | None = None
    touchpoints: int = 0
    error: str | None = None
    failed_at: str | None = None


def now_utc() -> datetime:
    return datetime.now(UTC)


def receive(engine: Engine, connector: Connector, body: bytes, headers: Mapping[str, str], *,
            method: str = "POST", url: str = "", now: datetime | None = None) -> Receipt:
    """Handle one webhook request end to end (see module docstring)."""
    now = now or now_utc()
    if not isinstance(headers, Headers):  # case-insensitive, whatever the server or HTTP version did
        headers = Headers(headers)
    connector.verify(body, headers, method=method, url=url, now=now)
    delivery = Delivery(source=connector.name, body=body, headers=headers, received_at=now,
                        method=method, url=url)
    key = delivery_key(connector, delivery)
    try:
        topic = (connector.topic(delivery) or "")[:128]
    except Exception:
        topic = ""
    # Normalising is pure CPU work: do it before taking the database's write lock.
    result, status, error = _normalise(connector, delivery, now)
    defer = status == "processed" and result is not None and bool(privacy_actions(result))
    if defer:
        status = QUEUED
    row = {"source": connector.name, "delivery_key": key, "topic": clean_text(topic),
           "received_at": now,
           "headers": clean_text({k: v for k, v in delivery.headers.items()
                                  if k.lower() not in _DROP_HEADERS}),
           "body": body, "attempts": 1, "processed_at": now}

    def attempt(conn: Connection) -> Receipt:
        nonlocal status, error
        delivery_id = _insert_delivery(conn, row, status, error)
        if delivery_id is None:
            return Receipt("duplicate")
        stored = 0
        if result is not None and status in ("processed", QUEUED):
            outcome = store_result(conn, connector.name, result, delivery_id=delivery_id,
                                   now=now, actor="webhook", defer_privacy=defer)
            stored = outcome.new
            if outcome.ignored:
                status, error = "ignored", outcome.ignored
                conn.execute(update(deliveries).where(deliveries.c.id == delivery_id)
                             .values(status=status, error=clean_text(error)))
        return Receipt(status, delivery_id, stored, error,
                       "normalise" if status == "failed" else None)

    # in one transaction with the webhooks other threads of this process are storing
    # (db.write_grouped): answered only once that transaction has committed
    try:
        return db.write_grouped(engine, attempt)
    except (PayloadError, *_STORE_ERRORS) as exc:
        if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) and db.is_connection_error(exc):
            raise
        # the touchpoints could not be stored: keep the delivery, failed, for a replay
        error = _store_error(exc, connector.name)
        delivery_id = db.write_grouped(engine, lambda conn: _insert_delivery(conn, row, "failed", error))
        return Receipt("failed" if delivery_id else "duplicate", delivery_id, 0,
                       error if delivery_id else None, "store" if delivery_id else None)


_STORE_ERRORS = (sa_exc.StatementError, ValueError, TypeError, KeyError)

#: status of a delivery stored with a privacy request the clock has not applied yet
QUEUED = "queued"
#: the actions left to the clock's ``privacy`` job
PRIVACY_ACTIONS = (Forget, ForgetAll, Export)


def privacy_actions(result: Normalised) -> list[Forget | ForgetAll | Export]:
    """The privacy requests among a normalised result's actions."""
    return [a for a in result.actions if isinstance(a, PRIVACY_ACTIONS)]


def delivery_key(connector: Connector, delivery: Delivery) -> str:
    """The key a delivery is deduplicated on, exactly as stored (``deliveries.delivery_key``).

    Never raises: a body the connector cannot read a key from (malformed, truncated) is
    keyed by its hash, so it is still stored once, as a failed delivery, not rejected. A
    key longer than the column (255) keeps its start and ends with its own hash.
    Public so that tools checking what was stored (``bench/fuzz.py``) compute the same key.
    """
    try:
        key = clean_text(connector.delivery_key(delivery))
    except Exception:
        return "sha256:" + hashlib.sha256(delivery.body).hexdigest()
    if len(key) > 255:  # cut, two long ids with one beginning would be one delivery
        key = key[:180] + "~sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return key


# The statements every webhook runs go through the DBAPI cursor (cx_connector.db.raw_rows):
# through SQLAlchemy Core, their per-statement overhead was most of a request's time.


def _insert_delivery(conn: Connection, row: dict, status: str, error: str | None) -> int | None:
    at = db.stored_time(conn, row["received_at"])
    got = db.raw_rows(conn, (
        "INSERT INTO deliveries (source, delivery_key, topic, received_at, headers, body, attempts, "
        "processed_at, status, error) VALUES (?, ?, ?, ?, ?j, ?, ?, ?, ?, ?) "
        "ON CONFLICT (source, delivery_key) DO NOTHING RETURNING id"),
        (row["source"], row["delivery_key"], row["topic"], at, db.stored_json(row["headers"]), row["body"],
         row["attempts"], db.stored_time(conn, row["processed_at"]), status, clean_text(error)))
    return got[0][0] if got else None


def _existing(conn: Connection, source: str, ids: list[str]) -> set[str]:
    out: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        out.update(r[0] for r in db.raw_rows(conn, (
            "SELECT touchpoint_id FROM touchpoints WHERE source = ? "
            f"AND touchpoint_id IN ({', '.join('?' * len(chunk))})"), (source, *chunk)))
    return out


_MONEY = Decimal("0.0001")


def _money(conn: Connection, value: Any) -> Any:
    """A ``Money`` column's value (as models.Money binds it: 4 places; a float on SQLite)."""
    if value is None:
        return None
    value = Decimal(value).quantize(_MONEY)
    return float(value) if conn.dialect.name == "sqlite" else value


_TOUCHPOINT_COLUMNS = ("source", "touchpoint_id", "customer_id", "customer_source_id", "occurred_at",
                       "kind", "stage", "channel", "value", "currency", "rating_type", "rating_score",
                       "rating_scale_max", "products", "attributes", "delivery_id", "created_at")
_TOUCHPOINT_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?j, ?j, ?, ?)"


def _insert_touchpoints(conn: Connection, rows: list[dict]) -> list[int | None]:
    """Insert new touchpoints (a fact stored meanwhile is skipped); their customer ids."""
    out: list[int | None] = []
    for i in range(0, len(rows), 500):
        chunk = rows[i:i + 500]
        params: list[Any] = []
        for r in chunk:
            params += (r["source"], r["touchpoint_id"], r["customer_id"], r["customer_source_id"],
                       db.stored_time(conn, r["occurred_at"]), r["kind"], r["stage"], r["channel"],
                       _money(conn, r["value"]), r["currency"], r["rating_type"],
                       _money(conn, r["rating_score"]), _money(conn, r["rating_scale_max"]),
                       db.stored_json(r["products"]), db.stored_json(r["attributes"]),
                       r["delivery_id"], db.stored_time(conn, r["created_at"]))
        out += [r[0] for r in db.raw_rows(conn, (
            f"INSERT INTO touchpoints ({', '.join(_TOUCHPOINT_COLUMNS)}) VALUES "
            + ", ".join([_TOUCHPOINT_VALUES] * len(chunk))
            + " ON CONFLICT (source, touchpoint_id) DO NOTHING RETURNING customer_id"), params)]
    return out


def _normalise(connector: Connector, delivery: Delivery,
               now: datetime) -> tuple[Normalised | None, str, str | None]:
    try:
        result = connector.normalise(delivery, now=now)
        if not isinstance(result, Normalised):
            raise TypeError(f"{type(connector).__name__}.normalise returned {type(result).__name__}")
    except PayloadError as exc:
        return None, "failed", exc.message
    except RecursionError:  # parsed, but nested too deeply for the normaliser to walk
        return None, "failed", "the payload is nested too deeply to be processed"
    except Exception as exc:  # a connector bug must not lose the delivery or answer 500
        log.exception("normaliser crashed", extra={"source": connector.name})
        return None, "failed", f"internal error while normalising: {type(exc).__name__}: {exc}"
    if result.ignored:
        return result, "ignored", result.ignored
    return result, "processed", None


def _store_error(exc: BaseException, source: str) -> str:
    if isinstance(exc, PayloadError):
        return exc.message
    log.error("storing touchpoints failed", exc_info=exc, extra={"source": source})
    detail = getattr(exc, "orig", None) or exc
    return f"could not store: {type(detail).__name__}: {detail}"


def process(conn: Connection, connector: Connector, delivery_id: int, delivery: Delivery, *,
            now: datetime, actor: str) -> Receipt:
    """Normalise and store an already stored delivery again (replay); records the outcome."""
    result, status, error = _normalise(connector, delivery, now)
    stored = 0
    if result is not None and status == "processed":
        savepoint = conn.begin_nested()
        try:
            outcome = store_result(conn, connector.name, result, delivery_id=delivery_id, now=now,
                                   actor=actor)
            stored = outcome.new
            if outcome.ignored:
                status, error = "ignored", outcome.ignored
            savepoint.commit()
        except (PayloadError, *_STORE_ERRORS) as exc:
            savepoint.rollback()
            if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) and \
                    db.is_connection_error(exc):
                raise
            status, error = "failed", _store_error(exc, connector.name)
    conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(
        status=status, error=clean_text(error), processed_at=now,
        attempts=deliveries.c.attempts + 1))
    stored_metrics.touchpoints_imported(conn, connector.name, "replay", stored, now)
    return Receipt(status, delivery_id, stored, error)


def touchpoint_row(tp: Touchpoint, customer_id: int | None, delivery_id: int | None,
                   now: datetime) -> dict:
    return {
        "source": tp.source,
        "touchpoint_id": tp.touchpoint_id,
        "customer_id": customer_id,
        "customer_source_id": tp.customer.source_id,
        "occurred_at": tp.occurred_at,
        "kind": tp.kind,
        "stage": tp.stage,
        "channel": tp.channel,
        "value": tp.value,
        "currency": tp.currency,
        "rating_type": tp.rating.type if tp.rating else None,
        "rating_score": tp.rating.score if tp.rating else None,
        "rating_scale_max": tp.rating.scale_max if tp.rating else None,
        "products": [{k: v for k, v in p.__dict__.items() if v is not None} for p in tp.products],
        "attributes": tp.attributes,
        "delivery_id": delivery_id,
        "created_at": now,
    }


@dataclass(frozen=True)
class Stored:
    """What storing one normalised result did."""

    #: touchpoints stored that were not there before
    new: int = 0
    #: set when the result changed nothing at all (only :class:`ContactDetails` already
    #: known): the reason its delivery is ``ignored``
    ignored: str | None = None


def store(conn: Connection, source: str, result: Normalised, *, delivery_id: int | None,
          now: datetime, actor: str) -> int:
    """Store touchpoints and apply actions; returns how many touchpoints were new."""
    return store_result(conn, source, result, delivery_id=delivery_id, now=now, actor=actor).new


def store_result(conn: Connection, source: str, result: Normalised, *, delivery_id: int | None,
                 now: datetime, actor: str, defer_privacy: bool = False) -> Stored:
    """Store touchpoints and apply actions (see :class:`Stored`); with ``defer_privacy``,
    all but the privacy requests (left to :func:`apply_queued`)."""
    tps = list(result.touchpoints)
    for tp in tps:
        if tp.source != source:
            raise PayloadError(f"touchpoint {tp.touchpoint_id} claims source {tp.source!r} "
                               f"but arrived on /webhooks/{source}")
    new = 0
    resolution = identity.Resolution()
    if tps:
        # identities are resolved only for facts not stored yet: a redelivered fact
        # must not move anything
        existing = _existing(conn, source, [tp.touchpoint_id for tp in tps])
        seen: set[str] = set()
        fresh = []
        for tp in tps:
            if tp.touchpoint_id not in existing and tp.touchpoint_id not in seen:
                seen.add(tp.touchpoint_id)
                fresh.append(tp)
        if fresh:
            owners = identity.resolve(conn, source, [(tp.customer, tp.occurred_at) for tp in fresh],
                                      now=now, actor=actor, into=resolution)
            rows = [touchpoint_row(tp, owners[tp.customer.source_id], delivery_id, now)
                    for tp in fresh]
            inserted = _insert_touchpoints(conn, rows)
            new = len(inserted)
            identity.mark_changed(conn, [c for c in inserted if c is not None], now)
    unchanged = []
    for action in result.actions:
        if defer_privacy and isinstance(action, PRIVACY_ACTIONS):
            continue
        if apply_action(conn, action, now=now, actor=actor, resolution=resolution) is False:
            unchanged.append(action)
    if resolution.erased:  # late facts about erased records: erase what they brought
        privacy.forget_late(conn, source, resolution.erased, delivery_id=delivery_id, now=now,
                            actor=actor)
    if not tps and unchanged and len(unchanged) == len(result.actions):
        reasons = [ERASED if a.customer.source_id in resolution.erased else a.unchanged
                   for a in unchanged]
        return Stored(new, ignored="; ".join(dict.fromkeys(reasons)))
    return Stored(new)


#: why contact details of an erased record are ignored
ERASED = "the record's personal data was erased (see the audit log): its contact details are not kept"


def apply_action(conn: Connection, action: object, *, now: datetime, actor: str,
                 resolution: identity.Resolution | None = None) -> bool | None:
    """Carry out one action; for :class:`ContactDetails`, returns whether they changed
    anything. Erased records the action touched are added to ``resolution``."""
    if isinstance(action, Merge):
        identity.apply_merge(conn, action, now=now, actor=actor, report=resolution)
    elif isinstance(action, ContactDetails):
        return identity.apply_contact_details(conn, action, now=now, actor=actor, into=resolution)
    elif isinstance(action, Link):
        identity.apply_link(conn, action, now=now, actor=actor, into=resolution)
    elif isinstance(action, Restore):
        identity.restore_record(conn, action, now=now, actor=actor)
    elif isinstance(action, CatalogueProduct):
        catalogue(conn, action, now=now)
    elif isinstance(action, Forget | ForgetAll | Export):
        privacy.apply(conn, action, now=now, actor=actor)
    elif isinstance(action, Gone):
        identity.mark_gone(conn, action, now=now, actor=actor)
    else:
        raise TypeError(f"unknown action {type(action).__name__}")


def catalogue(conn: Connection, entry: CatalogueProduct, *, now: datetime) -> None:
    """Upsert a catalogue entry; an older update arriving late does not win."""
    at = entry.updated_at or now
    row = {"source": entry.source, "product_id": entry.product_id, "title": entry.title,
           "category": entry.category, "sku": entry.sku, "updated_at": at}
    current = conn.execute(select(products.c.updated_at).where(
        products.c.source == entry.source, products.c.product_id == entry.product_id)).scalar()
    if current is None:
        conn.execute(db.insert_ignore(conn, products, ["source", "product_id"]).values(**row))
    elif current <= at:
        conn.execute(update(products).where(products.c.source == entry.source,
                                            products.c.product_id == entry.product_id).values(**row))


def _stored(row: Mapping[str, Any]) -> Delivery:
    """A stored delivery as its connector reads it (the signature was checked on receipt)."""
    return Delivery(source=row["source"], body=bytes(row["body"]), headers=row["headers"] or {},
                    received_at=row["received_at"])


def replay(engine: Engine, connectors: Mapping[str, Connector], delivery_id: int, *,
           now: datetime | None = None, actor: str = "cli") -> Receipt:
    """Normalise a stored delivery again (after a fix); the signature was checked on receipt."""
    now = now or now_utc()
    with db.write(engine) as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).mappings().first()
        if row is None:
            return Receipt("missing", delivery_id, error=f"no delivery {delivery_id}")
        if row["body"] is None:
            return Receipt("redacted", delivery_id, error="the body was erased for privacy")
        connector = connectors.get(row["source"])
        if connector is None:
            return Receipt("failed", delivery_id,
                           error=f"connector {row['source']} is not enabled in the configuration")
        delivery = _stored(row)
        receipt = process(conn, connector, delivery_id, delivery, now=now, actor=actor)
        audit.record(conn, actor=actor, action="delivery_replayed", at=now, source=row["source"],
                     details={"delivery_id": delivery_id, "was": row["status"], "status": receipt.status,
                              "touchpoints": receipt.touchpoints})
        return receipt


def replay_failed(engine: Engine, connectors: Mapping[str, Connector], *, source: str | None = None,
                  now: datetime | None = None, actor: str = "cli", limit: int | None = None) -> list[Receipt]:
    """Replay every failed delivery (of one source; the oldest ``limit``), oldest first, each
    in its own transaction."""
    q = select(deliveries.c.id).where(deliveries.c.status == "failed").order_by(deliveries.c.id).limit(limit)
    if source:
        q = q.where(deliveries.c.source == source)
    with db.read(engine) as conn:
        ids = list(conn.execute(q).scalars())
    return [replay(engine, connectors, i, now=now, actor=actor) for i in ids]


# --- the clock's side: privacy requests queued by webhooks ---------------------------------------

#: how many queued deliveries one run of the ``privacy`` job applies (the rest: next minute)
PRIVACY_BATCH = 500
#: why a queued delivery could not be applied: an earlier erasure emptied its body
ERASED_BEFORE = ("its body was erased by an earlier privacy request (see the audit log) before its own "
                 "request was applied: check the person or source it named is erased, else run "
                 "cx-connector forget")


def apply_queued(engine: Engine, connectors: Mapping[str, Connector], delivery_id: int, *,
                 now: datetime | None = None, actor: str = "webhook") -> Receipt:
    """Carry out the privacy requests of one ``queued`` delivery, in one transaction.

    The requests are normalised again from the stored body (as a replay does; the
    touchpoints and other actions were stored on receipt). The delivery is marked
    ``processed`` in the same transaction, before the work, so an erasure still empties
    the body of its own delivery as it did in the webhook; a request that fails leaves
    it ``failed`` with the reason (``cx-connector events replay`` applies it again).
    ``actor`` stays ``webhook``: the request came from the platform.
    """
    now = now or now_utc()
    with db.write(engine) as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id,
                                                    deliveries.c.status == QUEUED)).mappings().first()
        if row is None:  # applied meanwhile (a replay)
            return Receipt("missing", delivery_id, error=f"no queued delivery {delivery_id}")
        connector = connectors.get(row["source"])
        if connector is None:  # stays queued: applied once the connector is enabled again
            log.warning("queued privacy request waits: its connector is not enabled",
                        extra={"source": row["source"], "delivery_id": delivery_id})
            return Receipt(QUEUED, delivery_id,
                           error=f"connector {row['source']} is not enabled in the configuration")

        def finish(status: str, error: str | None) -> Receipt:
            conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(
                status=status, error=clean_text(error), processed_at=now,
                attempts=deliveries.c.attempts + 1))
            return Receipt(status, delivery_id, 0, error)

        if row["body"] is None:
            return finish("failed", ERASED_BEFORE)
        delivery = _stored(row)
        result, status, error = _normalise(connector, delivery, now)
        if result is None or status != "processed":
            return finish("failed", error or "the delivery no longer carries a privacy request")
        receipt = finish("processed", None)
        savepoint = conn.begin_nested()
        try:
            for action in privacy_actions(result):
                privacy.apply(conn, action, now=now, actor=actor)
            savepoint.commit()
        except Exception as exc:
            savepoint.rollback()
            if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) and \
                    db.is_connection_error(exc):
                raise
            log.error("applying a queued privacy request failed", exc_info=exc,
                      extra={"source": row["source"], "delivery_id": delivery_id})
            detail = getattr(exc, "orig", None) or exc
            error = f"could not apply the privacy request: {type(detail).__name__}: {detail}"
            conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(
                status="failed", error=clean_text(error)))
            return Receipt("failed", delivery_id, 0, error)
        return receipt


def privacy_job(rt: Any) -> dict[str, Any]:
    """The clock's ``privacy`` job: apply queued privacy requests, oldest first, each in its
    own transaction (at most :data:`PRIVACY_BATCH` per run). The job's lease keeps two
    clocks from applying the same one."""
    with db.read(rt.engine) as conn:
        ids = list(conn.execute(select(deliveries.c.id).where(deliveries.c.status == QUEUED)
                                .order_by(deliveries.c.id).limit(PRIVACY_BATCH)).scalars())
    done: dict[str, int] = {}
    failed: list[int] = []
    for delivery_id in ids:
        receipt = apply_queued(rt.engine, rt.connectors, delivery_id, now=rt.now())
        done[receipt.status] = done.get(receipt.status, 0) + 1
        if receipt.status == "failed":
            failed.append(delivery_id)
    return {"queued": len(ids), **done, "failed_ids": failed}


# --- the admin's side: what arrived, what failed -----------------------------------------------


def list_deliveries(conn: Connection, *, status: str | None = None, source: str | None = None,
                    limit: int = 50) -> list[dict]:
    """The newest deliveries (of a status, of a source) with how many touchpoints each stored."""
    stored = (select(func.count()).where(touchpoints.c.delivery_id == deliveries.c.id)
              .scalar_subquery().label("touchpoints"))
    q = select(deliveries.c.id, deliveries.c.source, deliveries.c.topic, deliveries.c.received_at,
               deliveries.c.status, stored, deliveries.c.attempts, deliveries.c.processed_at,
               deliveries.c.error).order_by(deliveries.c.id.desc()).limit(limit)
    if status:
        q = q.where(deliveries.c.status == status)
    if source:
        q = q.where(deliveries.c.source == source)
    return [dict(r) for r in conn.execute(q).mappings()]


#: a privacy request queued this long has missed several runs of the clock's ``privacy``
#: job (every minute): the clock is probably not running
QUEUED_OVERDUE = timedelta(minutes=5)


@dataclass(frozen=True)
class Queued:
    """The deliveries whose privacy request waits for the clock, oldest first (at most the
    limit), with how many wait in all and how many of them are overdue."""

    deliveries: list[dict[str, Any]]
    total: int
    overdue: int


def queued(conn: Connection, *, now: datetime, limit: int = 50) -> Queued:
    """What :func:`privacy_job` has not applied yet, whatever its age (the inbox counts
    only cover a window), so that a stopped clock is seen rather than a request silently
    waiting. Each delivery carries its ``age`` and whether it is ``overdue``
    (:data:`QUEUED_OVERDUE`). Three reads of the ``(status, received_at)`` index."""
    waiting = deliveries.c.status == QUEUED
    late = now - QUEUED_OVERDUE
    rows = [dict(r) for r in conn.execute(
        select(deliveries.c.id, deliveries.c.source, deliveries.c.topic, deliveries.c.received_at)
        .where(waiting).order_by(deliveries.c.received_at, deliveries.c.id).limit(limit)).mappings()]
    for row in rows:
        row["age"] = max(now - row["received_at"], timedelta(0))
        row["overdue"] = row["received_at"] < late
    total = conn.execute(select(func.count()).where(waiting)).scalar_one()
    overdue = conn.execute(select(func.count()).where(waiting, deliveries.c.received_at < late)).scalar_one()
    return Queued(rows, total, overdue)


def counts(conn: Connection, *, since: datetime | None = None) -> dict[str, dict[str, int]]:
    """``{source: {status: n}}`` of the deliveries received since ``since`` (all: ``None``)."""
    q = select(deliveries.c.source, deliveries.c.status, func.count()).group_by(
        deliveries.c.source, deliveries.c.status)
    if since is not None:
        q = q.where(deliveries.c.received_at >= since)
    out: dict[str, dict[str, int]] = {}
    for source, status, n in conn.execute(q):
        out.setdefault(source, {})[status] = n
    return out
