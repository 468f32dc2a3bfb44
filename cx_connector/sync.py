"""Write-back: send pending outbox writes to the platforms, batched, within each
platform's rate limit, and never lose one.

Platform-agnostic: everything a platform knows is behind the write-back section of
:class:`~cx_connector.connector.Connector`. Per platform, one run:

1. **Recover** writes claimed by a worker that died: a write ``in_flight`` for longer
   than ``writeback.claim_timeout`` goes back to ``pending`` (it may have landed;
   writes are idempotent, so sending it again is safe).
2. **Claim** due writes (commit): ``pending`` -> ``in_flight`` with ``claimed_by``.
   On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets several sync workers run side by
   side without ever claiming the same write; a record with a write already in
   flight is skipped, so two values for one record are never sent out of order.
3. **Pack** the claimed writes into requests of ``batch_size`` units (records, or
   Shopify metafields, whose records may straddle two requests): the number of
   requests is the minimum the platform's batch maximum allows. A partly filled
   last request waits for the next claim, and is only sent when nothing is left.
4. **Send** through the platform's :class:`~cx_connector.throttle.Limiter`. A 429
   pauses the platform for ``Retry-After`` (or an exponential backoff with jitter)
   and the same request is sent again; a request refused as a whole as invalid
   (or 404) is split in halves until the bad record is alone.
5. **Mark** (commit, one transaction per request): ``done`` + ``written_values`` +
   an audit entry per record; a retryable failure goes back to ``pending`` with
   ``next_attempt_at`` (exponential backoff with full jitter) until
   ``writeback.max_attempts``, then ``dead`` with its reason; a deleted record is
   ``gone`` (its identity gets ``gone_at``: never written again); a merged record
   repoints the identity map and the write follows the surviving record.

Outbox statuses: ``pending``, ``in_flight``, ``done``, ``dead`` (needs a person:
``cx-connector outbox --dead``, then ``cx-connector outbox retry``), ``gone`` and
``superseded`` (folded into a newer pending write for the same record).

**Dry run** (``writeback.dry_run`` or ``sync --dry-run``) reads the due writes, packs
them exactly as a real run would and returns the requests it would make, with one
``score_write_dry_run`` audit entry per write (once per content). It claims
nothing and never touches ``written_values``: pending writes stay pending and keep
absorbing later changes, so turning dry run off later sends everything.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, exists, func, select, update
from sqlalchemy.orm import aliased

from cx_connector import audit, db, leases, logs
from cx_connector.config import Writeback
from cx_connector.connector import Connector, Merge, RecordWrite, WriteResult
from cx_connector.errors import (
    PlatformAPIError,
    PlatformAuthError,
    PlatformRateLimited,
    PlatformRecordGone,
    PlatformUnavailable,
    PlatformValidationError,
)
from cx_connector.models import audit_log, identities, outbox, written_values
from cx_connector.runtime import Runtime
from cx_connector.throttle import Clock, Limiter

log = logging.getLogger(__name__)

ACTOR = "scheduler"
#: consecutive 429s on one request before its writes are parked for the next run
MAX_RATE_LIMITED = 8
#: writes are due but none could be claimed (another worker has the record in flight, or
#: scoring is storing a new value into it): look again after this long...
BUSY_POLL = 0.25
#: ...and leave them to the next run after this long (the other worker sends them)
BUSY_GIVE_UP = 2.0
_MISSING = object()


# --- what a run works with -----------------------------------------------------------


@dataclass
class Claimed:
    """One claimed outbox row, as sent."""

    id: int
    customer_id: int | None
    source: str
    external_id: str
    fields: dict[str, Any]
    previous: dict[str, Any]
    attempts: int
    parts: int = 1
    results: list[tuple[dict[str, Any], WriteResult]] = field(default_factory=list)


@dataclass
class Item:
    """A record's fields in one request: the whole write, or one part of it."""

    row: Claimed
    fields: dict[str, Any]
    units: int


