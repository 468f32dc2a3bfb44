"""Client-side rate limiting for platform calls: stay inside the budget instead of
collecting 429s.

One :class:`Limiter` per platform enforces its :class:`~cx_connector.connector.RateBudget`
(a rolling window of requests, or a leaky bucket of cost points) and is the
:class:`~cx_connector.connector.Throttle` the connectors call before each request.
A 429 still happens (other apps share HubSpot's budget, Shopify may lower limits
for a while): :meth:`Limiter.pause` then holds every request of that platform until
``Retry-After`` has passed.

Counting is conservative so that normal operation never trips a 429: the platform
counts a request when it *arrives*, somewhere between our sending it and its answer
coming back. A request made inside :meth:`Limiter.slot` therefore occupies the
rolling window from the moment it is sent until one window length after its answer
came back; then, whatever the network did to the arrival times, the platform never
sees more than ``limit`` requests in any window. (Counted from sending time only,
two requests whose latencies differ by more than a small margin could land closer
together at the platform than we spaced them.)

Time goes through a :class:`Clock`, so tests and the benchmark's accounting never
depend on real sleeping.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from cx_connector.connector import RateBudget, Throttle

#: a request sent with :meth:`Limiter.wait` (no answer time known) is counted a little
#: longer than the window, so that network latency (the platform counts arrival, we count
#: sending) rarely pushes us over the limit; :meth:`Limiter.slot` needs no margin
WINDOW_MARGIN = 0.01
#: real seconds a request waits, at most, for an answer in flight before looking again
_INFLIGHT_RECHECK = 0.5


class Clock:
    """Monotonic seconds, wall-clock datetimes and sleeping, in one injectable object."""

    def __init__(self, now: datetime | None = None) -> None:
        self._wall0 = now
        self._mono0 = time.monotonic()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def now(self) -> datetime:
        if self._wall0 is None:
            return datetime.now(UTC)
        return self._wall0 + timedelta(seconds=time.monotonic() - self._mono0)


class FakeClock(Clock):
    """A clock that only moves when something sleeps (tests, simulations).

    Several threads may share it: a sleep lasts from the time the sleeping thread last
    read (or slept until), so two threads that each wait 10 s from the same moment end
    up 10 s later, not 20.
    """

    def __init__(self, now: datetime) -> None:
        self.start = now
        self.elapsed = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()
        self._seen: dict[int, float] = {}

    def monotonic(self) -> float:
        with self._lock:
            self._seen[threading.get_ident()] = self.elapsed
            return self.elapsed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                me = threading.get_ident()
                self.sleeps.append(seconds)
                until = self._seen.get(me, self.elapsed) + seconds
                self.elapsed = max(self.elapsed, until)
                self._seen[me] = self.elapsed

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.monotonic())


class _Blocked(float):
    """A delay that only an answer still in flight can end."""


_BLOCKED = _Blocked(-1.0)


class Limiter(Throttle):
    """Enforces one platform's :class:`RateBudget`; thread-safe (several requests of a
    platform may be in flight at once)."""

    def __init__(self, budget: RateBudget, clock: Clock) -> None:
        self.budget = budget
        self.clock = clock
        self._cond = threading.Condition()
        # window: requests that have been answered, as (leaves the window at, cost), sorted
        self._leaving: list[tuple[float, float]] = []
        self._leaving_total = 0.0
        # requests sent through slot() and not answered yet: sequence number -> cost
        self._open: dict[int, float] = {}
        self._overlapped: set[int] = set()  # open requests that shared the wire with another
        self._seq = 0
        self._observed_seq = 0
        self._local = threading.local()
        self._capacity = float(budget.limit)
        self._refill = float(budget.refill_per_second)
        self._tokens = float(budget.limit)  # bucket: starts full
        self._stamp = clock.monotonic()
        self._paused_until = 0.0
        self.requests = 0
        #: seconds slept waiting for the budget, and how many requests had to wait
        self.waited = 0.0
        self.waits = 0

    # -- Throttle --------------------------------------------------------------------

    def wait(self, cost: float | None = None) -> None:
        self._acquire(self._cost(cost), hold=False)

    @contextmanager
    def slot(self, cost: float | None = None) -> Iterator[None]:
        seq = self._acquire(self._cost(cost), hold=True)
        outer = getattr(self._local, "seq", None)
        self._local.seq = seq
        try:
            yield
        finally:
            self._local.seq = outer
            with self._cond:
                spent = self._open.pop(seq, 0.0)
                self._overlapped.discard(seq)
                if self.budget.kind != "bucket":
                    self._leave(self.clock.monotonic() + self.budget.per_seconds, spent)
                self._cond.notify_all()

    def observe(self, *, available: float | None = None, capacity: float | None = None,
                refill_per_second: float | None = None) -> None:
        """Follow the platform's own figures (Shopify's ``throttleStatus``).

        ``available`` was true when the platform answered *this* request. When it was
        the only request in flight from its sending to now, the figure is taken as it
        is. Otherwise the platform may have counted requests in another order than we
        sent them, so the figure (less what was sent after this request and is still
        in flight) can only lower our estimate, never raise it; our own estimate is
        conservative anyway (we count a request when sending it, the platform when it
        arrives). An answer older than one already followed is ignored.
        """
        with self._cond:
            if self.budget.kind != "bucket":
                return
            self._refresh()
            if capacity:
                self._capacity = float(capacity)
            if refill_per_second:
                self._refill = float(refill_per_second)
            if available is None:
                return
            seq = getattr(self._local, "seq", None)
            if seq is not None:
                if seq < self._observed_seq:
                    return
                self._observed_seq = seq
            value = min(float(available), self._capacity)
            alone = seq not in self._overlapped and all(s == seq for s in self._open)
            if not alone:
                later = sum(c for s, c in self._open.items() if seq is None or s > seq)
                value = min(self._tokens, value - later)
            self._tokens = value
            self._cond.notify_all()

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)

    # -- the core's side ---------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (a 429's ``Retry-After``)."""
        with self._cond:
            self._paused_until = max(self._paused_until, self.clock.monotonic() + seconds)
            if self.budget.kind == "bucket":
                self._tokens = 0.0
                self._stamp = self._paused_until

    def minimum_seconds(self, costs: list[float]) -> float:
        """How long the budget needs, at the least, for requests of these costs."""
        b = self.budget
        if not costs:
            return 0.0
        if b.kind == "bucket":
            spent = sum(costs) - b.limit
            return max(0.0, spent / b.refill_per_second) if b.refill_per_second else 0.0
        # window: request i may go once the requests before it that would exceed the
        # limit have left the window
        times: list[float] = []
        for i, cost in enumerate(costs):
            t = 0.0
            total = cost
            for j in range(i - 1, -1, -1):
                total += costs[j]
                if total > b.limit:
                    t = times[j] + b.per_seconds
                    break
            times.append(max(t, times[-1] if times else 0.0))
        return times[-1]

    # -- internals -----------------------------------------------------------------------

    def _cost(self, cost: float | None) -> float:
        return self.budget.cost if cost is None else float(cost)

    def _acquire(self, cost: float, *, hold: bool) -> int:
        first = True  # a request that waits at all counts once in ``waits``
        while True:
            with self._cond:
                delay = self._delay(cost)
                if delay is _BLOCKED:
                    self.waits += first
                    first = False
                    started = time.monotonic()
                    self._cond.wait(_INFLIGHT_RECHECK)
                    self.waited += time.monotonic() - started
                    continue
                if delay <= 0:
                    self._seq += 1
                    self._spend(cost, self._seq, hold=hold)
                    self.requests += 1
                    return self._seq
                self.waited += delay
                self.waits += first
                first = False
            self.clock.sleep(delay)

    def _leave(self, at: float, cost: float) -> None:
        bisect.insort(self._leaving, (at, cost))
        self._leaving_total += cost

    def _refresh(self) -> None:
        now = self.clock.monotonic()
        if self.budget.kind == "bucket":
            if now > self._stamp:
                self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._refill)
                self._stamp = now
        else:
            gone = 0
            while gone < len(self._leaving) and self._leaving[gone][0] <= now:
                self._leaving_total -= self._leaving[gone][1]
                gone += 1
            if gone:
                del self._leaving[:gone]
            if not self._leaving:
                self._leaving_total = 0.0  # no float drift

    def _delay(self, cost: float) -> float:
        now = self.clock.monotonic()
        if now < self._paused_until:
            return self._paused_until - now
        self._refresh()
        if self.budget.kind == "bucket":
            need = min(cost, self._capacity) - self._tokens
            return need / self._refill if need > 0 and self._refill > 0 else 0.0
        in_flight = sum(self._open.values())
        used = self._leaving_total + in_flight
        if used + cost <= self.budget.limit or (not self._leaving and not self._open):
            return 0.0
        # wait until enough answered requests have left the window
        excess = used + cost - self.budget.limit
        freed = 0.0
        for at, c in self._leaving:
            freed += c
            if freed >= excess:
                return max(1e-6, at - now)
        return _BLOCKED  # the rest of the window is held by requests still in flight

    def _spend(self, cost: float, seq: int, *, hold: bool) -> None:
        if hold:
            if self._open:
                self._overlapped.update(self._open)
                self._overlapped.add(seq)
            self._open[seq] = cost
        if self.budget.kind == "bucket":
            self._tokens -= cost
        elif not hold:
            self._leave(self.clock.monotonic() + self.budget.per_seconds * (1 + WINDOW_MARGIN), cost)
