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
import queue
import random
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select, update

from cx_connector import audit, db, leases, logs
from cx_connector.config import Writeback
from cx_connector.connector import Connector, Merge, RecordWrite, WriteResult
from cx_connector.db import raw_many, raw_rows, stored_time
from cx_connector.errors import (
    PlatformAPIError,
    PlatformAuthError,
    PlatformFieldsMissing,
    PlatformRateLimited,
    PlatformRecordGone,
    PlatformUnavailable,
    PlatformValidationError,
)
from cx_connector.models import audit_log, identities, outbox, written_values
from cx_connector.runtime import Runtime
from cx_connector.throttle import Clock, Limiter
from cx_connector.wording import counted

log = logging.getLogger(__name__)

ACTOR = "scheduler"
#: consecutive 429s on one request before its writes are parked for the next run
MAX_RATE_LIMITED = 8
#: the marker commits the results of up to this many requests per transaction, waiting
#: up to MARK_LINGER (real) seconds for more after the first: fewer, larger transactions
MARK_GROUPS = 64
MARK_LINGER = 0.02
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
    #: ``fields`` and ``previous`` as the database gave them at the claim: unchanged at
    #: marking time, they need no decoding again
    stored: tuple[Any, Any] | None = None


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
    """One platform's share of a sync run, as a pipeline that keeps the platform's budget busy.

    Three stages run side by side, so that our own bookkeeping never sits between two
    requests the budget would already allow:

    - the run's own thread claims due writes (a few hundred per transaction) and packs
      them into full requests, at most :attr:`ahead` requests ahead of the senders;
    - ``write_concurrency`` sender threads send them, each request waiting for its slot
      of the platform's :class:`~cx_connector.throttle.Limiter`;
    - one marker thread commits the results: whatever answers are waiting go in one
      transaction (done + written values + one audit entry per write), so marking keeps
      up however fast answers arrive.

    Claim → send → mark holds for every write: it is ``in_flight`` (claimed by this
    worker) from its claim until its result is committed, so a crash at any point
    leaves it for :func:`recover_expired`, and no other worker claims it meanwhile.
    A partly filled request is only sent once nothing is left to claim and no answer is
    outstanding (an answer may make writes due again), which keeps the number of
    requests at the minimum.
    """

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
        self._lock = threading.Lock()
        self.workers = max(1, connector.write_concurrency)
        size = connector.write_batch_size()
        #: requests packed ahead of the senders (claimed, not yet sent): enough that a sender
        #: never waits for a claim, few enough that little sits claimed and unsent
        self.ahead = self.workers + 1
        #: rows per claim; the first claim takes one request's worth, so the first request
        #: leaves at once
        self.claim_rows = max(100, size * (self.workers + 1))
        self._first_claim = size
        self._cond = threading.Condition()
        self._queued = 0  # requests waiting for a sender
        self._outstanding = 0  # requests handed to the senders whose results are not committed yet
        self._marks: queue.SimpleQueue[list[tuple[Item, WriteResult]] | None] = queue.SimpleQueue()
        self._mark_error: BaseException | None = None

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> Stats:
        deadline = self.clock.monotonic() + self.opts.max_run_time.total_seconds()
        recover_expired(self.engine, self.source, self.opts.claim_timeout, now=self.clock.now())
        packer = Packer(self.connector)
        marker = threading.Thread(target=logs.carry_context(self._marker),
                                  name=f"sync-{self.source}-mark", daemon=True)
        marker.start()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"sync-{self.source}")
        held = 0.0  # how long due writes have been held by someone else
        try:
            while self.stop is None:
                self._wait_for_room()
                past = self.clock.monotonic() >= deadline
                rows = [] if past or self.stop is not None else self.claim()
                if rows:
                    held = 0.0
                    packer.add(rows)
                    self._submit(pool, packer.full())
                    continue
                with self._cond:
                    outstanding = self._outstanding
                if outstanding:  # an answer may make writes due again: wait for it before a partial request
                    self._wait_below(outstanding)
                    continue
                if packer.queue:
                    self._submit(pool, packer.flush())
                    continue
                if past:
                    break
                wait = self.next_due_in()
                if wait is None or wait > self.opts.max_wait.total_seconds() or \
                        self.clock.monotonic() + wait >= deadline:
                    break
                if wait <= 0:  # due, yet not claimable: not ours to send now
                    if held >= BUSY_GIVE_UP:
                        break
                    held += BUSY_POLL
                    wait = BUSY_POLL
                self.clock.sleep(wait)
        except BaseException:  # Ctrl-C, the database gone: requests not yet sent stay unsent
            self._set_stop(_Stop("the run was interrupted"))
            raise
        finally:
            pool.shutdown(wait=True)
            if packer.queue:  # stopped: whatever is still queued was never sent
                stop = self.stop or _Stop("the run ended before it was sent")
                self._to_marker([(i, _release(stop)) for i in packer.queue])
                packer.queue = []
            self._marks.put(None)
            marker.join()
        if self._mark_error is not None:
            raise self._mark_error
        if self.stop is not None:
            self.stats.errors.append(self.stop.reason)
        self.stats.requests = self.limiter.requests
        self.stats.waits = self.limiter.waits
        self.stats.waited_seconds = self.limiter.waited
        return self.stats

    def _wait_below(self, n: int) -> None:
        """Until fewer than ``n`` requests await their results' commit."""
        with self._cond:
            while self._outstanding >= n:
                self._cond.wait()

    def _wait_for_room(self) -> None:
        """Until the senders need more requests (and the marker is not far behind)."""
        with self._cond:
            while self._queued >= self.ahead or self._outstanding >= self.ahead + self.workers + MARK_GROUPS:
                self._cond.wait()

    def _submit(self, pool: ThreadPoolExecutor, batches: list[list[Item]]) -> None:
        for batch in batches:
            with self._cond:
                self._outstanding += 1
                self._queued += 1
            pool.submit(logs.carry_context(self._send_and_hand_over), batch)

    def _send_and_hand_over(self, batch: list[Item]) -> None:
        with self._cond:
            self._queued -= 1
            self._cond.notify_all()
        try:
            sent = self.send(batch)
        except BaseException as exc:  # never lose a claimed write: it is retried, then dead
            log.exception("write-back to %s failed", self.source)
            sent = [(i, WriteResult.retry(f"internal error: {type(exc).__name__}: {exc}")) for i in batch]
        self._marks.put(sent)

    def _to_marker(self, sent: list[tuple[Item, WriteResult]]) -> None:
        with self._cond:
            self._outstanding += 1
        self._marks.put(sent)

    def _marker(self) -> None:
        """Commit results as they come, everything waiting in one transaction."""
        done = False
        while not done:
            first = self._marks.get()
            if first is None:
                return
            groups = [first]
            until = time.monotonic() + MARK_LINGER
            while len(groups) < MARK_GROUPS:
                with self._cond:
                    expected = self._outstanding > len(groups)
                if not expected:  # nothing else is on its way: commit now
                    break
                try:
                    more = self._marks.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    done = True
                    break
                groups.append(more)
            try:
                self.mark(groups)
            except BaseException as exc:  # the writes stay in_flight: recovered after claim_timeout
                log.exception("write-back to %s: could not record results", self.source)
                if self._mark_error is None:
                    self._mark_error = exc
                self._set_stop(_Stop(f"{self.source}: could not record results: {exc}"))
            finally:
                with self._cond:
                    self._outstanding -= len(groups)
                    self._cond.notify_all()

    def claim(self) -> list[Claimed]:
        limit, self._first_claim = self._first_claim or self.claim_rows, 0
        rows = claim(self.engine, self.source, self.worker, limit=limit, now=self.clock.now())
        gone = gone_ids(self.engine, self.source, {r.external_id for r in rows})
        if gone:
            self._to_marker([(Item(row, dict(row.fields), 0), WriteResult.gone(
                "the record was deleted or merged on the platform")) for row in rows
                if row.external_id in gone])
            rows = [r for r in rows if r.external_id not in gone]
        self.stats.writes += len(rows)
        return rows

    def next_due_in(self) -> float | None:
        with db.read(self.engine) as conn:
            due = conn.execute(select(outbox.c.next_attempt_at).where(
                outbox.c.source == self.source, outbox.c.status == "pending")
                .order_by(outbox.c.next_attempt_at).limit(1)).scalar()
        if due is None:
            return None
        return max(0.0, (due - self.clock.now()).total_seconds())

    # -- sending -------------------------------------------------------------------------

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
            except (PlatformAuthError, PlatformFieldsMissing) as exc:
                self._set_stop(_Stop(exc.message))
                self._failed("fields_missing" if isinstance(exc, PlatformFieldsMissing) else "auth",
                             len(batch))
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
        with self._lock:
            return self.rng.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))

    # -- marking ---------------------------------------------------------------------------

    def mark(self, groups: list[list[tuple[Item, WriteResult]]]) -> None:
        """Commit the results of one or more requests (each group: one request's answers)."""
        finished: list[tuple[Claimed, WriteResult, dict[str, Any], int]] = []
        for n, sent in enumerate(groups):
            for item, result in sent:
                row = item.row
                row.results.append((item.fields, result))
                if len(row.results) >= row.parts:
                    finished.append((row, _combine([r for _, r in row.results]),
                                     {f: v for part, r in row.results if r.landed for f, v in part.items()},
                                     n))
        if finished:
            with db.write(self.engine) as conn:
                _Marking(self, conn).finish(finished)

    def repoint(self, conn: Connection, row: Claimed, into: str, now: datetime) -> str:
        from cx_connector import identity

        identity.apply_merge(conn, Merge(row.source, (row.external_id,), into), now=now, actor=ACTOR)
        self.stats.merged += 1
        return into


