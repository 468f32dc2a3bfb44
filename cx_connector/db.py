"""Engines, transactions and the migration check.

SQLite is the embedded default: WAL mode (readers never block the writer), foreign
keys on, ``synchronous=NORMAL`` (a committed transaction survives the process being
killed; only an OS crash can lose the last commits), and a busy timeout so
concurrent gunicorn workers wait for the write lock instead of failing.

Write transactions on SQLite start with ``BEGIN IMMEDIATE`` (:func:`write`): a
deferred transaction that reads first and writes later cannot wait for the lock
in WAL mode and would fail with "database is locked" under concurrency.

PostgreSQL runs through psycopg 3 (``postgresql+psycopg://``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from importlib.resources import files
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc

from cx_connector.errors import DatabaseUnavailable, NotMigrated

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
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    kw.setdefault("pool_pre_ping", True)
    kw.setdefault("pool_size", 5)
    kw.setdefault("max_overflow", 5)
    return create_engine(url, json_serializer=json_dumps, **kw)


class _SqliteWriterLock:
    """Queue SQLite writers in the kernel instead of in SQLite's busy handler.

    With several gunicorn workers, SQLite's busy handler makes a waiting writer sleep
    1, 2, 5, 10... ms between retries, so one contended commit costs tens of
    milliseconds. An ``flock`` on a side file wakes the next writer the moment the
    lock is released. The side file (never the database file: closing any descriptor
    of it would drop SQLite's own POSIX locks) is opened once per process (re-opened
    after a fork); a thread lock orders the threads of one process, which share it.
    """

    def __init__(self, path: str) -> None:
        self.path = path + "-cxlock"
        self.thread_lock = threading.Lock()
        self.pid = -1
        self.fd = -1

    @contextmanager
    def held(self) -> Iterator[None]:
        with self.thread_lock:
            if self.pid != os.getpid():
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self.pid = os.getpid()
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)


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
        with lock.held(), _write(engine) as conn:
            yield conn


@contextmanager
def _write(engine: Engine) -> Iterator[Connection]:
    try:
        with engine.connect() as conn:
            if is_sqlite(engine):
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
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


def is_connection_error(exc: BaseException) -> bool:
    """True for 'the database is not there' (as opposed to a bug in a statement)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
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
