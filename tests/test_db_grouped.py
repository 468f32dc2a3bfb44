"""Group commit (db.write_grouped): the webhooks of one process share write transactions.

Each work is isolated (its own savepoint), answered only after its transaction committed,
and a transaction that fails takes every work in it down with it (nothing of it committed).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from sqlalchemy import Connection, select
from sqlalchemy import exc as sa_exc

from cx_connector import audit, db, logs
from cx_connector.errors import DatabaseUnavailable
from cx_connector.models import audit_log
from tests.conftest import NOW


def _note(name: str) -> Any:
    def work(conn: Connection) -> str:
        audit.record(conn, actor="test", action=name, at=NOW)
        return name
    return work


def _actions(engine: Any) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(audit_log.c.action).where(audit_log.c.actor == "test")).scalars())


class _Caller(threading.Thread):
    """One thread calling write_grouped, with what it got back."""

    def __init__(self, engine: Any, work: Any) -> None:
        super().__init__(daemon=True)
        self.engine, self.work = engine, work
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = db.write_grouped(self.engine, self.work)
        except BaseException as exc:
            self.error = exc


def _queued(engine: Any, n: int) -> None:
    """Until ``n`` works wait for the transaction in progress to end."""
    for _ in range(500):
        group = engine.__dict__.get("_cx_group")
        with group._cond:
            if len(group._queue) >= n:
                return
        time.sleep(0.01)
    raise AssertionError(f"{n} works never queued")


def _behind_a_blocked_leader(engine: Any, works: list[Any]) -> tuple[_Caller, list[_Caller], threading.Event]:
    """A leader whose transaction is held open until the returned event is set, and
    ``works`` queued behind it: they then run together, in the next transaction."""
    release = threading.Event()

    def blocked(conn: Connection) -> str:
        release.wait(10)
        return _note("leader")(conn)

    leader = _Caller(engine, blocked)
    leader.start()
    for _ in range(500):
        group = engine.__dict__.get("_cx_group")
        if group is not None and group._leading:
            break
        time.sleep(0.01)
    callers = [_Caller(engine, w) for w in works]
    for c in callers:
        c.start()
    _queued(engine, len(works))
    return leader, callers, release


def test_one_caller_gets_its_result_once_committed(engine):
    assert db.write_grouped(engine, _note("alone")) == "alone"
    assert _actions(engine) == ["alone"]


def test_a_failing_work_is_rolled_back_alone_and_its_error_goes_to_its_caller(engine):
    def bad(conn: Connection) -> None:
        audit.record(conn, actor="test", action="half-done", at=NOW)
        raise ValueError("this payload cannot be stored")

    leader, (first, failing, last), release = _behind_a_blocked_leader(
        engine, [_note("first"), bad, _note("last")])
    release.set()
    for t in (leader, first, failing, last):
        t.join(10)
    assert (leader.result, first.result, last.result) == ("leader", "first", "last")
    assert isinstance(failing.error, ValueError) and failing.result is None
    assert _actions(engine) == ["first", "last", "leader"]  # nothing of the failed work


def test_a_lost_connection_fails_every_work_of_its_transaction_and_commits_none(engine):
    def connection_lost(conn: Connection) -> None:
        raise sa_exc.OperationalError("INSERT ...", {}, Exception("server closed the connection"),
                                      connection_invalidated=True)

    leader, (first, lost, last), release = _behind_a_blocked_leader(
        engine, [_note("first"), connection_lost, _note("last")])
    release.set()
    for t in (leader, first, lost, last):
        t.join(10)
    assert leader.result == "leader"
    for t in (first, lost, last):  # each caller answers 503; the platform retries
        assert t.result is None and isinstance(t.error, DatabaseUnavailable), t.error
    assert _actions(engine) == ["leader"]


def test_a_work_not_taken_within_the_deadline_gives_up_having_written_nothing(engine):
    bounded = db.deadline(engine, 0.3)
    ran = threading.Event()

    def late(conn: Connection) -> str:
        ran.set()
        return _note("late")(conn)

    leader, (waiting,), release = _behind_a_blocked_leader(bounded, [late])
    waiting.join(5)
    assert not waiting.is_alive() and isinstance(waiting.error, DatabaseUnavailable)
    release.set()
    leader.join(10)
    assert leader.result == "leader" and not ran.is_set()
    assert _actions(engine) == ["leader"]


def test_a_work_runs_in_its_callers_context(engine):
    """The request id of a line a work logs is its own request's, whichever thread runs it."""
    seen: dict[str, str | None] = {}

    def noting(name: str) -> Any:
        def work(conn: Connection) -> str:
            seen[name] = logs.request_id.get()
            return _note(name)(conn)
        return work

    class WithId(_Caller):
        def run(self) -> None:
            logs.request_id.set(f"rid-{self.name_}")
            super().run()

    callers = []
    leader, _, release = _behind_a_blocked_leader(engine, [])
    for name in ("a", "b"):
        c = WithId(engine, noting(name))
        c.name_ = name
        callers.append(c)
        c.start()
    _queued(engine, 2)
    release.set()
    for c in (leader, *callers):
        c.join(10)
    assert seen == {"a": "rid-a", "b": "rid-b"}