@dataclass
class Stats:
    source: str
    writes: int = 0
    requests: int = 0
    landed: int = 0
    retried: int = 0
    dead: int = 0
    gone: int = 0
    merged: int = 0
    rate_limited: int = 0
    splits: int = 0
    #: requests that waited for the rate budget, and the seconds waited
    waits: int = 0
    waited_seconds: float = 0.0
    #: writes that did not land, per attempt, by reason class (see :mod:`cx_connector.metrics`)
    failures: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    planned: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["waited_seconds"] = round(self.waited_seconds, 3)
        if not self.planned:
            out.pop("planned")
        return out


class _Stop(Exception):
    """Stop sending to this platform for this run (auth refused, a long Retry-After)."""

    def __init__(self, reason: str, retry_in: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_in = retry_in


# --- entry points ---------------------------------------------------------------------------


def writes_back(connector: Connector | type[Connector]) -> bool:
    """Whether a connector (instance or class) writes scores back to its platform."""
    return connector.writes_back and connector.write_batch_max > 0


def writers(rt: Runtime, sources: Iterable[str] | None = None) -> dict[str, Connector]:
    """The enabled connectors that write back (optionally only ``sources``)."""
    wanted = set(sources) if sources else None
    return {name: c for name, c in rt.connectors.items()
            if writes_back(c) and (wanted is None or name in wanted)}


def sync(rt: Runtime, *, dry_run: bool | None = None, clock: Clock | None = None,
         rng: random.Random | None = None, sources: Iterable[str] | None = None,
         worker: str | None = None) -> dict[str, Any]:
    """One sync run over every writing platform (in parallel: their budgets are separate).

    Returns ``{"dry_run": bool, "platforms": {name: stats}}``.
    """
    opts = rt.config.writeback
    dry = opts.dry_run if dry_run is None else dry_run
    clock = clock or Clock()
    rng = rng or random.Random()
    worker = worker or leases.holder_id()
    targets = writers(rt, sources)

    def one(connector: Connector) -> Stats:
        if dry:
            return plan_platform(rt.engine, connector, clock=clock)
        return PlatformRun(rt.engine, connector, opts, clock=clock, rng=rng, worker=worker).run()

    if len(targets) > 1:
        with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="sync") as pool:
            results = list(pool.map(logs.carry_context(one), targets.values()))
    else:
        results = [one(c) for c in targets.values()]
    return {"dry_run": dry, "platforms": {s.source: s.as_dict() for s in results}}


def job(rt: Runtime) -> dict[str, Any]:
    """The scheduler's ``sync`` job."""
    return sync(rt)


# --- packing ------------------------------------------------------------------------------


