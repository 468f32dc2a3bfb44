"""Client-side rate limiting for platform calls: stay inside the budget instead of
collecting 429s.

One :class:`Limiter` per platform enforces its :class:`~cx_connector.connector.RateBudget`
(a rolling window of requests, or a leaky bucket of cost points) and is the
:class:`~cx_connector.connector.Throttle` the connectors call before each request.
A 429 still happens (other apps share HubSpot's budget, Shopify may lower limits
for a while): :meth:`Limiter.pause` then holds every request of that platform until
``Retry-After`` has passed.

Time goes through a :class:`Clock`, so tests and the benchmark's accounting never
depend on real sleeping.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta

from cx_connector.connector import RateBudget, Throttle

#: a request is counted a little longer than the window, so that network latency
#: (the platform counts arrival, we count sending) never pushes us over the limit
WINDOW_MARGIN = 0.01


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
    """A clock that only moves when something sleeps (tests, simulations)."""

    def __init__(self, now: datetime) -> None:
        self.start = now
        self.elapsed = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self.elapsed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self.sleeps.append(seconds)
                self.elapsed += seconds

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed)


class Limiter(Throttle):
    """Enforces one platform's :class:`RateBudget`; thread-safe."""

    def __init__(self, budget: RateBudget, clock: Clock) -> None:
        self.budget = budget
        self.clock = clock
        self._lock = threading.Lock()
        self._sent: deque[tuple[float, float]] = deque()  # window: (time, cost)
        self._in_window = 0.0
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
        cost = self.budget.cost if cost is None else float(cost)
        first = True
        while True:
            with self._lock:
                delay = self._delay(cost)
                if delay <= 0:
                    self._spend(cost)
                    self.requests += 1
                    return
                self.waited += delay
                self.waits += first
            first = False
            self.clock.sleep(delay)

    def observe(self, *, available: float | None = None, capacity: float | None = None,
                refill_per_second: float | None = None) -> None:
        with self._lock:
            if self.budget.kind != "bucket":
                return
            self._refresh()
            if capacity:
                self._capacity = float(capacity)
            if refill_per_second:
                self._refill = float(refill_per_second)
            if available is not None:
                self._tokens = min(float(available), self._capacity)

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)

    # -- the core's side ---------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (a 429's ``Retry-After``)."""
        with self._lock:
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

    def _refresh(self) -> None:
        now = self.clock.monotonic()
        if self.budget.kind == "bucket":
            if now > self._stamp:
                self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._refill)
                self._stamp = now
        else:
            horizon = now - self.budget.per_seconds * (1 + WINDOW_MARGIN)
            while self._sent and self._sent[0][0] <= horizon:
                self._in_window -= self._sent.popleft()[1]

    def _delay(self, cost: float) -> float:
        now = self.clock.monotonic()
        if now < self._paused_until:
            return self._paused_until - now
        self._refresh()
        if self.budget.kind == "bucket":
            need = min(cost, self._capacity) - self._tokens
            return need / self._refill if need > 0 and self._refill > 0 else 0.0
        if self._in_window + cost <= self.budget.limit or not self._sent:
            return 0.0
        # wait until enough of the oldest requests have left the window
        excess = self._in_window + cost - self.budget.limit
        freed = 0.0
        for at, c in self._sent:
            freed += c
            if freed >= excess:
                return max(1e-6, at + self.budget.per_seconds * (1 + WINDOW_MARGIN) - now)
        return self.budget.per_seconds

    def _spend(self, cost: float) -> None:
        if self.budget.kind == "bucket":
            self._tokens -= cost
        else:
            self._sent.append((self.clock.monotonic(), cost))
            self._in_window += cost
