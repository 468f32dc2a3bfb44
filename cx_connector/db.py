"""Engines, transactions and the migration check.

SQLite is the embedded default: WAL mode (readers never block the writer), foreign
keys on, ``synchronous=NORMAL`` (a committed transaction survives the process being
killed; only an OS crash can lose the last commits), and a busy timeout so
concurrent gunicorn workers wait for the write lock instead of failing.

Write transactions on SQLite start with ``BEGIN IMMEDIATE`` (:func:`write`): a
deferred transaction that reads first and writes later cannot wait for the lock
in WAL mode and would fail with "database is locked" under concurrency.

PostgreSQL runs through psycopg 3 (``postgresql+psycopg://``), with client-side
timeouts so that an unreachable server is an error within seconds, not a hang of
minutes (:data:`PG_CONNECT_DEFAULTS`; each can be overridden in the URL's query
string, e.g. ``?connect_timeout=10``), and ``pool_pre_ping`` so that connections
broken by a server restart or failover are replaced on their next use, without
restarting the process.

**Deadlines.** A webhook is worthless to the platform after 5 s (HubSpot, Shopify):
it has given up and will retry. A transaction on an engine made by :func:`deadline`
therefore waits at most that long for a lock, and each statement runs at most that
long (PostgreSQL: ``SET LOCAL statement_timeout`` and ``lock_timeout``; SQLite: the
writer lock and ``busy_timeout``); past it, the request answers 503 with
``Retry-After`` instead of hanging. Jobs and CLI commands use the plain engine and
wait as long as they need.

**Group commit.** Webhooks are stored with :func:`write_grouped`: the threads of a
process share write transactions (each webhook in its own savepoint), and on SQLite the
WAL checkpoints of those writers run in a background thread (:class:`_Checkpointer`)
instead of inside a commit.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from functools import cache, lru_cache
from importlib.resources import files
from typing import Any, TypeVar

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc

from cx_connector.errors import DatabaseUnavailable, NotMigrated

T = TypeVar("T")
log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # not on Windows: SQLite's busy handler alone then
    fcntl = None  # type: ignore[assignment]


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_ENCODER = json.JSONEncoder(default=_json_default, separators=(",", ":"), ensure_ascii=False)


def json_dumps(value: Any) -> str:
    """JSON for the database and the CLI: Decimals as strings, datetimes ISO-8601.

    One encoder for every call: building one per call cost a third of the time of
    serialising a scoring pass's 100,000 outbox rows."""
    return _ENCODER.encode(value)


def is_sqlite(engine_or_conn: Engine | Connection) -> bool:
    return engine_or_conn.dialect.name == "sqlite"


#: libpq connection parameters set unless the URL sets them: give up connecting after
#: 3 s; notice a dead peer on an idle pooled connection within ~20 s (keepalives) and
#: on a busy one within 5 s (``tcp_user_timeout``: sent data unacknowledged that long).
PG_CONNECT_DEFAULTS: dict[str, int] = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,
}

#: SQLite: how long a connection waits for a lock held by another one (no deadline)
SQLITE_BUSY_TIMEOUT_MS = 30000


def make_engine(url: str, **kw: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            json_serializer=json_dumps,
            connect_args={"timeout": 30, "check_same_thread": False},
            **kw,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module doc)
            cur = dbapi_conn.cursor()
            if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # on the DBAPI cursor (raw_rows): through exec_driver_sql, the BEGIN of every
            # transaction cost ~20 us more, in SQLAlchemy's statement machinery
            options = conn.get_execution_options()
            busy = int(options.get("cx_deadline", SQLITE_BUSY_TIMEOUT_MS / 1000) * 1000)
            info = conn.connection.info  # lives as long as the DBAPI connection
            if info.get("cx_busy") != busy:  # a pooled connection serves both kinds
                raw_rows(conn, f"PRAGMA busy_timeout={busy}")
                info["cx_busy"] = busy
            raw_rows(conn, f"BEGIN {options.get('sqlite_begin', 'DEFERRED')}")

        return engine
    kw.setdefault("pool_pre_ping", True)
    kw.setdefault("pool_size", 5)
    kw.setdefault("max_overflow", 5)
    connect_args = kw.pop("connect_args", {})
    query = _url_query(url)
    connect_args = {**{k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in query}, **connect_args}
    engine = create_engine(url, json_serializer=json_dumps, connect_args=connect_args, **kw)

    @event.listens_for(engine, "begin")
    def _pg_begin(conn: Connection) -> None:
        seconds = conn.get_execution_options().get("cx_deadline")
        if seconds:
            ms = int(seconds * 1000)
            conn.exec_driver_sql(f"SELECT set_config('statement_timeout', '{ms}', true), "
                                 f"set_config('lock_timeout', '{ms}', true)")

    return engine