class Packer:
    """Fills requests to exactly ``size`` units, in claim order."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.size = connector.write_batch_size()
        self.queue: list[Item] = []
        self.units = 0

    def add(self, rows: Iterable[Claimed]) -> None:
        for row in rows:
            if self.connector.write_splits_records:
                names = list(row.fields)
                chunks: list[list[str]] = []
                room = self.size - self.units % self.size
                while names:
                    chunks.append(names[:room])
                    names = names[room:]
                    room = self.size
                row.parts = len(chunks)
                for chunk in chunks:
                    part = {f: row.fields[f] for f in chunk}
                    self._push(Item(row, part, self.connector.write_units(part)))
            else:
                row.parts = 1
                self._push(Item(row, dict(row.fields), self.connector.write_units(row.fields)))

    def _push(self, item: Item) -> None:
        self.queue.append(item)
        self.units += item.units

    def full(self) -> list[list[Item]]:
        """Every request that is already full; the remainder stays queued."""
        return self._take(final=False)

    def flush(self) -> list[list[Item]]:
        return self._take(final=True)

    def _take(self, *, final: bool) -> list[list[Item]]:
        batches: list[list[Item]] = []
        current: list[Item] = []
        used = 0
        rest_start = 0
        for i, item in enumerate(self.queue):
            if current and used + item.units > self.size:
                batches.append(current)
                current, used, rest_start = [], 0, i
            current.append(item)
            used += item.units
            if used >= self.size:
                batches.append(current)
                current, used, rest_start = [], 0, i + 1
        if current and final:
            batches.append(current)
            rest_start = len(self.queue)
        self.queue = self.queue[rest_start:]
        self.units = sum(i.units for i in self.queue)
        return batches


def record_writes(items: list[Item]) -> list[RecordWrite]:
    return [RecordWrite(i.row.external_id, dict(i.fields)) for i in items]


# --- one platform, for real -------------------------------------------------------------------


class PlatformRun:
    def __init__(self, engine: Engine, connector: Connector, opts: Writeback, *, clock: Clock,
                 rng: random.Random, worker: str) -> None:
        self.engine = engine
        self.connector = connector
        self.source = connector.name
        self.opts = opts
        self.clock = clock
        self.rng = rng
        self.worker = worker
        self.limiter = Limiter(connector.rate_budget(), clock)
        self.stats = Stats(self.source)
        self.stop: _Stop | None = None
        self._waits: dict[tuple[int, float], float] = {}
        self._lock = threading.Lock()
        size = connector.write_batch_size()
        self.claim_rows = max(100, size * max(1, connector.write_concurrency) * 4)

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> Stats:
        deadline = self.clock.monotonic() + self.opts.max_run_time.total_seconds()
        recover_expired(self.engine, self.source, self.opts.claim_timeout, now=self.clock.now())
        packer = Packer(self.connector)
        busy = 0.0  # how long due writes have been held by someone else
        while self.stop is None:
            rows = [] if self.clock.monotonic() >= deadline else self.claim()
            if rows:
                busy = 0.0
                packer.add(rows)
                self.send_all(packer.full())
                continue
            if packer.queue:
                self.send_all(packer.flush())
                continue
            if self.clock.monotonic() >= deadline:
                break
            wait = self.next_due_in()
            if wait is None or wait > self.opts.max_wait.total_seconds() or \
                    self.clock.monotonic() + wait >= deadline:
                break
            if wait <= 0:  # due, yet not claimable: not ours to send now
                if busy >= BUSY_GIVE_UP:
                    break
                busy += BUSY_POLL
                wait = BUSY_POLL
            self.clock.sleep(wait)
        if packer.queue:  # stopped: whatever is still queued was never sent
            stop = self.stop or _Stop("the run ended before it was sent")
            self.mark([(i, _release(stop)) for i in packer.queue])
            packer.queue = []
        if self.stop is not None:
            self.stats.errors.append(self.stop.reason)
        self.stats.requests = self.limiter.requests
        self.stats.waits = self.limiter.waits
        self.stats.waited_seconds = self.limiter.waited
        return self.stats

    def claim(self) -> list[Claimed]:
        rows = claim(self.engine, self.source, self.worker, limit=self.claim_rows, now=self.clock.now())
        gone = gone_ids(self.engine, self.source, {r.external_id for r in rows})
        if gone:
            with db.write(self.engine) as conn:
                self._finish_many(conn, [(row, WriteResult.gone(
                    "the record was deleted or merged on the platform"), {})
                    for row in rows if row.external_id in gone])
            rows = [r for r in rows if r.external_id not in gone]
        self.stats.writes += len(rows)
        return rows

    def next_due_in(self) -> float | None:
        with db.read(self.engine) as conn:
            due = conn.execute(select(func.min(outbox.c.next_attempt_at)).where(
                outbox.c.source == self.source, outbox.c.status == "pending")).scalar()
        if due is None:
            return None
        return max(0.0, (due - self.clock.now()).total_seconds())

    # -- sending -------------------------------------------------------------------------

    def send_all(self, batches: list[list[Item]]) -> None:
        if not batches:
            return
        workers = max(1, self.connector.write_concurrency)
        if workers == 1 or len(batches) == 1:
            for batch in batches:
                self.mark(self.send(batch))
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"sync-{self.source}") as pool:
            for done in pool.map(logs.carry_context(self.send), batches):
                self.mark(done)

    def send(self, batch: list[Item]) -> list[tuple[Item, WriteResult]]:
        """Send one request (splitting it when it is refused as a whole)."""
        if self.stop is not None:
            return [(i, _release(self.stop)) for i in batch]
        throttled = 0
        while True:
            try:
                results = self.connector.write_batch(record_writes(batch), self.limiter)
            except PlatformRateLimited as exc:
                throttled += 1
                with self._lock:
                    self.stats.rate_limited += 1
                wait = exc.retry_after if exc.retry_after is not None else self.backoff(throttled)
                if throttled >= MAX_RATE_LIMITED or wait > self.opts.max_wait.total_seconds():
                    self._set_stop(_Stop(f"{self.source}: rate limited ({exc.message}); "
                                         f"waiting {wait:.0f}s until the next run", wait))
                    self._failed("rate_limited", len(batch))
                    return [(i, _release(self.stop)) for i in batch]  # type: ignore[arg-type]
                self.limiter.pause(wait)
                continue
            except PlatformAuthError as exc:
                self._set_stop(_Stop(exc.message))
                self._failed("auth", len(batch))
                return [(i, _release(self.stop)) for i in batch]  # type: ignore[arg-type]
            except (PlatformValidationError, PlatformRecordGone) as exc:
                if len(batch) > 1:
                    with self._lock:
                        self.stats.splits += 1
                    half = len(batch) // 2
                    return self.send(batch[:half]) + self.send(batch[half:])
                if isinstance(exc, PlatformRecordGone):
                    self._failed("gone", 1)
                    return [(batch[0], WriteResult.gone(exc.message))]
                self._failed("invalid", 1)
                return [(batch[0], WriteResult.failed(exc.message))]
            except PlatformAPIError as exc:
                self._failed("unavailable" if isinstance(exc, PlatformUnavailable) else "api_error",
                             len(batch))
                return [(i, WriteResult.retry(exc.message)) for i in batch]
            except Exception as exc:  # a bug must not lose writes: they are retried, then dead
                log.exception("write-back to %s failed", self.source)
                self._failed("internal", len(batch))
                return [(i, WriteResult.retry(f"internal error: {type(exc).__name__}: {exc}"))
                        for i in batch]
            out = []
            for item in batch:
                result = results.get(item.row.external_id)
                if result is None:
                    result = WriteResult.retry(f"{self.source} returned no result for this record")
                if result.status in _FAILURE_CLASS:
                    self._failed(_FAILURE_CLASS[result.status], 1)
                out.append((item, result))
            return out

    def _failed(self, reason: str, n: int) -> None:
        with self._lock:
            self.stats.failures[reason] = self.stats.failures.get(reason, 0) + n

    def _set_stop(self, stop: _Stop) -> None:
        with self._lock:
            if self.stop is None:
                self.stop = stop

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: uniform(0, min(max, base * 2^(n-1)))."""
        base = self.opts.backoff_base.total_seconds()
        cap = self.opts.backoff_max.total_seconds()
        return self.rng.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))

    # -- marking ---------------------------------------------------------------------------

    def mark(self, sent: list[tuple[Item, WriteResult]]) -> None:
        finished: list[Claimed] = []
        for item, result in sent:
            row = item.row
            row.results.append((item.fields, result))
            if len(row.results) >= row.parts:
                finished.append(row)
        if not finished:
            return
        self._waits: dict[tuple[int, float], float] = {}  # one backoff per request: retried together
        with db.write(self.engine) as conn:
            self._finish_many(conn, [
                (row, _combine([r for _, r in row.results]),
                 {f: v for part, r in row.results if r.landed for f, v in part.items()})
                for row in finished])

    def _finish_many(self, conn: Connection,
                     items: list[tuple[Claimed, WriteResult, dict[str, Any]]]) -> None:
        """Mark a request's writes in one transaction, with one statement per kind of change."""
        if not items:
            return
        ids = [row.id for row, _, _ in items]
        self._cur = {r.id: r for r in conn.execute(
            select(outbox.c.id, outbox.c.status, outbox.c.claimed_by, outbox.c.fields, outbox.c.previous,
                   outbox.c.attempts, outbox.c.next_attempt_at, outbox.c.last_error, outbox.c.done_at)
            .where(outbox.c.id.in_(ids)).with_for_update())}
        self._written: list[dict[str, Any]] = []
        self._updates: list[dict[str, Any]] = []
        self._audits: list[dict[str, Any]] = []
        self._folds: list[tuple[str, str]] = []
        for row, result, landed in items:
            self._finish(conn, row, result, landed)
        if self._written:
            conn.execute(db.upsert(conn, written_values, ["source", "external_id", "field"],
                                   ["value", "written_at"]), self._written)
        if self._updates:
            conn.execute(update(outbox).where(outbox.c.id == bindparam("b_id"))
                         .values({k: bindparam(f"b_{k}") for k in _UPDATED}), self._updates)
        if self._audits:
            conn.execute(audit_log.insert(), self._audits)
        for source, external_id in self._folds:
            fold_pending(conn, source, external_id, self.clock.now())

    def _finish(self, conn: Connection, row: Claimed, result: WriteResult,
                landed: dict[str, Any]) -> None:
        now = self.clock.now()
        cur = self._cur.get(row.id)
        if cur is None or cur.status != "in_flight" or cur.claimed_by != self.worker:
            # our claim expired and another worker took the write over: it re-sends it
            # (idempotent); the written values are theirs to record
            self._audits.append(dict(at=now, actor=ACTOR, action="score_write", customer_id=row.customer_id,
                                     source=row.source, external_id=row.external_id, details={
                                         "outbox_id": row.id, "result": result.status, "claim_lost": True,
                                         "reason": "claim expired before the result came back"}))
            return
        target = row.external_id
        if result.status == "merged" and result.merged_into:
            target = self._repoint(conn, row, result.merged_into, now)
        if landed:
            self._written += [{"source": row.source, "external_id": target, "field": f, "value": v,
                               "written_at": now} for f, v in landed.items()]
        # fields scoring changed while the write was in flight keep their new value
        remaining = {f: v for f, v in cur.fields.items() if landed.get(f, _MISSING) != v}
        previous = {f: landed.get(f, (cur.previous or {}).get(f)) for f in remaining}
        attempts = cur.attempts
        status = result.status
        values: dict[str, Any] = {"updated_at": now, "claimed_by": None, "claimed_at": None}
        if status in ("ok", "resend", "release") or (status == "merged" and result.landed):
            if status == "ok" or status == "merged":
                attempts += 1
            if status == "ok":
                self.stats.landed += 1
            if not remaining:
                values.update(status="done", done_at=now, last_error=None)
            else:
                values.update(status="pending", fields=remaining, previous=previous,
                              next_attempt_at=now + timedelta(seconds=result.retry_after or 0),
                              last_error=result.reason or None)
        elif status == "retry":
            attempts += 1
            if attempts >= self.opts.max_attempts:
                values.update(status="dead", fields=remaining or cur.fields,
                              last_error=f"gave up after {attempts} attempts: {result.reason}")
                self.stats.dead += 1
            else:
                key = (attempts, result.retry_after or 0.0)
                if key not in self._waits:
                    self._waits[key] = max(result.retry_after or 0.0, self.backoff(attempts))
                wait = self._waits[key]
                values.update(status="pending", fields=remaining or cur.fields,
                              previous=previous if remaining else cur.previous,
                              next_attempt_at=now + timedelta(seconds=wait), last_error=result.reason)
                self.stats.retried += 1
        elif status == "failed":
            attempts += 1
            values.update(status="dead", last_error=result.reason or "refused by the platform")
            self.stats.dead += 1
        elif status == "gone":
            conn.execute(update(identities).where(
                identities.c.kind == "id", identities.c.source == row.source,
                identities.c.value == row.external_id, identities.c.gone_at.is_(None)).values(gone_at=now))
            values.update(status="gone", last_error=result.reason or "record gone")
            self.stats.gone += 1
        elif status == "merged":  # not landed: the write moves to the surviving record
            moved = _move_write(conn, row, target, cur.fields, cur.previous, now)
            values.update(status="superseded", last_error=f"record merged into {target}; "
                                                          f"write moved to #{moved}")
        values["attempts"] = attempts
        full = {"status": cur.status, "fields": cur.fields, "previous": cur.previous,
                "next_attempt_at": cur.next_attempt_at, "last_error": cur.last_error, "done_at": cur.done_at}
        full.update(values)
        self._updates.append({"b_id": row.id, **{f"b_{k}": full[k] for k in _UPDATED}})
        if values.get("status") == "pending":
            self._folds.append((row.source, row.external_id))
        if status != "release":
            self._audits.append(dict(actor=ACTOR, action="score_write", at=now, customer_id=row.customer_id,
                                     source=row.source, external_id=row.external_id, details={
                             "outbox_id": row.id, "attempt": attempts, "result": status,
                             "outcome": values.get("status"), "reason": result.reason or None,
                             "changes": {f: {"old": (row.previous or {}).get(f), "new": v}
                                         for f, v in row.fields.items()},
                             **({"written_to": target} if target != row.external_id else {})}))

    def _repoint(self, conn: Connection, row: Claimed, into: str, now: datetime) -> str:
        from cx_connector import identity

        identity.apply_merge(conn, Merge(row.source, (row.external_id,), into), now=now, actor=ACTOR)
        self.stats.merged += 1
        return into