class _Marking:
    """One transaction's worth of results: what changes, gathered, then written with one
    statement per kind of change (raw ``executemany``: the per-row parameter processing
    of SQLAlchemy would cost more than the rest of marking)."""

    def __init__(self, run: PlatformRun, conn: Connection) -> None:
        self.run = run
        self.conn = conn
        self.now = run.clock.now()
        self.written: list[tuple] = []
        self.updates: list[dict[str, Any]] = []
        self.audits: list[tuple] = []
        self.folds: list[tuple[str, str]] = []
        self.waits: dict[tuple[int, int, float], float] = {}  # one backoff per request
        self.values: dict[tuple[type, Any], str] = {}

    def json_value(self, value: Any) -> str:
        """A score value as JSON text (scores repeat: 0-100, a few options)."""
        try:
            key = (type(value), value)
            return self.values[key]
        except KeyError:
            text = self.values[key] = db.json_dumps(value)
            return text
        except TypeError:  # unhashable
            return db.json_dumps(value)

    def finish(self, items: list[tuple[Claimed, WriteResult, dict[str, Any], int]]) -> None:
        conn = self.conn
        current = _current(conn, [row for row, _, _, _ in items])
        for row, result, landed, request in items:
            self.one(row, result, landed, request, current.get(row.id))
        at = stored_time(conn, self.now)
        if self.written:
            raw_many(conn, "INSERT INTO written_values (source, external_id, field, value, written_at) "
                           "VALUES (?, ?, ?, ?j, ?) ON CONFLICT (source, external_id, field) DO UPDATE "
                           "SET value = excluded.value, written_at = excluded.written_at",
                     [(*w, at) for w in self.written])
        _update_outbox(conn, self.updates)
        if self.audits:
            raw_many(conn, "INSERT INTO audit_log (at, actor, action, customer_id, source, external_id, "
                           "details) VALUES (?, ?, ?, ?, ?, ?, ?j)", [(at, *a) for a in self.audits])
        for source, external_id in self.folds:
            fold_pending(conn, source, external_id, self.now)

    def one(self, row: Claimed, result: WriteResult, landed: dict[str, Any], request: int,
            cur: _Current | None) -> None:
        run, now, stats = self.run, self.now, self.run.stats
        if cur is None or cur.status != "in_flight" or cur.claimed_by != run.worker:
            # our claim expired and another worker took the write over: it re-sends it
            # (idempotent); the written values are theirs to record
            self.audits.append((ACTOR, "score_write", row.customer_id, row.source, row.external_id,
                                db.json_dumps({"outbox_id": row.id, "result": result.status,
                                               "claim_lost": True,
                                               "reason": "claim expired before the result came back"})))
            return
        target = row.external_id
        if result.status == "merged" and result.merged_into:
            target = run.repoint(self.conn, row, result.merged_into, now)
        if landed:
            self.written += [(row.source, target, f, self.json_value(v)) for f, v in landed.items()]
        # fields scoring changed while the write was in flight keep their new value
        remaining = {f: v for f, v in cur.fields.items() if landed.get(f, _MISSING) != v}
        previous = {f: landed.get(f, cur.previous.get(f)) for f in remaining}
        attempts = cur.attempts
        status = result.status
        values: dict[str, Any] = {"id": row.id, "updated_at": now, "claimed_by": None, "claimed_at": None}
        if status in ("ok", "resend", "release") or (status == "merged" and result.landed):
            if status == "ok" or status == "merged":
                attempts += 1
            if status == "ok":
                stats.landed += 1
            if not remaining:
                values.update(status="done", done_at=now, last_error=None)
            else:
                values.update(status="pending", fields=remaining, previous=previous,
                              next_attempt_at=now + timedelta(seconds=result.retry_after or 0),
                              last_error=result.reason or None)
        elif status == "retry":
            attempts += 1
            if attempts >= run.opts.max_attempts:
                values.update(status="dead", fields=remaining or cur.fields,
                              last_error=f"gave up after {counted(attempts, 'attempt')}: {result.reason}")
                stats.dead += 1
            else:
                key = (request, attempts, result.retry_after or 0.0)
                if key not in self.waits:
                    self.waits[key] = max(result.retry_after or 0.0, run.backoff(attempts))
                values.update(status="pending", fields=remaining or cur.fields,
                              previous=previous if remaining else cur.previous,
                              next_attempt_at=now + timedelta(seconds=self.waits[key]),
                              last_error=result.reason)
                stats.retried += 1
        elif status == "failed":
            attempts += 1
            values.update(status="dead", last_error=result.reason or "refused by the platform")
            stats.dead += 1
        elif status == "gone":
            self.conn.execute(update(identities).where(
                identities.c.kind == "id", identities.c.source == row.source,
                identities.c.value == row.external_id, identities.c.gone_at.is_(None)).values(gone_at=now))
            values.update(status="gone", last_error=result.reason or "record gone")
            stats.gone += 1
        elif status == "merged":  # not landed: the write moves to the surviving record
            moved = _move_write(self.conn, row, target, cur.fields, cur.previous, now)
            values.update(status="superseded", last_error=f"record merged into {target}; "
                                                          f"write moved to #{moved}")
        values["attempts"] = attempts
        self.updates.append(values)
        if values.get("status") == "pending":
            self.folds.append((row.source, row.external_id))
        if status != "release":
            self.audits.append((ACTOR, "score_write", row.customer_id, row.source, row.external_id,
                                db.json_dumps({
                                    "outbox_id": row.id, "attempt": attempts, "result": status,
                                    "outcome": values.get("status"), "reason": result.reason or None,
                                    "changes": {f: {"old": (row.previous or {}).get(f), "new": v}
                                                for f, v in row.fields.items()},
                                    **({"written_to": target} if target != row.external_id else {})})))