def _url_query(url: str) -> set[str]:
    from sqlalchemy.engine import make_url

    return set(make_url(url).query)


def deadline(engine: Engine, seconds: float) -> Engine:
    """The same engine (same pool) whose transactions give up after ``seconds``.

    Waiting for a lock (SQLite's writer lock, a PostgreSQL row or table lock) and each
    statement are bounded by it; past it, :func:`write` and :func:`read` raise
    :class:`DatabaseUnavailable` (HTTP 503 with ``Retry-After``). One engine object per
    value, made once (the web app asks for it on every request).
    """
    cache = engine.__dict__.setdefault("_cx_deadlines", {})
    try:
        return cache[seconds]
    except KeyError:
        return cache.setdefault(seconds, engine.execution_options(cx_deadline=seconds))


class _SqliteWriterLock:
    """Queue SQLite writers in the kernel instead of in SQLite's busy handler.

    With several gunicorn workers, SQLite's busy handler makes a waiting writer sleep
    1, 2, 5, 10... ms between retries, so one contended commit costs tens of
    milliseconds. An ``flock`` on a side file wakes the next writer the moment the
    lock is released. The side file (never the database file: closing any descriptor
    of it would drop SQLite's own POSIX locks) is opened once per process (re-opened
    after a fork); a thread lock orders the threads of one process, which share it.

    A writer with a deadline (a webhook) must not wait forever, and the kernel offers
    no ``flock`` with a timeout: a helper thread waits in the kernel's queue on its
    behalf (keeping the queue's prompt hand-over), and the writer waits for the
    helper only until its deadline. A helper whose writer gave up releases the lock
    as soon as it gets it, or hands it to the next writer of the process if one came.
    The helper is one thread per process, started on the first contended write and
    kept (starting a thread per contended write cost ~150 us of CPU each time, and with
    two workers most grouped writes find the other holding the lock).
    The flock only queues writers: SQLite's own locking (``BEGIN IMMEDIATE``) is what
    keeps them apart, so no path here can let two writes interleave.
    """

    def __init__(self, path: str) -> None:
        self.path = path + "-cxlock"
        self.thread_lock = threading.Lock()
        self.pid = -1
        self.fd = -1
        self._mutex = threading.Lock()  # guards the helper's state below
        self._helper: threading.Thread | None = None
        self._queued = False  # the helper waits in the kernel's queue (or is about to)
        self._abandoned = False
        self._granted = threading.Event()
        self._wanted = threading.Event()

    @contextmanager
    def held(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock; with ``timeout`` (seconds), give up after that long waiting."""
        end = None if timeout is None else time.monotonic() + timeout
        if not self.thread_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise DatabaseUnavailable(f"database busy: no write slot within {timeout:g} s")
        try:
            if self.pid != os.getpid():  # first use, or a forked child: no helper thread yet
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self.pid = os.getpid()
                self._helper, self._queued, self._abandoned = None, False, False
                self._granted, self._wanted = threading.Event(), threading.Event()
            self._lock(end, timeout)
            try:
                yield
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.thread_lock.release()

    def _lock(self, end: float | None, timeout: float | None) -> None:
        with self._mutex:
            adopt = self._queued  # the helper of a writer that gave up is queued
            if adopt:
                self._abandoned = False
        if not adopt:
            if end is None:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
                return
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            with self._mutex:
                self._queued = True
            if self._helper is None:
                self._helper = threading.Thread(target=self._serve, args=(self._wanted,),
                                                daemon=True, name="cx-sqlite-writer-lock")
                self._helper.start()
            self._wanted.set()
        if self._granted.wait(None if end is None else max(0.0, end - time.monotonic())):
            self._granted.clear()
            return
        with self._mutex:
            if self._granted.is_set():  # granted just now
                self._granted.clear()
                return
            self._abandoned = True
        raise DatabaseUnavailable(f"database busy: no write slot within {timeout:g} s")

    def _serve(self, wanted: threading.Event) -> None:
        """The helper: each time a writer asks, wait in the kernel's queue for the lock and
        hand it over (or release it at once when that writer gave up meanwhile)."""
        while True:
            wanted.wait()
            wanted.clear()
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            with self._mutex:
                self._queued = False
                if self._abandoned:
                    self._abandoned = False
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
                else:
                    self._granted.set()


_writer_locks: dict[str, _SqliteWriterLock] = {}
_writer_locks_guard = threading.Lock()


def _writer_lock(engine: Engine) -> _SqliteWriterLock | None:
    path = engine.url.database
    if not is_sqlite(engine) or not path or path == ":memory:" or fcntl is None:
        return None
    with _writer_locks_guard:
        lock = _writer_locks.get(path)
        if lock is None:
            lock = _writer_locks[path] = _SqliteWriterLock(os.path.abspath(path))
        return lock


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on error.

    Database connection failures become :class:`DatabaseUnavailable` (HTTP 503).
    """
    lock = _writer_lock(engine)
    if lock is None:
        with _write(engine) as conn:
            yield conn
    else:
        with lock.held(engine.get_execution_options().get("cx_deadline")), _write(engine) as conn:
            yield conn
        if _checkpointers:
            _Checkpointer.after_commit(engine)


def _immediate(engine: Engine) -> Engine:
    """SQLite: the same engine whose transactions start with ``BEGIN IMMEDIATE`` (made once
    per engine: setting the option on each connection copied the connection every time)."""
    if not is_sqlite(engine):
        return engine
    try:
        return engine.__dict__["_cx_immediate"]
    except KeyError:
        return engine.__dict__.setdefault("_cx_immediate",
                                          engine.execution_options(sqlite_begin="IMMEDIATE"))


@contextmanager
def _write(engine: Engine) -> Iterator[Connection]:
    try:
        with _immediate(engine).connect() as conn, conn.begin():
            yield conn
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        if is_connection_error(exc):
            raise DatabaseUnavailable(f"database unavailable: {type(exc.orig).__name__}") from exc
        raise


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    try:
        with engine.connect() as conn, conn.begin():
            yield conn
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        if is_connection_error(exc):
            raise DatabaseUnavailable(f"database unavailable: {type(exc.orig).__name__}") from exc
        raise


class _Job:
    """One caller's work in a shared write transaction (:func:`write_grouped`)."""

    __slots__ = ("context", "done", "error", "result", "work")

    def __init__(self, work: Callable[[Connection], Any]) -> None:
        self.work = work
        self.context = contextvars.copy_context()  # the caller's request id, for its log lines
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class _GroupCommit:
    """Write transactions of the threads of one process, committed together.

    Each caller queues its work; the first caller that finds no transaction in progress
    leads: it takes every queued work, runs them in one transaction (each in its own
    savepoint) and commits; the callers that queued meanwhile wait, then the next one
    leads with whatever queued during that commit. A caller gets its result only after
    the transaction holding its work has committed.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pid = os.getpid()
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._leading = False
        self.checkpointer = _Checkpointer.for_engine(engine)
        #: why the last transaction found the database unreachable (see is_unreachable)
        self._down: DatabaseUnavailable | None = None
        #: until when (monotonic) new works fail at once after that (UNREACHABLE_FAIL_FAST)
        self._down_until = 0.0
        self._down_reason = ""

    def run(self, work: Callable[[Connection], T], timeout: float | None) -> T:
        job = _Job(work)
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if time.monotonic() < self._down_until:
                raise DatabaseUnavailable(self._down_reason)
            self._queue.append(job)
            while self._leading and not job.done:
                queued = job in self._queue
                left = None if end is None or not queued else end - time.monotonic()
                if left is not None and left <= 0:  # still not taken: give up, nothing was written
                    self._queue.remove(job)
                    raise DatabaseUnavailable(f"database busy: no write slot within {timeout:g} s")
                self._cond.wait(left)
            batch: list[_Job] = []
            if not job.done:  # ours to lead: everything queued so far, our own work included
                self._leading = True
                batch, self._queue = self._queue, []
        if batch:
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    for j in batch:
                        j.done = True
                    if self._down is not None:
                        # the database is unreachable: the works that queued meanwhile would
                        # otherwise wait for this attempt and then for one of their own
                        # (connections hang until libpq's connect_timeout when the host is
                        # down), answering past the platforms' 5 s. They fail now, having
                        # written nothing; the next work to come makes the next attempt.
                        for j in self._queue:
                            j.error, j.done = DatabaseUnavailable(str(self._down)), True
                        self._down_until = time.monotonic() + UNREACHABLE_FAIL_FAST
                        self._down_reason = str(self._down)
                        self._queue, self._down = [], None
                    self._leading = False
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _commit(self, batch: list[_Job], *, again: bool = True) -> None:
        """One transaction for ``batch``. A work the database picked as a deadlock victim
        (or a serialisation failure) is run once more, in a transaction of its own after
        this one has committed: its locks were released with its savepoint, but the
        locks of the works before it are held until the commit, so running it again at
        once would only wait for the same lock. Two workers' groups of webhooks for the
        same customers in different orders do deadlock on PostgreSQL; without this, the
        victim's webhooks were answered 503 (the outage test's retries saw it)."""
        jobs, ok, victims = list(batch), [], []
        try:
            with write(self.engine) as conn:
                if self.checkpointer is not None:
                    self.checkpointer.adopt(conn)
                if len(batch) == 1:  # alone: its error rolls the transaction back, no savepoint needed
                    batch[0].result = batch[0].context.run(batch[0].work, conn)
                    ok.append(batch[0])
                    batch = []
                for job in batch:
                    raw_rows(conn, "SAVEPOINT cx_grouped")
                    try:
                        job.result = job.context.run(job.work, conn)
                    except Exception as exc:
                        if again and is_deadlock_victim(exc):
                            raw_rows(conn, "ROLLBACK TO SAVEPOINT cx_grouped")  # its locks go now
                            victims.append(job)
                        elif isinstance(exc, sa_exc.DBAPIError) and is_connection_error(exc):
                            raise  # the whole transaction is lost
                        else:
                            raw_rows(conn, "ROLLBACK TO SAVEPOINT cx_grouped")  # only this work
                            job.error = exc
                    else:
                        ok.append(job)
                    raw_rows(conn, "RELEASE SAVEPOINT cx_grouped")
        except BaseException as exc:  # nothing was committed: every work that had succeeded fails
            if again and len(jobs) == 1 and is_deadlock_victim(exc):  # rolled back whole: run it again
                jobs[0].result = None
                self._commit(jobs, again=False)
                return
            # (the COMMIT itself may be what failed: a work alone in its transaction is in
            # ``ok`` too, or its caller would be answered as if stored)
            if is_unreachable(exc):
                with self._cond:
                    self._down = DatabaseUnavailable(
                        f"{exc}" if isinstance(exc, DatabaseUnavailable)
                        else f"database unavailable: {type(exc).__name__}")
            for job in ok:
                job.result, job.error = None, exc
            for job in batch:
                if job.error is None:
                    job.error = exc
            if not isinstance(exc, Exception):
                raise
            return
        if victims:
            self._commit(victims, again=False)


#: SQLSTATEs of a transaction the database gave up so that another could go on (a deadlock
#: victim, a serialisation failure): everything it wrote was undone, and the same work run
#: again is expected to succeed
_VICTIM_SQLSTATES = {"40P01", "40001"}


def is_deadlock_victim(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, DatabaseUnavailable) else exc
    return getattr(getattr(cause, "orig", None), "sqlstate", None) in _VICTIM_SQLSTATES


#: seconds after a transaction found the database unreachable during which new webhooks of
#: the process fail at once: the requests that waited for a free thread while every
#: thread waited for that attempt get their threads in the same instant, and would
#: otherwise wait for one more attempt (up to libpq's connect_timeout) each
UNREACHABLE_FAIL_FAST = 0.25


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the server could not be reached or the connection was lost,
    as opposed to a lock or a deadline inside a reachable database (those are per
    transaction: the next one may well succeed)."""
    cause = exc.__cause__ if isinstance(exc, DatabaseUnavailable) else exc
    if cause is None or not is_connection_error(cause):
        return False
    orig = getattr(cause, "orig", cause)
    if getattr(orig, "sqlstate", None) in _TRANSIENT_SQLSTATES:
        return False
    return "database is locked" not in str(orig).lower()