#: reason class of a record the platform did not take (a per-record result of a batch)
_FAILURE_CLASS = {"retry": "record_retry", "failed": "invalid", "gone": "gone"}


def _release(stop: _Stop) -> WriteResult:
    return WriteResult("release", stop.reason, retry_after=stop.retry_in)


_UPDATED = ("status", "fields", "previous", "attempts", "next_attempt_at", "last_error", "done_at",
            "updated_at", "claimed_by", "claimed_at")
_PRIORITY = ("gone", "merged", "failed", "retry", "release", "resend", "ok")


def _combine(results: list[WriteResult]) -> WriteResult:
    """One outcome for a write sent in several parts: the worst part decides."""
    return min(results, key=lambda r: _PRIORITY.index(r.status))


# --- claiming, recovery, folding ----------------------------------------------------------------


def claim(engine: Engine, source: str, worker: str, *, limit: int, now: datetime) -> list[Claimed]:
    """Claim up to ``limit`` due writes of ``source`` for ``worker`` (committed)."""
    other = aliased(outbox)
    in_flight = exists().where(other.c.source == outbox.c.source,
                               other.c.external_id == outbox.c.external_id,
                               other.c.status == "in_flight")
    q = (select(outbox.c.id, outbox.c.customer_id, outbox.c.external_id, outbox.c.fields,
                outbox.c.previous, outbox.c.attempts)
         .where(outbox.c.source == source, outbox.c.status == "pending",
                outbox.c.next_attempt_at <= now, ~in_flight)
         .order_by(outbox.c.id).limit(limit).with_for_update(skip_locked=True, of=outbox))
    with db.write(engine) as conn:
        rows = conn.execute(q).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        for i in range(0, len(ids), 500):
            conn.execute(update(outbox).where(outbox.c.id.in_(ids[i:i + 500]))
                         .values(status="in_flight", claimed_at=now, claimed_by=worker, updated_at=now))
    return [Claimed(r.id, r.customer_id, source, r.external_id, dict(r.fields or {}),
                    dict(r.previous or {}), r.attempts) for r in rows]


