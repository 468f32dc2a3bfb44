"""Counters of the web workers' own events (webhooks, HTTP requests), per process.

Each gunicorn worker counts in memory-mapped files of ``prometheus_client``'s
multiprocess mode (one file per process and metric type, in the directory named by
``PROMETHEUS_MULTIPROC_DIR``); a scrape, whichever worker answers it, sums the files
of every worker of this instance, live or dead. An increment is a write to shared
memory (a few microseconds each): the webhook path never waits on another process for
metrics.

Without the directory (the test client, ``cx-connector demo``, a single process),
the same counters live in this process's memory.

``prometheus_client`` chooses between the two when it is first imported, from the
environment, so this module imports it lazily: importing ``cx_connector`` (for
example in gunicorn's master, before :func:`cx_connector.metrics.on_starting` has
set the directory) never fixes the choice too early.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

try:
    import fcntl
except ImportError:  # not on Windows: no shared lock between scrapes and compaction
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: delivery statuses a webhook request ends with (see :class:`cx_connector.inbox.Receipt`)
STATUSES = ("processed", "queued", "failed", "ignored", "duplicate")
#: metric types whose per-process files are folded into an archive when a worker exits
_ARCHIVED = ("counter", "histogram", "summary")
_LOCK_FILE = "cx-metrics.lock"


class WebMetrics:
    """The web-side metric objects of this process."""

    def __init__(self, sources: Iterable[str]) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
            values,
        )

        disable_created_metrics()  # as in multiprocess mode: no *_created series

        #: True when values go to the multiprocess files (chosen at prometheus_client's import)
        self.multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False))
        #: the process that created them (a forked child makes its own)
        self.pid = os.getpid()
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cx_webhook_requests", "Requests to /webhooks/<source> (every one received), by HTTP "
            "status code: 200 stored or deduplicated, 401 bad signature, 413 too large, 503 "
            "database unavailable.", ["source", "code"], registry=r)
        self.deliveries = Counter(
            "cx_webhook_deliveries", "Verified webhook deliveries by outcome: processed, failed "
            "(kept for replay), ignored (not a customer event), duplicate (a redelivery).",
            ["source", "status"], registry=r)
        self.signature_failures = Counter(
            "cx_webhook_signature_failures", "Webhook requests refused for a missing, stale or "
            "wrong signature (401; nothing stored).", ["source"], registry=r)
        self.normalise_failures = Counter(
            "cx_webhook_normalise_failures", "Verified deliveries whose payload could not be "
            "turned into touchpoints (stored as failed, replayable).", ["source"], registry=r)
        self.touchpoints = Counter(
            "cx_touchpoints_stored", "New touchpoints stored from webhooks (a redelivered fact is "
            "not counted again).", ["source"], registry=r)
        self.http_requests = Counter(
            "cx_http_requests", "HTTP requests by route, method and status code.",
            ["route", "method", "code"], registry=r)
        self.http_duration = Histogram(
            "cx_http_request_duration_seconds", "Time from request start to response, by route "
            "(platforms give webhooks about 5 s).", ["route"], registry=r)
        self.workers = Gauge(
            "cx_web_workers", "Live web worker processes of this instance (a new worker counts "
            "from its first request).", registry=r,
            multiprocess_mode="livesum")
        self.workers.set(1)
        self.sources: frozenset[str] = frozenset()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._seen: Any = None
        self.add_sources(sources)

    def add_sources(self, sources: Iterable[str]) -> None:
        """Enabled sources: their series exist from the start (zeros, so that ``rate()`` and
        alerts see them), and only they may label the webhook request counter."""
        self._seen = sources
        new = frozenset(sources) - self.sources
        if not new:
            return
        for source in sorted(new):
            for status in STATUSES:
                self.deliveries.labels(source, status)
            self.signature_failures.labels(source)
            self.normalise_failures.labels(source)
            self.touchpoints.labels(source)
        self.sources = self.sources | new


    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: ``labels()`` validates and locks on every
        call, which would be most of what counting a request costs."""
        key = (id(metric), values)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*values)
        return c


_metrics: WebMetrics | None = None
_guard = threading.Lock()


def web(sources: Iterable[str] = ()) -> WebMetrics:
    """This process's metrics, created on first use (after gunicorn forked the worker)."""
    global _metrics
    m = _metrics
    if m is not None and m.pid == os.getpid():
        if sources is not m._seen and sources:  # another app in this process (tests, demo)
            with _guard:
                m.add_sources(sources)
        return m
    with _guard:
        if _metrics is None or _metrics.pid != os.getpid():
            from cx_connector.config import prometheus_multiproc_dir

            path = prometheus_multiproc_dir()
            if path:
                os.makedirs(path, exist_ok=True)
            m = WebMetrics(sources)
            if path and not m.multiprocess:
                log.error("PROMETHEUS_MULTIPROC_DIR is set but prometheus_client was imported before "
                          "it was: /metrics shows this worker's counters only. Set it before "
                          "gunicorn starts (or call cx_connector.metrics.on_starting from "
                          "gunicorn.conf.py)")
            _metrics = m
    assert _metrics is not None
    return _metrics