#: seconds between a grouped commit and the background checkpoint that follows it
CHECKPOINT_AFTER = 0.5
#: seconds without a commit after which the checkpoint thread ends
CHECKPOINT_IDLE = 60.0
_checkpointers: dict[str, _Checkpointer] = {}


class _Checkpointer:
    """SQLite: the WAL checkpoints of a process's grouped writers, in a background thread.

    SQLite checkpoints automatically in the connection whose commit pushed the WAL past
    1,000 pages, inside that commit: it copies the pages into the database file and
    fsyncs it, which takes milliseconds to a tenth of a second on a busy disk (1 % of
    the commits of a webhook burst took 55 % of all commit time), while that writer still
    holds the writer queue, so every webhook of every worker waits. The connections of
    :func:`write_grouped` therefore do not checkpoint; this thread does, half a second
    after commits, with a PASSIVE checkpoint on a connection of its own, which never
    blocks a writer or a reader. Other processes (the clock, the CLI) keep SQLite's own
    checkpoints, and the last connection to close checkpoints whatever is left.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pid = os.getpid()
        self._due = threading.Event()
        self._lock = threading.Lock()
        self._running = False  # the thread runs while there are commits, then ends

    @classmethod
    def for_engine(cls, engine: Engine) -> _Checkpointer | None:
        """The process's checkpointer of this SQLite file (made on first use)."""
        path = engine.url.database
        if not is_sqlite(engine) or not path or path == ":memory:":
            return None
        key = os.path.abspath(path)
        with _writer_locks_guard:
            found = _checkpointers.get(key)
            if found is None or found.pid != os.getpid():  # a fork's copy has no thread
                found = _checkpointers[key] = cls(engine)
            return found

    @staticmethod
    def after_commit(engine: Engine) -> None:
        """Any write of this process may have used a connection that leaves checkpoints
        to the thread: have it run one."""
        path = engine.__dict__.get("_cx_abspath")
        if path is None:
            path = engine.__dict__["_cx_abspath"] = os.path.abspath(engine.url.database or "")
        found = _checkpointers.get(path)
        if found is not None and found.pid == os.getpid():
            found._poke()

    def _poke(self) -> None:
        with self._lock:
            self._due.set()
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, daemon=True, name="cx-sqlite-checkpoint").start()

    def adopt(self, conn: Connection) -> None:
        """Leave this connection's checkpoints to the thread (once per DBAPI connection)."""
        info = conn.connection.info
        if not info.get("cx_checkpointer"):
            raw_rows(conn, "PRAGMA wal_autocheckpoint=0")
            info["cx_checkpointer"] = True

    def _run(self) -> None:
        while True:
            if not self._due.wait(CHECKPOINT_IDLE):
                with self._lock:
                    if not self._due.is_set():  # no commit for a while: end (restarted on the next)
                        self._running = False
                        return
            time.sleep(CHECKPOINT_AFTER)  # commits meanwhile join this checkpoint
            self._due.clear()
            try:
                raw = self.engine.raw_connection()  # autocommit: no transaction around it
                try:
                    cur = raw.cursor()
                    cur.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    cur.close()
                finally:
                    raw.close()
            except Exception as exc:  # the database away: the next commit asks again (and
                # SQLite checkpoints when the last connection closes); nothing is lost, and the
                # outage itself shows in the webhooks' 503s and /healthz
                log.info("SQLite WAL checkpoint failed, tried again after the next commit: %s", exc)