def gone_ids(engine: Engine, source: str, external_ids: set[str]) -> set[str]:
    if not external_ids:
        return set()
    ids = sorted(external_ids)
    out: set[str] = set()
    with db.read(engine) as conn:
        for i in range(0, len(ids), 500):
            out |= set(conn.execute(select(identities.c.value).where(
                identities.c.kind == "id", identities.c.source == source,
                identities.c.value.in_(ids[i:i + 500]), identities.c.gone_at.is_not(None))).scalars())
    return out


def recover_expired(engine: Engine, source: str | None, timeout: timedelta, *, now: datetime) -> int:
    """Writes claimed longer than ``timeout`` ago (their worker died) go back to pending."""
    cond = and_(outbox.c.status == "in_flight", outbox.c.claimed_at < now - timeout)
    if source:
        cond = and_(cond, outbox.c.source == source)
    with db.write(engine) as conn:
        rows = conn.execute(select(outbox.c.id, outbox.c.source, outbox.c.external_id,
                                   outbox.c.claimed_by, outbox.c.customer_id)
                            .where(cond).with_for_update(skip_locked=True)).all()
        for r in rows:
            conn.execute(update(outbox).where(outbox.c.id == r.id).values(
                status="pending", next_attempt_at=now, claimed_at=None, claimed_by=None,
                attempts=outbox.c.attempts + 1, updated_at=now,
                last_error=f"claimed by {r.claimed_by} which did not finish within "
                           f"{timeout}; sending again"))
            audit.record(conn, actor=ACTOR, action="score_write_recovered", at=now,
                         customer_id=r.customer_id, source=r.source, external_id=r.external_id,
                         details={"outbox_id": r.id, "claimed_by": r.claimed_by})
            fold_pending(conn, r.source, r.external_id, now)
    return len(rows)


