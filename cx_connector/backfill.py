"""Backfill: a platform's history, imported through its API and stored like a webhook.

Webhooks only bring what happens after the connector is installed.
``cx-connector backfill SOURCE`` fetches the past page by page through the
connector's :meth:`~cx_connector.connector.Connector.backfill_page`, which maps API
records with the connector's own normalise code. This module is the
platform-agnostic driver:

* **Same path as webhooks.** Every page goes through :func:`cx_connector.inbox.store`:
  touchpoints are deduplicated on ``(source, touchpoint_id)`` and identities are
  resolved the same way, so a fact seen by a webhook and by the backfill is one row,
  whichever came first, and a record changed while the backfill runs is neither lost
  (its webhook is stored) nor doubled (same touchpoint id).
* **Resumable.** The page's touchpoints and the cursor after it are committed in one
  transaction (``backfill_state``), so a crash, a kill or Ctrl-C resumes at the next
  page (``--resume``) and a page is never stored twice. Re-running a finished backfill
  stores nothing new.
* **Within the rate limits.** The connector's :meth:`backfill_budgets` are enforced by
  :class:`~cx_connector.throttle.Limiter` (the connector waits on them before every
  request); a 429 sleeps ``Retry-After`` (exponential backoff when absent) and the same
  page is asked again; an outage (5xx, timeout) is retried with backoff, then the run
  stops with its cursor saved. Any other platform error (a refused token) stops at once.
* **A full scoring pass afterwards.** A finished backfill sets ``changed_at`` on every
  live customer (the incremental scoring pass rescores ``changed_at > scored_at``, so
  the next run scores everyone) and records a ``job_runs`` row ``job='backfill'`` with
  ``details.full_score_pass = true`` for jobs that keep population-level models.

Fresh run versus ``--resume``: a fresh run starts every chosen resource from the
beginning; it refuses while an earlier backfill of the same resources is unfinished
(``--resume`` continues it, ``--restart`` throws its cursors away). ``--resume``
continues each unfinished resource from its saved cursor, with the ``since`` it was
started with, and skips finished ones. One backfill per source runs at a time (a
database lease, ``backfill:<source>``).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from cx_connector import db, inbox, leases
from cx_connector.connector import BackfillPage, BackfillResource, Connector
from cx_connector.errors import (
    CxError,
    PlatformAPIError,
    PlatformRateLimited,
    PlatformUnavailable,
)
from cx_connector.metrics import stored
from cx_connector.models import backfill_state, customers, job_runs
from cx_connector.runtime import Runtime
from cx_connector.throttle import Clock, Limiter
from cx_connector.touchpoint import clean_text
from cx_connector.wording import counted

log = logging.getLogger(__name__)

#: outages (5xx, timeouts) of one page retried before the run stops (resumable)
MAX_ATTEMPTS = 6
#: 429s in a row on one page before the run stops (e.g. HubSpot's daily limit)
MAX_THROTTLED = 30
#: longest backoff between two attempts, in seconds
MAX_BACKOFF = 60.0
#: skip reasons kept in the summary (all of them are logged)
MAX_SKIPPED_SHOWN = 50

UNFINISHED = ("pending", "running", "failed", "interrupted")


class BackfillRefused(CxError):
    """The backfill cannot start as asked (unfinished run, nothing to resume, ...)."""

    exit_code = 2
    code = "backfill_refused"


@dataclass(frozen=True)
class Progress:
    """What the progress reporter (the CLI's bar or log lines) is told.

    ``kind``: ``start`` (a resource begins), ``page`` (a page was stored), ``wait``
    (sleeping after a 429 or an outage; ``message`` says why), ``done``, ``failed``,
    ``interrupted``, ``skip`` (a resource already finished, on ``--resume``).
    ``records``/``pages`` count the resource in total (earlier runs included);
    ``rate`` is records per second in this run; ``eta`` seconds, when known.
    """

    kind: str
    source: str
    resource: str
    pages: int = 0
    records: int = 0
    touchpoints: int = 0
    remaining: int | None = None
    rate: float | None = None
    eta: float | None = None
    message: str = ""


Reporter = Callable[[Progress], None]


@dataclass
class _Resource:
    name: str
    since: datetime | None
    cursor: str | None
    pages: int = 0
    records: int = 0
    status: str = "pending"
    run_pages: int = 0
    run_records: int = 0
    touchpoints: int = 0
    skipped: list[str] = field(default_factory=list)
    skipped_count: int = 0
    error: str | None = None
    remaining: int | None = None
    started: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"resource": self.name, "status": self.status, "pages": self.pages,
                "records": self.records, "pages_this_run": self.run_pages,
                "records_this_run": self.run_records, "new_touchpoints": self.touchpoints,
                "skipped": self.skipped_count, "skipped_reasons": self.skipped[:MAX_SKIPPED_SHOWN],
                "error": self.error, "since": self.since}


class _Stop(Exception):
    def __init__(self, status: str, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


def resources_of(connector: Connector | type[Connector]) -> tuple[BackfillResource, ...]:
    """What a connector (instance or class) can backfill; empty: it has no history API."""
    return tuple(connector.backfill_resources)


def state(rt: Runtime, source: str | None = None) -> list[dict[str, Any]]:
    """The saved backfill state rows (all sources, or one)."""
    q = select(backfill_state).order_by(backfill_state.c.source, backfill_state.c.started_at)
    if source:
        q = q.where(backfill_state.c.source == source)
    with db.read(rt.engine) as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def run(rt: Runtime, source: str, *, since: datetime | None = None, resume: bool = False,
        restart: bool = False, only: Iterable[str] | None = None, clock: Clock | None = None,
        report: Reporter | None = None, max_attempts: int = MAX_ATTEMPTS,
        max_throttled: int = MAX_THROTTLED) -> dict[str, Any]:
    """Backfill ``source`` (see the module docstring); returns the run's summary.

    ``status`` of the summary: ``ok`` (every chosen resource finished), ``failed``
    (stopped on a platform error; ``error`` says which; resumable) or ``interrupted``
    (Ctrl-C; resumable). Raises :class:`BackfillRefused` when it cannot start.
    """
    if resume and restart:
        raise BackfillRefused("--resume and --restart exclude each other: resume continues the "
                              "saved cursors, restart throws them away")
    if resume and since is not None:
        raise BackfillRefused("--since cannot be given with --resume: a resumed backfill keeps the "
                              "--since it was started with (use --restart to change it)")
    connector = rt.connector(source)
    available = resources_of(connector)
    if not available:
        raise BackfillRefused(f"connector {source} cannot backfill: it has no API to import history "
                              "from")
    names = [r.name for r in available]
    chosen = list(dict.fromkeys(only or ()))
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise BackfillRefused(f"{source} has no backfill resource {', '.join(unknown)} "
                              f"(it has: {', '.join(names)})")
    wanted = [n for n in names if not chosen or n in chosen]
    clock = clock or Clock()
    report = report or (lambda _p: None)
    with leases.Held(rt.engine, f"backfill:{source}", timedelta(minutes=5)) as held:
        if not held:
            raise BackfillRefused(f"another backfill of {source} is running right now; wait for it "
                                  "to finish (or for its lease to expire, 5 minutes after it died)")
        return _Run(rt, connector, wanted, since=since, resume=resume, restart=restart, clock=clock,
                    report=report, max_attempts=max_attempts, max_throttled=max_throttled).go()


class _Run:
    def __init__(self, rt: Runtime, connector: Connector, wanted: list[str], *,
                 since: datetime | None, resume: bool, restart: bool, clock: Clock,
                 report: Reporter, max_attempts: int, max_throttled: int) -> None:
        self.rt, self.connector, self.source = rt, connector, connector.name
        self.wanted, self.since, self.resume, self.restart = wanted, since, resume, restart
        self.clock, self.report = clock, report
        self.max_attempts, self.max_throttled = max_attempts, max_throttled
        self.limiters = {name: Limiter(budget, clock)
                         for name, budget in connector.backfill_budgets().items()}
        #: 429s answered by the platform, and the seconds waited after them (for /metrics)
        self.rate_limited = 0
        self.rate_limit_seconds = 0.0

    # -- planning --------------------------------------------------------------------

    def _saved(self) -> dict[str, dict[str, Any]]:
        with db.read(self.rt.engine) as conn:
            rows = conn.execute(select(backfill_state).where(
                backfill_state.c.source == self.source,
                backfill_state.c.resource.in_(self.wanted))).mappings().all()
        return {r["resource"]: dict(r) for r in rows}

    def plan(self) -> tuple[list[_Resource], list[str]]:
        """The resources to work on (with their starting cursors) and those already done."""
        saved = self._saved()
        now = self.rt.now()
        if self.resume:
            if not saved:
                raise BackfillRefused(f"there is no backfill of {self.source} to resume: run "
                                      f"`cx-connector backfill {self.source}` to start one")
            todo = [_Resource(n, saved[n]["since"], saved[n]["cursor"], saved[n]["pages"],
                              saved[n]["records"]) for n in self.wanted
                    if n in saved and saved[n]["status"] != "done"]
            done = [n for n in self.wanted if n in saved and saved[n]["status"] == "done"]
            return todo, done
        unfinished = [r for r in saved.values() if r["status"] in UNFINISHED]
        if unfinished and not self.restart:
            what = "; ".join(f"{r['resource']}: {r['status']} after {counted(r['pages'], 'page')}, "
                             f"{counted(r['records'], 'record')}" for r in unfinished)
            raise BackfillRefused(
                f"an earlier backfill of {self.source} did not finish ({what}). Continue it with "
                f"`cx-connector backfill {self.source} --resume`, or start over with --restart")
        with db.write(self.rt.engine) as conn:
            for name in self.wanted:
                row = {"cursor": None, "since": self.since, "status": "pending", "pages": 0,
                       "records": 0, "started_at": now, "updated_at": now, "finished_at": None,
                       "error": None}
                if name in saved:
                    conn.execute(update(backfill_state).where(
                        backfill_state.c.source == self.source,
                        backfill_state.c.resource == name).values(**row))
                else:
                    conn.execute(backfill_state.insert().values(source=self.source, resource=name,
                                                                **row))
        return [_Resource(n, self.since, None) for n in self.wanted], []

    # -- running ---------------------------------------------------------------------

    def go(self) -> dict[str, Any]:
        started_at = self.rt.now()
        t0 = self.clock.monotonic()
        todo, done = self.plan()
        for name in done:
            self.report(Progress("skip", self.source, name, message="already finished"))
        status, error = "ok", None
        finished: list[_Resource] = []
        for res in todo:
            finished.append(res)
            try:
                self._resource(res)
            except _Stop as stop:
                status, error = stop.status, stop.error
                break
        marked = 0
        if status == "ok" and todo:
            with db.write(self.rt.engine) as conn:
                marked = request_full_score_pass(conn, self.rt.now())
        summary = {
            "source": self.source, "status": status, "error": error, "resumed": self.resume,
            "since": todo[0].since if todo else self.since,
            "resources": [r.summary() for r in finished],
            "already_finished": done,
            "not_started": [r.name for r in todo if r not in finished],
            "records": sum(r.run_records for r in finished),
            "pages": sum(r.run_pages for r in finished),
            "new_touchpoints": sum(r.touchpoints for r in finished),
            "skipped": sum(r.skipped_count for r in finished),
            "full_score_pass": status == "ok" and bool(todo),
            "customers_marked": marked,
            "duration_s": round(self.clock.monotonic() - t0, 3),
        }
        if todo:
            self._record_job(summary, started_at)
        log.info("backfill finished" if status == "ok" else f"backfill {status}",
                 extra={"source": self.source, "status": status, "records": summary["records"],
                        "new_touchpoints": summary["new_touchpoints"]})
        return summary

    def _resource(self, res: _Resource) -> None:
        res.started = self.clock.monotonic()
        self._save(res, status="running")
        self.report(self._progress("start", res))
        try:
            while True:
                page = self._fetch(res)
                self._store(res, page)
                if page.done:
                    break
                if page.cursor is None or page.cursor == res.cursor:
                    raise _Stop("failed", f"{self.source} {res.name}: the connector returned no new "
                                          "cursor for a page that is not the last (a bug); stopped "
                                          "so that it does not loop")
                res.cursor = page.cursor
        except KeyboardInterrupt:
            res.status, res.error = "interrupted", "interrupted (Ctrl-C)"
            self._save(res, status="interrupted", error=res.error)
            self.report(self._progress("interrupted", res, message=self._resume_hint()))
            raise _Stop("interrupted", f"interrupted after {res.name} page {res.pages}; "
                                       + self._resume_hint()) from None
        except _Stop as stop:
            res.status, res.error = stop.status, stop.error
            self._save(res, status=stop.status, error=stop.error)
            self.report(self._progress(stop.status, res, message=stop.error))
            raise
        except PlatformAPIError as exc:
            msg = f"{exc.message}; fix the cause, then " + self._resume_hint()
            res.status, res.error = "failed", msg
            self._save(res, status="failed", error=msg)
            self.report(self._progress("failed", res, message=msg))
            raise _Stop("failed", msg) from exc
        except Exception as exc:  # a bug: keep the cursor, say so, and let it surface
            msg = f"{type(exc).__name__}: {exc}"
            res.status, res.error = "failed", msg
            self._save(res, status="failed", error=msg)
            log.exception("backfill crashed", extra={"source": self.source, "resource": res.name})
            raise
        res.status = "done"
        self.report(self._progress("done", res))

    def _resume_hint(self) -> str:
        return f"run `cx-connector backfill {self.source} --resume` to continue where it stopped"

    def _fetch(self, res: _Resource) -> BackfillPage:
        """One page, waiting out 429s and retrying outages on the same cursor."""
        attempts = throttled = 0
        while True:
            try:
                page = self.connector.backfill_page(res.name, res.cursor, since=res.since,
                                                    throttles=self.limiters, now=self.rt.now())
            except PlatformRateLimited as exc:
                throttled += 1
                self.rate_limited += 1
                if throttled > self.max_throttled:
                    raise _Stop("failed", f"{exc.message}: still rate limited after {throttled - 1} "
                                          f"waits; {self._resume_hint()} later") from exc
                wait = exc.retry_after if exc.retry_after is not None else _backoff(throttled)
                self.rate_limit_seconds += wait
                self._wait(res, wait, f"rate limited; waiting {wait:g} s (Retry-After)"
                           if exc.retry_after is not None else
                           f"rate limited; waiting {wait:g} s")
                continue
            except (PlatformUnavailable, json.JSONDecodeError) as exc:
                # an answer that is not JSON (a proxy's HTML error page with 200) is an outage too
                message = exc.message if isinstance(exc, PlatformUnavailable) else \
                    f"{self.source}: the answer was not JSON ({exc.msg})"
                attempts += 1
                if attempts >= self.max_attempts:
                    raise _Stop("failed", f"{message} ({counted(attempts, 'attempt')}); "
                                          + self._resume_hint()) from exc
                wait = _backoff(attempts)
                self._wait(res, wait, f"{message}; attempt {attempts + 1} in {wait:g} s")
                continue
            if not isinstance(page, BackfillPage):
                raise TypeError(f"{type(self.connector).__name__}.backfill_page returned "
                                f"{type(page).__name__}")
            return page

    def _wait(self, res: _Resource, seconds: float, message: str) -> None:
        for limiter in self.limiters.values():
            limiter.pause(seconds)
        self.report(self._progress("wait", res, message=message))
        # the progress report is what the admin reads (a line, or the bar on a terminal); a
        # wait is the platform's rate limit working as designed, so the log has it at info:
        # at warning the command printed every wait twice (and broke the bar)
        log.info("backfill waiting", extra={"source": self.source, "resource": res.name,
                                            "seconds": seconds, "reason": message})
        self.clock.sleep(seconds)

    def _store(self, res: _Resource, page: BackfillPage) -> None:
        now = self.rt.now()
        result = page.result
        with db.write(self.rt.engine) as conn:
            new = 0
            if result.touchpoints or result.actions:
                new = inbox.store(conn, self.source, result, delivery_id=None, now=now,
                                  actor="backfill")
                stored.touchpoints_imported(conn, self.source, "backfill", new, now)
            values: dict[str, Any] = {
                "pages": backfill_state.c.pages + 1,
                "records": backfill_state.c.records + page.records,
                "updated_at": now, "error": None,
                "status": "done" if page.done else "running",
            }
            if page.done:
                values["finished_at"] = now
                if page.cursor is not None:
                    values["cursor"] = clean_text(page.cursor)
            else:
                values["cursor"] = clean_text(page.cursor)
            conn.execute(update(backfill_state).where(
                backfill_state.c.source == self.source,
                backfill_state.c.resource == res.name).values(**values))
        res.pages += 1
        res.records += page.records
        res.run_pages += 1
        res.run_records += page.records
        res.touchpoints += new
        if page.skipped:
            res.skipped_count += len(page.skipped)
            room = MAX_SKIPPED_SHOWN - len(res.skipped)
            res.skipped += list(page.skipped[:max(0, room)])
            for reason in page.skipped:
                log.warning("backfill skipped a record", extra={
                    "source": self.source, "resource": res.name, "reason": reason})
        if page.remaining is not None:
            res.remaining = page.remaining
        elif res.remaining is not None:
            res.remaining = max(0, res.remaining - page.records)
        if page.done:
            res.remaining = 0
        self.report(self._progress("page", res))

    def _progress(self, kind: str, res: _Resource, message: str = "") -> Progress:
        elapsed = self.clock.monotonic() - res.started if res.started else 0.0
        rate = res.run_records / elapsed if elapsed > 0 and res.run_records else None
        eta = res.remaining / rate if rate and res.remaining is not None else None
        return Progress(kind, self.source, res.name, pages=res.pages, records=res.records,
                        touchpoints=res.touchpoints, remaining=res.remaining, rate=rate, eta=eta,
                        message=message)

    def _save(self, res: _Resource, *, status: str, error: str | None = None) -> None:
        try:
            with db.write(self.rt.engine) as conn:
                conn.execute(update(backfill_state).where(
                    backfill_state.c.source == self.source,
                    backfill_state.c.resource == res.name).values(
                        status=status, error=clean_text(error), updated_at=self.rt.now()))
        except Exception:  # the cursor is saved already; only the status label is lost
            log.warning("could not record the backfill's status", exc_info=True,
                        extra={"source": self.source, "resource": res.name})

    def _record_job(self, summary: dict[str, Any], started_at: datetime) -> None:
        details = {k: summary[k] for k in ("source", "status", "records", "pages", "new_touchpoints",
                                           "skipped", "full_score_pass", "customers_marked",
                                           "resumed")}
        details["resources"] = [r["resource"] for r in summary["resources"]]
        details["since"] = summary["since"].isoformat() if summary["since"] else None
        limiters = self.limiters.values()
        details["rate_limited"] = self.rate_limited
        details["waits"] = sum(limiter.waits for limiter in limiters) + self.rate_limited
        details["waited_seconds"] = round(sum(limiter.waited for limiter in limiters)
                                          + self.rate_limit_seconds, 3)
        finished = self.rt.now()
        record = {"job": "backfill", "started_at": started_at, "finished_at": finished,
                  "status": "ok" if summary["status"] == "ok" else "failed",
                  "duration_ms": int(summary["duration_s"] * 1000), "details": details}
        with db.write(self.rt.engine) as conn:
            conn.execute(job_runs.insert().values(
                **record, error=clean_text(summary["error"]), host=socket.gethostname()))
            stored.record_run(conn, record)


def request_full_score_pass(conn: Connection, now: datetime) -> int:
    """Make the next scoring run rescore every live customer: a backfill brings history
    for customers whose touchpoints did not change (population models, recency of
    everyone else), so an incremental pass over the touched ones would not do.
    Returns how many customers were marked."""
    return conn.execute(update(customers).where(
        customers.c.merged_into_id.is_(None), customers.c.redacted_at.is_(None))
        .values(changed_at=now)).rowcount or 0


def _backoff(attempt: int) -> float:
    return min(MAX_BACKOFF, float(2 ** attempt))


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: a date (``2024-01-31``, midnight UTC), an ISO time with or without a
    zone (UTC when none), or a duration back from now (``90d``, ``12w``)."""
    from datetime import UTC

    from marshmallow import ValidationError

    from cx_connector.connector import Duration

    value = text.strip()
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        when = None
    if when is not None:
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
        if when > now:
            raise BackfillRefused(f"--since {text} is in the future")
        return when
    try:
        span = Duration().deserialize(value)
    except ValidationError:
        raise BackfillRefused(f"--since {text!r}: use a date (2024-01-31), an ISO time "
                              "(2024-01-31T08:00:00Z) or a span back from now (90d, 12w)") from None
    return now - span