@dataclass(frozen=True)
class _Current:
    status: str
    claimed_by: str | None
    attempts: int
    fields: dict[str, Any]
    previous: dict[str, Any]


def _json(value: Any) -> Any:
    """A JSON object column as the DBAPI hands it back; ``{}`` for NULL."""
    return {} if value is None else db.loaded_json(value)


def _current(conn: Connection, rows: list[Claimed]) -> dict[int, _Current]:
    """The claimed writes as they are now, locked for the transaction (PostgreSQL; SQLite's
    write transaction already holds the database)."""
    lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE"
    claimed = {r.id: r for r in rows}
    ids = list(claimed)
    out: dict[int, _Current] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        for rid, status, claimed_by, attempts, fields, previous in raw_rows(conn, (
                "SELECT id, status, claimed_by, attempts, fields, previous FROM outbox "
                f"WHERE id IN ({', '.join('?' * len(chunk))}){lock}"), chunk):
            row = claimed[rid]
            if row.stored == (fields, previous):  # as claimed: scoring did not touch it since
                out[rid] = _Current(status, claimed_by, attempts, row.fields, row.previous)
            else:
                out[rid] = _Current(status, claimed_by, attempts, _json(fields), _json(previous))
    return out


_JSON_COLUMNS = frozenset({"fields", "previous"})
_TIME_COLUMNS = frozenset({"updated_at", "claimed_at", "next_attempt_at", "done_at"})


