"""A fake clock for tests that drive :class:`cx_connector.throttle.Limiter` for many requests."""

from __future__ import annotations

from cx_connector.throttle import FakeClock

#: the smallest step a sleep advances the clock by, as a real clock would
TICK = 1e-6


class SteppingClock(FakeClock):
    """:class:`FakeClock` whose every sleep advances time by at least :data:`TICK`.

    A leaky bucket refilled by ``elapsed * rate`` can come out a few ulps short of the
    cost it waits for; the remaining wait (~1e-16 s) then vanishes when added to the
    fake clock's elapsed seconds, and the wait never ends. A real clock always moves on.
    """

    def sleep(self, seconds: float) -> None:
        super().sleep(max(seconds, TICK) if seconds > 0 else seconds)
