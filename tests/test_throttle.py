"""The client-side rate limiter: rolling windows counted until the answer, leaky buckets
that follow the platform's figures, pauses, and many threads sharing one budget."""

from __future__ import annotations

import random
import threading
import time

import pytest

from cx_connector.connector import RateBudget
from cx_connector.throttle import WINDOW_MARGIN, Clock, FakeClock, Limiter
from tests.conftest import NOW


def window(limit: int, seconds: float) -> RateBudget:
    return RateBudget("window", limit, seconds)


def bucket(size: float, rate: float, cost: float = 10.0) -> RateBudget:
    return RateBudget("bucket", size, refill_per_second=rate, cost=cost)


def test_a_window_counts_a_request_until_one_window_after_its_answer():
    clock = FakeClock(NOW)
    limiter = Limiter(window(2, 10.0), clock)
    with limiter.slot():
        clock.sleep(3.0)  # the answer takes 3 s: the platform counted it somewhere in there
    with limiter.slot():
        pass
    sent = clock.elapsed
    with limiter.slot():  # the third must wait until the first answer (t=3) + 10 s
        sent = clock.elapsed
    assert sent == pytest.approx(13.0)


def test_plain_wait_counts_from_sending_with_a_margin():
    clock = FakeClock(NOW)
    limiter = Limiter(window(1, 10.0), clock)
    limiter.wait()
    limiter.wait()
    assert clock.elapsed == pytest.approx(10.0 * (1 + WINDOW_MARGIN))


def test_concurrent_requests_never_exceed_the_window_however_long_the_answers_take():
    """Real clock, 4 threads, random latencies: whatever moment between sending and answer
    the platform counts each request at, no window ever holds more than the limit."""
    limit, seconds = 3, 0.25
    limiter = Limiter(window(limit, seconds), Clock())
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()
    rng = random.Random(3)
    latencies = [rng.uniform(0.0, 0.06) for _ in range(12)]

    def request(latency: float) -> None:
        with limiter.slot():
            sent = time.monotonic()
            time.sleep(latency)
            answered = time.monotonic()
        with lock:
            spans.append((sent, answered))

    threads = [threading.Thread(target=request, args=(lat,)) for lat in latencies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spans) == 12 and limiter.requests == 12
    # the worst case for the platform: an earlier request counted as late as its answer,
    # the later one as early as its sending
    for sent_j, _ in spans:
        counted = [1 for sent_i, answered_i in spans if sent_i <= sent_j and answered_i > sent_j - seconds]
        assert len(counted) <= limit


def test_a_bucket_follows_the_platform_when_its_request_was_alone():
    clock = FakeClock(NOW)
    limiter = Limiter(bucket(1000.0, 100.0), clock)
    with limiter.slot():
        limiter.observe(available=15.0, capacity=1000.0, refill_per_second=100.0)
    with limiter.slot():  # 15 available, costs 10: no wait
        pass
    assert clock.elapsed == 0.0
    with limiter.slot():  # 5 left: waits 0.05 s for 5 more points
        pass
    assert clock.elapsed == pytest.approx(0.05)


def test_a_bucket_observation_from_overlapping_requests_only_lowers_the_estimate():
    """Two requests in flight at once: the platform may have counted the second before the
    first, so the first answer's figure must not raise what we think is left."""
    clock = FakeClock(NOW)
    limiter = Limiter(bucket(100.0, 10.0), clock)
    first = limiter.slot()
    first.__enter__()  # 90 left by our count
    second = limiter.slot()
    second.__enter__()  # 80 left
    limiter.observe(available=95.0)  # from the second's thread-less view: never raises
    assert limiter._tokens == pytest.approx(80.0)
    limiter.observe(available=40.0)  # lower: followed
    assert limiter._tokens == pytest.approx(40.0)
    second.__exit__(None, None, None)
    first.__exit__(None, None, None)


def test_an_answer_older_than_one_already_followed_is_ignored():
    clock = FakeClock(NOW)
    limiter = Limiter(bucket(1000.0, 100.0), clock)
    seqs: dict[str, threading.Event] = {"a": threading.Event(), "b": threading.Event()}
    order: list[str] = []

    def older() -> None:
        with limiter.slot():
            seqs["a"].set()
            seqs["b"].wait(5)  # the newer request is answered first
            limiter.observe(available=900.0)
            order.append("older")

    t = threading.Thread(target=older)
    t.start()
    seqs["a"].wait(5)
    with limiter.slot():
        limiter.observe(available=20.0)
        order.append("newer")
    seqs["b"].set()
    t.join()
    assert order == ["newer", "older"]
    assert limiter._tokens <= 20.0


def test_pause_holds_every_request_for_retry_after():
    clock = FakeClock(NOW)
    limiter = Limiter(window(100, 10.0), clock)
    limiter.pause(7.0)
    with limiter.slot():
        pass
    assert clock.sleeps == [pytest.approx(7.0)] and limiter.waited == pytest.approx(7.0)


def test_fake_clock_threads_waiting_from_the_same_moment_end_together():
    clock = FakeClock(NOW)
    done = []
    all_read = threading.Barrier(3)

    def sleeper() -> None:
        clock.monotonic()
        all_read.wait(5)  # each has read t=0 before any sleeps
        clock.sleep(10.0)
        done.append(clock.monotonic())

    threads = [threading.Thread(target=sleeper) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.elapsed == 10.0 and done == [10.0, 10.0, 10.0]
    clock.sleep(1.0)  # one thread alone: sleeps add up as before
    clock.sleep(1.0)
    assert clock.elapsed == 12.0


def test_minimum_seconds_for_a_window_and_a_bucket():
    assert Limiter(window(10, 1.0), Clock()).minimum_seconds([1.0] * 100) == pytest.approx(9.0)
    assert Limiter(bucket(1000.0, 1000.0), Clock()).minimum_seconds([10.0] * 1200) == pytest.approx(11.0)