def fold_pending(conn: Connection, source: str, external_id: str, now: datetime) -> int | None:
    """Keep one pending write per record: older pending writes are folded into the newest
    (the newest value of each field wins). Returns the surviving write's id."""
    rows = conn.execute(select(outbox.c.id, outbox.c.fields, outbox.c.previous, outbox.c.attempts,
                               outbox.c.next_attempt_at)
                        .where(outbox.c.source == source, outbox.c.external_id == external_id,
                               outbox.c.status == "pending").order_by(outbox.c.id)).all()
    if len(rows) < 2:
        return rows[0].id if rows else None
    keep = rows[-1]
    fields: dict[str, Any] = {}
    previous: dict[str, Any] = {}
    for r in rows:
        fields.update(r.fields or {})
        for f, v in (r.previous or {}).items():
            previous.setdefault(f, v)  # the oldest "last written" value is the true old value
    conn.execute(update(outbox).where(outbox.c.id == keep.id).values(
        fields=fields, previous={f: previous.get(f) for f in fields},
        attempts=max(r.attempts for r in rows), next_attempt_at=max(r.next_attempt_at for r in rows),
        updated_at=now))
    conn.execute(update(outbox).where(outbox.c.id.in_([r.id for r in rows[:-1]])).values(
        status="superseded", updated_at=now, done_at=now, claimed_by=None,
        last_error=f"folded into write #{keep.id} for the same record"))
    return keep.id