def _update_outbox(conn: Connection, updates: list[dict[str, Any]]) -> None:
    """Apply ``{"id": ..., column: value}`` updates, one ``executemany`` per set of columns."""
    groups: dict[tuple[str, ...], list[tuple]] = {}
    times: dict[datetime, Any] = {}  # most rows share the marking's "now"
    for u in updates:
        cols = tuple(sorted(k for k in u if k != "id"))
        params = []
        for c in cols:
            v = u[c]
            if v is not None and c in _JSON_COLUMNS:
                v = db.json_dumps(v)
            elif v is not None and c in _TIME_COLUMNS:
                v = times.get(v) or times.setdefault(v, stored_time(conn, v))
            params.append(v)
        groups.setdefault(cols, []).append((*params, u["id"]))
    for cols, params in groups.items():
        sets = ", ".join(f"{c} = ?j" if c in _JSON_COLUMNS else f"{c} = ?" for c in cols)
        raw_many(conn, f"UPDATE outbox SET {sets} WHERE id = ?", params)


#: reason class of a record the platform did not take (a per-record result of a batch)
_FAILURE_CLASS = {"retry": "record_retry", "failed": "invalid", "gone": "gone"}


def _release(stop: _Stop) -> WriteResult:
    return WriteResult("release", stop.reason, retry_after=stop.retry_in)