@pytest.mark.parametrize("n", [16])
def test_many_threads_each_get_their_own_result(engine, n):
    callers = [_Caller(engine, _note(f"w{i:02d}")) for i in range(n)]
    for c in callers:
        c.start()
    for c in callers:
        c.join(20)
    assert [c.result for c in callers] == [f"w{i:02d}" for i in range(n)]
    assert _actions(engine) == sorted(f"w{i:02d}" for i in range(n))


def test_sqlite_checkpoints_of_grouped_writes_run_in_the_background_not_in_the_commit(engine, monkeypatch):
    """A checkpoint (copying the WAL into the database file, with an fsync) never runs
    inside a webhook's commit, where every writer would wait for it; a background
    thread runs it shortly after."""
    if not db.is_sqlite(engine):
        pytest.skip("SQLite's WAL")
    monkeypatch.setattr(db, "CHECKPOINT_AFTER", 1.0)
    path = engine.url.database
    db.write_grouped(engine, _note("first"))  # the writer's connection now leaves checkpoints
    with engine.connect() as conn:  # to the thread: make the WAL empty to start from
        conn.connection.dbapi_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(path)
    for i in range(300):  # far more than SQLite's 1,000-page automatic checkpoint
        db.write_grouped(engine, lambda conn, i=i: audit.record(
            conn, actor="test", action=f"bulk{i}", at=NOW, details={"pad": "x" * 8000}))
    assert os.path.getsize(path) == size  # all in the WAL: no commit checkpointed
    for _ in range(100):
        if os.path.getsize(path) > size:
            break
        time.sleep(0.05)
    assert os.path.getsize(path) > size  # the background checkpoint copied it over
    assert len(_actions(engine)) == 301


def test_an_unreachable_database_fails_the_queued_webhooks_at_once_then_is_tried_again():
    """A database host that is down (connections hang until the connect timeout): the
    webhooks queued behind the attempt in progress fail with it instead of each waiting
    for an attempt of its own (which put answers past the platforms' 5 s in
    bench/load.py's dbaway run), and so do those that come in the same instant (they
    waited for a free thread); the next webhook after that makes the next attempt."""
    from tests.test_db_outage import load_dbproxy

    proxy = load_dbproxy().TcpProxy(("127.0.0.1", 9))  # never reached: the proxy hangs
    proxy.cut("hang")
    engine = db.make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/cx"
                            "?connect_timeout=1&sslmode=disable")
    try:
        hurried = db.deadline(engine, 3.0)
        start = time.monotonic()
        first = _Caller(hurried, _note("first"))
        first.start()
        time.sleep(0.3)  # the first leads: it is waiting for its connection
        queued = [_Caller(hurried, _note(f"queued {i}")) for i in range(3)]
        for c in queued:
            c.start()
        first.join(15)
        attempt = time.monotonic() - start  # one attempt (libpq may try twice: sslmode=prefer)
        for c in queued:
            c.join(15)
        took = time.monotonic() - start
        assert all(isinstance(c.error, DatabaseUnavailable) for c in [first, *queued])
        assert took < attempt + 0.3, \
            f"the queued works waited for attempts of their own ({took:.1f} s, one: {attempt:.1f} s)"

        at = time.monotonic()
        with pytest.raises(DatabaseUnavailable):  # a request that waited for a thread meanwhile
            db.write_grouped(hurried, _note("right after"))
        assert time.monotonic() - at < 0.1, "a work right after the failure made an attempt"

        time.sleep(db.UNREACHABLE_FAIL_FAST)
        at = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            db.write_grouped(hurried, _note("next"))
        assert time.monotonic() - at >= 0.8 * attempt, "the next work made no attempt of its own"
    finally:
        engine.dispose()
        proxy.close()