def _move_write(conn: Connection, row: Claimed, target: str, fields: Mapping[str, Any],
                previous: Mapping[str, Any], now: datetime) -> int:
    new_id = conn.execute(outbox.insert().values(
        customer_id=row.customer_id, source=row.source, external_id=target, fields=dict(fields),
        previous=dict(previous or {}), status="pending", attempts=0, next_attempt_at=now,
        created_at=now, updated_at=now).returning(outbox.c.id)).scalar_one()
    return fold_pending(conn, row.source, target, now) or new_id


# --- dry run ----------------------------------------------------------------------------------


def plan_platform(engine: Engine, connector: Connector, *, clock: Clock) -> Stats:
    """What a real run would send now, request by request; records it in the audit log."""
    now = clock.now()
    stats = Stats(connector.name)
    with db.read(engine) as conn:
        rows = [Claimed(r.id, r.customer_id, connector.name, r.external_id, dict(r.fields or {}),
                        dict(r.previous or {}), r.attempts)
                for r in conn.execute(select(outbox.c.id, outbox.c.customer_id, outbox.c.external_id,
                                             outbox.c.fields, outbox.c.previous, outbox.c.attempts)
                                      .where(outbox.c.source == connector.name,
                                             outbox.c.status == "pending",
                                             outbox.c.next_attempt_at <= now)
                                      .order_by(outbox.c.id))]
    gone = gone_ids(engine, connector.name, {r.external_id for r in rows})
    rows = [r for r in rows if r.external_id not in gone]
    stats.writes = len(rows)
    packer = Packer(connector)
    packer.add(rows)
    for batch in packer.flush():
        for req in connector.describe_write(record_writes(batch)):
            stats.planned.append({"method": req.method, "path": req.path, "params": req.params,
                                  "body": req.body,
                                  "records": sorted({i.row.external_id for i in batch})})
    stats.requests = len(stats.planned)
    _audit_dry_run(engine, connector.name, rows, now)
    return stats


def _key(value: Any) -> str:
    """A comparison key for JSON read back from the database (JSONB reorders keys)."""
    return json.dumps(json.loads(db.json_dumps(value)), sort_keys=True)


def _audit_dry_run(engine: Engine, source: str, rows: list[Claimed], now: datetime) -> None:
    if not rows:
        return
    with db.write(engine) as conn:
        seen: set[tuple[int, str]] = set()
        ids = sorted({r.external_id for r in rows})
        for i in range(0, len(ids), 500):
            for details in conn.execute(select(audit_log.c.details).where(
                    audit_log.c.action == "score_write_dry_run", audit_log.c.source == source,
                    audit_log.c.external_id.in_(ids[i:i + 500]))).scalars():
                seen.add((details.get("outbox_id"), _key(details.get("changes"))))
        for r in rows:
            changes = {f: {"old": r.previous.get(f), "new": v} for f, v in r.fields.items()}
            if (r.id, _key(changes)) in seen:
                continue
            audit.record(conn, actor=ACTOR, action="score_write_dry_run", at=now,
                         customer_id=r.customer_id, source=source, external_id=r.external_id,
                         details={"outbox_id": r.id, "changes": changes,
                                  "result": "not sent (dry run)"})