_PRIORITY = ("gone", "merged", "failed", "retry", "release", "resend", "ok")


def _combine(results: list[WriteResult]) -> WriteResult:
    """One outcome for a write sent in several parts: the worst part decides."""
    return min(results, key=lambda r: _PRIORITY.index(r.status))


# --- claiming, recovery, folding ----------------------------------------------------------------


def claim(engine: Engine, source: str, worker: str, *, limit: int, now: datetime) -> list[Claimed]:
    """Claim up to ``limit`` due writes of ``source`` for ``worker`` (committed), oldest due
    first; a record that has a write in flight is skipped (its values go in order).

    One statement (``UPDATE ... RETURNING``) on the DBAPI cursor: claiming runs
    alongside the sending, and SQLAlchemy's per-row processing would slow the senders.
    On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets workers claim side by side, never the
    same write. ``status || ''`` keeps SQLite (without statistics) on the
    ``(source, external_id)`` index to find a record's write in flight, instead of
    reading every in-flight write through the status index for each candidate; the
    order ``(next_attempt_at, id)`` walks the ``(status, next_attempt_at)`` index and
    stops after ``limit`` rows, however large the outbox.
    """
    with db.write(engine) as conn:
        lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE SKIP LOCKED"
        at = stored_time(conn, now)
        rows = raw_rows(conn, (
            "UPDATE outbox SET status = 'in_flight', claimed_at = ?, claimed_by = ?, updated_at = ? "
            "WHERE id IN (SELECT id FROM outbox WHERE source = ? AND status = 'pending' "
            "AND next_attempt_at <= ? AND NOT EXISTS (SELECT 1 FROM outbox other "
            "WHERE other.source = outbox.source AND other.external_id = outbox.external_id "
            f"AND other.status || '' = 'in_flight') ORDER BY next_attempt_at, id LIMIT ?{lock}) "
            "RETURNING id, customer_id, external_id, fields, previous, attempts"),
            [at, worker, at, source, at, int(limit)])
    rows.sort()
    return [Claimed(rid, cid, source, ext, dict(_json(fields)), dict(_json(previous)), attempts,
                    stored=(fields, previous))
            for rid, cid, ext, fields, previous, attempts in rows]


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
    """``{source: {status: n}}`` for every open status (and retried: pending with attempts).

    Read from the ``(status, attempts, source, ...)`` index alone: after a full scoring
    pass the outbox holds a pending write per platform record, and through any other
    index this read every one of those rows (the Operations page, ``cx-connector outbox``).
    """
    out: dict[str, dict[str, int]] = {}
    with db.read(engine) as conn:
        for source, status, attempts, n in conn.execute(
                select(outbox.c.source, outbox.c.status, outbox.c.attempts, func.count())
                .where(outbox.c.status.in_(["pending", "in_flight", "dead"]))
                .group_by(outbox.c.status, outbox.c.attempts, outbox.c.source)):
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
