"""Named leases in the database: at most one holder at a time, across processes and hosts.

Used so that a job never runs twice at once, whether a second ``cx-connector
scheduler`` was started by mistake, a deploy overlaps two clock processes, or an
admin runs ``cx-connector score`` while the clock is scoring. A lease expires, so
a holder that died (SIGKILL, lost host) does not block the job forever; a live
holder renews it while it works (:class:`Held`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta
from types import TracebackType

from sqlalchemy import Engine, delete, update
from sqlalchemy import exc as sa_exc

from cx_connector import db
from cx_connector.errors import DatabaseUnavailable
from cx_connector.models import leases

log = logging.getLogger(__name__)


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _now() -> datetime:
    return datetime.now(UTC)


#: leases this process failed to release (the database was away at the time):
#: released before the next attempt to take the same lease, so that the job is not
#: kept waiting for the lease to expire
_unreleased: set[tuple[str, str, str]] = set()
_unreleased_lock = threading.Lock()


def acquire(engine: Engine, name: str, holder: str, ttl: timedelta) -> bool:
    """Take the lease if it is free, expired, or already ours. Never blocks."""
    with _unreleased_lock:
        stale = [h for e, n, h in _unreleased if e == str(engine.url) and n == name and h != holder]
    for old in stale:
        release(engine, name, old)
        with _unreleased_lock:
            _unreleased.discard((str(engine.url), name, old))
    now = _now()
    with db.write(engine) as conn:
        took = conn.execute(update(leases).where(
            leases.c.name == name,
            (leases.c.expires_at < now) | (leases.c.holder == holder),
        ).values(holder=holder, acquired_at=now, expires_at=now + ttl)).rowcount
        if took:
            return True
        try:
            with conn.begin_nested():
                conn.execute(leases.insert().values(name=name, holder=holder, acquired_at=now,
                                                    expires_at=now + ttl))
        except sa_exc.IntegrityError:
            return False
        return True


def renew(engine: Engine, name: str, holder: str, ttl: timedelta) -> bool:
    with db.write(engine) as conn:
        return bool(conn.execute(update(leases).where(
            leases.c.name == name, leases.c.holder == holder).values(expires_at=_now() + ttl)).rowcount)


def release(engine: Engine, name: str, holder: str) -> None:
    with db.write(engine) as conn:
        conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))


class Held:
    """``with Held(engine, "job:score") as ok:`` - ``ok`` is False when someone else holds it.

    While held, a background thread renews the lease every ``ttl / 3``.
    """

    def __init__(self, engine: Engine, name: str, ttl: timedelta = timedelta(minutes=5),
                 holder: str | None = None) -> None:
        self.engine, self.name, self.ttl = engine, name, ttl
        self.holder = holder or holder_id()
        self.acquired = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl.total_seconds() / 3):
            try:
                renew(self.engine, self.name, self.holder, self.ttl)
            except Exception:  # a blip must not kill the job; the next renewal retries
                log.warning("could not renew lease %s", self.name, exc_info=True)

    def __enter__(self) -> bool:
        self.acquired = acquire(self.engine, self.name, self.holder, self.ttl)
        if self.acquired:
            self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                            name=f"lease:{self.name}")
            self._thread.start()
        return self.acquired

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.acquired:
            try:
                release(self.engine, self.name, self.holder)
            except DatabaseUnavailable:
                with _unreleased_lock:
                    _unreleased.add((str(self.engine.url), self.name, self.holder))
                raise