# --- the admin's side: list and re-queue ---------------------------------------------------------


def list_writes(engine: Engine, *, dead: bool = False, source: str | None = None,
                limit: int = 100, status: str | None = None) -> list[dict[str, Any]]:
    """Pending, in-flight and retried writes (or only dead ones), oldest first.

    ``status``: only ``pending`` (never tried yet), ``retrying`` (pending after a failed
    attempt), ``in_flight`` or ``dead``.
    """
    statuses = ["dead"] if dead else ["pending", "in_flight", "dead"]
    if status is not None:
        statuses = ["pending"] if status == "retrying" else [status]
    q = (select(outbox.c.id, outbox.c.source, outbox.c.external_id, outbox.c.customer_id,
                outbox.c.status, outbox.c.attempts, outbox.c.next_attempt_at, outbox.c.fields,
                outbox.c.previous, outbox.c.last_error, outbox.c.created_at, outbox.c.updated_at)
         .where(outbox.c.status.in_(statuses)).order_by(outbox.c.id).limit(limit))
    if status == "retrying":
        q = q.where(outbox.c.attempts > 0)
    elif status == "pending":
        q = q.where(outbox.c.attempts == 0)
    if source:
        q = q.where(outbox.c.source == source)
    with db.read(engine) as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def counts(engine: Engine) -> dict[str, dict[str, int]]:
    """``{source: {status: n}}`` for every open status (and retried: pending with attempts)."""
    out: dict[str, dict[str, int]] = {}
    with db.read(engine) as conn:
        for source, status, attempts, n in conn.execute(
                select(outbox.c.source, outbox.c.status, outbox.c.attempts, func.count())
                .where(outbox.c.status.in_(["pending", "in_flight", "dead"]))
                .group_by(outbox.c.source, outbox.c.status, outbox.c.attempts)):
            key = "retrying" if status == "pending" and attempts else status
            out.setdefault(source, {})
            out[source][key] = out[source].get(key, 0) + n
    return out


def requeue_dead(engine: Engine, *, now: datetime, ids: Iterable[int] | None = None,
                 source: str | None = None, actor: str = "cli") -> list[int]:
    """Send dead writes again (after fixing their cause). Returns the re-queued ids.

    A field whose newer value has landed since (a later write succeeded) is dropped,
    so re-queueing never puts an old score back on the record.
    """
    q = select(outbox).where(outbox.c.status == "dead").order_by(outbox.c.id)
    if ids is not None:
        q = q.where(outbox.c.id.in_(list(ids)))
    if source:
        q = q.where(outbox.c.source == source)
    requeued = []
    with db.write(engine) as conn:
        for row in conn.execute(q).mappings().all():
            newer = dict(conn.execute(select(written_values.c.field, written_values.c.written_at).where(
                written_values.c.source == row["source"],
                written_values.c.external_id == row["external_id"])).all())
            fields = {f: v for f, v in (row["fields"] or {}).items()
                      if f not in newer or newer[f] <= row["created_at"]}
            if not fields:
                conn.execute(update(outbox).where(outbox.c.id == row["id"]).values(
                    status="superseded", updated_at=now, done_at=now,
                    last_error="newer values have landed since"))
                continue
            conn.execute(update(outbox).where(outbox.c.id == row["id"]).values(
                status="pending", fields=fields,
                previous={f: (row["previous"] or {}).get(f) for f in fields}, attempts=0,
                next_attempt_at=now, updated_at=now, last_error=None))
            fold_pending(conn, row["source"], row["external_id"], now)
            audit.record(conn, actor=actor, action="score_write_requeued", at=now,
                         customer_id=row["customer_id"], source=row["source"],
                         external_id=row["external_id"],
                         details={"outbox_id": row["id"], "last_error": row["last_error"]})
            requeued.append(row["id"])
    return requeued