# --- scraping -------------------------------------------------------------------------------


@contextlib.contextmanager
def _dir_lock(path: str, *, exclusive: bool) -> Iterator[None]:
    """Scrapes read the directory under a shared lock; folding a dead worker's files into
    the archive takes it exclusively, so a scrape never counts them twice or not at all."""
    if fcntl is None:
        yield
        return
    fd = os.open(os.path.join(path, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


class _Multiprocess:
    """Every worker's files of this instance, summed (the library's collector, under the lock)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        with _dir_lock(self.path, exclusive=False):
            return list(MultiProcessCollector(None, path=self.path).collect())


class _WorkerProcesses:
    """``process_*`` metrics (CPU, memory, open files) of each live worker, labelled ``pid``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Any]:
        from prometheus_client import ProcessCollector
        from prometheus_client.metrics_core import Metric

        families: dict[str, Metric] = {}
        for pid in live_pids(self.path):
            for family in ProcessCollector(pid=lambda p=pid: p, registry=None).collect():
                out = families.get(family.name)
                if out is None:
                    out = families[family.name] = Metric(family.name, family.documentation, family.type)
                for s in family.samples:
                    out.add_sample(s.name, {"pid": str(pid), **s.labels}, s.value)
        return list(families.values())


def live_pids(path: str) -> list[int]:
    """Workers that have not exited (their ``livesum`` gauge file is removed when they do)."""
    pids = []
    for f in glob.glob(os.path.join(path, "gauge_livesum_*.db")):
        tail = os.path.basename(f)[len("gauge_livesum_"):-3]
        if tail.isdigit():
            pids.append(int(tail))
    return sorted(pids)


def collectors(sources: Iterable[str]) -> list[Any]:
    """What a scrape of this instance reports about its web processes."""
    from prometheus_client import PlatformCollector, ProcessCollector

    m = web(sources)
    platform = PlatformCollector(registry=None)
    if m.multiprocess:
        from cx_connector.config import prometheus_multiproc_dir

        path = prometheus_multiproc_dir()
        if path:
            return [_Multiprocess(path), _WorkerProcesses(path), platform]
    return [m.registry, ProcessCollector(registry=None), platform]


# --- gunicorn's master: start-up and exited workers -------------------------------------------


def prepare(path: str) -> None:
    """Create the directory and remove the files of an earlier run (their workers are gone,
    and their pids may be reused)."""
    os.makedirs(path, exist_ok=True)
    with _dir_lock(path, exclusive=True):
        for f in glob.glob(os.path.join(path, "*.db")) + glob.glob(os.path.join(path, "*.tmp")):
            os.remove(f)


def worker_exited(path: str, pid: int) -> None:
    """A worker exited (cleanly or killed): drop its live gauges and fold its counters into
    one archive file per type, so that the directory does not grow by a file per worker
    ever started (``max_requests`` restarts) and scrapes stay as cheap as on day one."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    with _dir_lock(path, exclusive=True):
        mark_process_dead(pid, path)
        for typ in _ARCHIVED:
            dead = os.path.join(path, f"{typ}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = os.path.join(path, f"{typ}_archive.db")
            files = [f for f in (archive, dead) if os.path.exists(f)]
            merged = MultiProcessCollector.merge(files, accumulate=False)
            tmp = os.path.join(path, f"{typ}_archive.tmp")  # not *.db: never read by a scrape
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            out = MmapedDict(tmp)
            try:
                for family in merged:
                    for s in family.samples:
                        key = mmap_key(family.name, s.name, list(s.labels), list(s.labels.values()),
                                       family.documentation)
                        out.write_value(key, s.value, 0.0)
            finally:
                out.close()
            os.replace(tmp, archive)
            os.remove(dead)


# --- what the web app counts ------------------------------------------------------------------


def delivered(sources: Iterable[str], source: str, status: str, touchpoints: int,
              normalise_failed: bool) -> None:
    """A verified webhook was answered 200 (see :class:`cx_connector.inbox.Receipt`)."""
    m = web(sources)
    m.child(m.deliveries, source, status).inc()
    if touchpoints:
        m.child(m.touchpoints, source).inc(touchpoints)
    if normalise_failed:
        m.child(m.normalise_failures, source).inc()


def signature_failed(sources: Iterable[str], source: str) -> None:
    m = web(sources)
    m.child(m.signature_failures, source).inc()


def observe(sources: Iterable[str], request: Any, code: int, seconds: float | None) -> None:
    """One finished HTTP request. Label values are the route's pattern and, for webhooks,
    an enabled source's name: never anything a client can choose."""
    m = web(sources)
    rule = request.url_rule
    route = rule.rule if rule is not None else "unmatched"
    m.child(m.http_requests, route, request.method, str(code)).inc()
    if seconds is not None:
        m.child(m.http_duration, route).observe(seconds)
    if request.endpoint == "webhooks.receive":
        source = (request.view_args or {}).get("source")
        if source in m.sources:
            m.child(m.requests, source, str(code)).inc()