def write_grouped(engine: Engine, work: Callable[[Connection], T]) -> T:
    """``work(conn)`` in a write transaction shared with other threads of this process
    (group commit); returns its result once that transaction has committed.

    Why: on SQLite a write transaction costs far more than the few statements a webhook
    runs (the writer lock, BEGIN IMMEDIATE, the commit's WAL write), and the writers of a
    process queue for the lock one by one; several requests in one transaction share
    that cost, and the lock is taken once per transaction. On PostgreSQL they share the
    commit's WAL flush.

    Isolation: each work runs in its own savepoint. A work that raises is rolled back to
    it (the others are unaffected) and its exception is raised to its own caller, after
    the others committed. A lost connection or a failed commit fails every work of the
    transaction: nothing of it was committed, and each caller gets the exception (a
    connection error becomes :class:`DatabaseUnavailable` as with :func:`write`). With
    the engine's deadline (:func:`deadline`), a caller whose work was not taken into a
    transaction within it gives up with :class:`DatabaseUnavailable`, having written
    nothing. ``work`` runs in the caller's context (its request id) but maybe on another
    thread, so it must use only ``conn`` and what it was given.
    """
    group = engine.__dict__.get("_cx_group")
    if group is None or group.pid != os.getpid():  # a fork's copy is not ours
        with _groups_guard:
            group = engine.__dict__.get("_cx_group")
            if group is None or group.pid != os.getpid():
                group = engine.__dict__["_cx_group"] = _GroupCommit(engine)
    return group.run(work, engine.get_execution_options().get("cx_deadline"))