def test_a_lock_held_elsewhere_is_not_taken_for_an_unreachable_database():
    lock = sa_exc.OperationalError("BEGIN", {}, Exception("database is locked"))
    refused = sa_exc.OperationalError("connect", {}, Exception("connection refused"))
    assert not db.is_unreachable(DatabaseUnavailable("busy"))  # a deadline: no cause
    with pytest.raises(DatabaseUnavailable) as busy:
        try:
            raise lock
        except sa_exc.OperationalError as exc:
            raise DatabaseUnavailable("database unavailable") from exc
    assert not db.is_unreachable(busy.value)
    assert db.is_unreachable(refused)


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "grouped"])
def test_a_failed_commit_fails_every_work_of_its_transaction(engine, alone):
    """The COMMIT itself fails (the connection is lost on the way): no caller may get its
    result, or a webhook would be acknowledged 200 with nothing stored. A work alone in
    its transaction (no savepoint) once got its result regardless: the outage test saw
    one acknowledged event of ~600 missing."""
    from sqlalchemy import event

    commits = [0]
    fail_at = 1 if alone else 2  # grouped: the leader's own transaction commits, the next not

    def lost(conn: Connection) -> None:
        commits[0] += 1
        if commits[0] == fail_at:
            raise sa_exc.OperationalError("COMMIT", {}, Exception("server closed the connection"),
                                          connection_invalidated=True)

    event.listen(engine, "commit", lost)
    try:
        if alone:
            with pytest.raises(DatabaseUnavailable):
                db.write_grouped(engine, _note("alone"))
            assert _actions(engine) == []
        else:
            leader, callers, release = _behind_a_blocked_leader(engine, [_note("first"), _note("last")])
            release.set()
            leader.join(10)
            assert leader.result == "leader"
            for c in callers:
                c.join(10)
                assert c.result is None and isinstance(c.error, DatabaseUnavailable), c.error
            assert _actions(engine) == ["leader"]
    finally:
        event.remove(engine, "commit", lost)


class _DeadlockDetected(Exception):
    sqlstate = "40P01"


def _deadlock_victim(conn: Connection) -> None:
    """What the database raises in the transaction it picks as a deadlock's victim: the real
    error on PostgreSQL (which also aborts the transaction until the savepoint is rolled
    back), the same SQLSTATE on SQLite (which has one writer, so no deadlocks of its own)."""
    if conn.dialect.name == "postgresql":
        raw = "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$"
        db.raw_rows(conn, raw)
    raise sa_exc.OperationalError("UPDATE customers ...", {}, _DeadlockDetected("deadlock detected"))


def _victim_once(name: str) -> tuple[Any, list[int]]:
    runs = [0]

    def work(conn: Connection) -> str:
        runs[0] += 1
        audit.record(conn, actor="test", action=f"{name}-{runs[0]}", at=NOW)
        if runs[0] == 1:
            _deadlock_victim(conn)
        return name
    return work, runs


def test_a_deadlock_victim_in_a_group_runs_again_after_the_others_commit(engine):
    """Two workers' groups of webhooks for the same customers, in different orders, deadlock
    on PostgreSQL; the victim's work is run again (after its group has committed and
    released its locks), so its webhook is stored and answered 200, not 503."""
    victim, runs = _victim_once("victim")
    leader, (first, again, last), release = _behind_a_blocked_leader(
        engine, [_note("first"), victim, _note("last")])
    release.set()
    for t in (leader, first, again, last):
        t.join(10)
    assert (leader.result, first.result, again.result, last.result) == ("leader", "first", "victim", "last")
    assert again.error is None and runs == [2]
    assert _actions(engine) == ["first", "last", "leader", "victim-2"]  # nothing of the first try


def test_a_deadlock_victim_alone_runs_again(engine):
    victim, runs = _victim_once("alone")
    assert db.write_grouped(engine, victim) == "alone"
    assert runs == [2] and _actions(engine) == ["alone-2"]


def test_a_work_that_is_the_victim_twice_fails_with_503_and_the_others_stand(engine):
    def always(conn: Connection) -> None:
        audit.record(conn, actor="test", action="never", at=NOW)
        _deadlock_victim(conn)

    leader, (first, victim), release = _behind_a_blocked_leader(engine, [_note("first"), always])
    release.set()
    for t in (leader, first, victim):
        t.join(10)
    assert first.result == "first" and isinstance(victim.error, DatabaseUnavailable), victim.error
    assert _actions(engine) == ["first", "leader"]