_groups_guard = threading.Lock()


#: SQLSTATEs that mean "try again" rather than "this statement is wrong": a statement
#: or lock timeout (a deadline passed), a serialisation failure, a deadlock victim
_TRANSIENT_SQLSTATES = {"57014", "55P03", "40001", "40P01"}


def is_connection_error(exc: BaseException) -> bool:
    """True for 'the database is not there, or not answering in time' (as opposed to a
    bug in a statement): the caller answers 503 and the work is retried."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if getattr(getattr(exc, "orig", None), "sqlstate", None) in _TRANSIENT_SQLSTATES:
        return True
    text = str(getattr(exc, "orig", exc)).lower()
    return any(s in text for s in (
        "connection refused", "could not connect", "server closed the connection",
        "terminating connection", "connection is closed", "the connection is lost",
        "unable to open database", "database is locked", "no route to host",
        "connection timeout", "timeout expired", "consuming input failed",
        "server conn crashed", "the database system is", "connection reset",
    ))


# --- migrations ----------------------------------------------------------------------------


def alembic_config(engine: Engine | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(files("cx_connector") / "migrations"))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Apply migrations; returns (revision before, revision after)."""
    from alembic import command

    before = current_revision(engine)
    command.upgrade(alembic_config(engine), revision)
    return before, current_revision(engine) or ""


def check_migrated(engine: Engine) -> None:
    """Refuse to run on a database whose schema does not match this release."""
    try:
        current = current_revision(engine)
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        if is_connection_error(exc):
            raise DatabaseUnavailable(
                f"cannot reach the database ({type(getattr(exc, 'orig', exc)).__name__}): "
                "check database_url and that the server is running") from exc
        raise
    head = head_revision()
    if current == head:
        return
    url = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise NotMigrated(f"the database {url} has no cx-connector tables yet: "
                          "run `cx-connector db upgrade` first")
    raise NotMigrated(f"the database {url} is at schema revision {current}, this release needs "
                      f"{head}: run `cx-connector db upgrade`")


def insert_ignore(conn: Connection, table: Any, conflict: list[str]) -> Any:
    """``INSERT ... ON CONFLICT (conflict) DO NOTHING`` for the connection's dialect.

    The statement is built once per dialect and table; pass the row(s) as execute
    parameters (not ``.values()``) so SQLAlchemy's compiled-statement cache is used.
    """
    return _insert_ignore(conn.dialect.name, table, tuple(conflict))


@cache
def _insert_ignore(dialect: str, table: Any, conflict: tuple[str, ...]) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing(index_elements=list(conflict))


def upsert(conn: Connection, table: Any, conflict: list[str], update: list[str]) -> Any:
    """``INSERT ... ON CONFLICT (conflict) DO UPDATE SET update = excluded.update``."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table)
    return stmt.on_conflict_do_update(index_elements=conflict,
                                      set_={c: stmt.excluded[c] for c in update})


# --- raw statements for the hot paths -------------------------------------------------------
# SQLAlchemy Core costs ~80 us of Python per statement (compiled-cache lookup, parameter
# and result processing); the DBAPI cursor ~5 us. The webhook request, the write-back's
# claim and marking and the scoring pass run a handful of fixed statements very often,
# so they use these helpers: ``?`` placeholders (``?j`` for a JSON value given as text),
# times through :func:`stored_time`, errors raised as SQLAlchemy's would be.


def _dialect_sql(conn: Connection, sql: str) -> str:
    return _translated(conn.dialect.name == "sqlite", sql)


@lru_cache(maxsize=1024)
def _translated(sqlite: bool, sql: str) -> str:
    """The statement in the driver's placeholders (the webhook's few statements are the
    same text each time: translated once)."""
    if sqlite:
        return sql.replace("?j", "?")
    return sql.replace("?j", "%s::jsonb").replace("?", "%s")


def raw_rows(conn: Connection, sql: str, params: Any = ()) -> list[tuple]:
    """Run one statement on the transaction's DBAPI cursor; its rows (``[]`` for none)."""
    cur = conn.connection.dbapi_connection.cursor()
    try:
        cur.execute(_dialect_sql(conn, sql), params)
        return cur.fetchall() if cur.description else []
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, sql, exc) from exc
    finally:
        cur.close()


def raw_many(conn: Connection, sql: str, rows: list[tuple]) -> None:
    """``executemany`` on the transaction's DBAPI cursor."""
    cur = conn.connection.dbapi_connection.cursor()
    try:
        cur.executemany(_dialect_sql(conn, sql), rows)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, sql, exc) from exc
    finally:
        cur.close()


def _wrapped(conn: Connection, sql: str, exc: Exception) -> Exception:
    """A DBAPI error as SQLAlchemy would have raised it, so that callers (and :func:`write`,
    which turns a lost connection into ``DatabaseUnavailable``) treat it like any other."""
    dbapi_conn = conn.connection.dbapi_connection
    gone = conn.dialect.is_disconnect(exc, dbapi_conn, None)
    if gone:
        conn.invalidate(exc)
    return sa_exc.DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error,
                                      connection_invalidated=gone, dialect=conn.dialect)


def stored_time(conn: Connection, when: datetime | None) -> Any:
    """A time as a ``UTCDateTime`` column stores it (SQLite: naive UTC text)."""
    if when is None or conn.dialect.name != "sqlite":
        return when
    return _sqlite_time(when)


@lru_cache(maxsize=256)
def _sqlite_time(when: datetime) -> str:
    """(A webhook stores its one ``now`` in five columns: converted once.)"""
    # UTC, naive, as SQLAlchemy's SQLite DateTime writes it ("%Y-%m-%d %H:%M:%S.%f");
    # isoformat is faster than strftime
    offset = when.utcoffset()
    if offset is None:
        raise ValueError("naive datetime given to the database; use an aware UTC datetime")
    return (when - offset).replace(tzinfo=None).isoformat(" ", "microseconds")


def stored_json(value: Any) -> Any:
    """A JSON column's value as text, for a ``?j`` placeholder."""
    return None if value is None else json_dumps(value)


def loaded_json(value: Any) -> Any:
    """A JSON column as the DBAPI hands it back (SQLite: text, or a number the column's
    numeric affinity already converted; psycopg: parsed)."""
    return json.loads(value) if isinstance(value, str) else value
