"""Counters kept in the database (table ``metric_values``): what the clock process, the
CLI and the admin pages did, for ``/metrics`` on every web instance.

The clock process may run on another host than the web instances (Heroku dynos), and
CLI commands are short-lived processes: neither can be scraped. What they do is
therefore added to a few rows of ``metric_values`` *in the transaction that records
it* (a job run's ``job_runs`` row, a backfill page, an import batch, a replay), so a
counter is exactly as durable as the fact it counts, survives restarts, and reads the
same from every host. Rows change once per job run or batch, never per webhook: the
table stays at a few hundred rows and a scrape reads all of it with one query.

Every metric kept here is declared in :data:`DEFINITIONS` (type, help, labels);
:mod:`cx_connector.metrics.scrape` turns the rows back into metric families. Rows
within one transaction are written in key order, so two transactions adding to the
same rows never deadlock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection

from cx_connector.models import metric_values

#: job and scoring durations, seconds (a full scoring pass of 100,000 customers takes ~30-60 s)
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class Definition:
    """One metric family kept in ``metric_values``."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


DEFINITIONS: dict[str, Definition] = {d.name: d for d in (
    Definition("cx_job_runs", "counter", "Job runs (scheduler, CLI, backfill) by outcome: ok, failed, "
               "or skipped because another process held the job's lease.", ("job", "status")),
    Definition("cx_job_duration_seconds", "histogram", "Duration of job runs that ran (ok or failed).",
               ("job",), DURATION_BUCKETS),
    Definition("cx_job_last_duration_seconds", "gauge", "Duration of the job's last run that ran.",
               ("job",)),
    Definition("cx_job_last_success_timestamp_seconds", "gauge",
               "When the job last finished successfully (Unix time).", ("job",)),
    Definition("cx_job_last_failure_timestamp_seconds", "gauge",
               "When the job last failed (Unix time).", ("job",)),
    Definition("cx_scoring_customers_scored", "counter",
               "Customers scored by stored scoring runs, by mode (full, incremental).", ("mode",)),
    Definition("cx_scoring_duration_seconds", "histogram",
               "Duration of stored scoring runs, by mode (full, incremental).", ("mode",),
               DURATION_BUCKETS),
    Definition("cx_scoring_scores_changed", "counter",
               "Customers whose scores changed in a scoring run.", ()),
    Definition("cx_scoring_writes_queued", "counter",
               "Score writes queued in the outbox by scoring runs (all platforms).", ()),
    Definition("cx_writeback_requests", "counter", "Write-back requests sent to the platform.",
               ("source",)),
    Definition("cx_writeback_writes", "counter",
               "Outcomes of outbox writes sent: landed, retried (back to pending with backoff), "
               "dead (needs a person), gone (record deleted), merged (moved to the surviving record).",
               ("source", "outcome")),
    Definition("cx_writeback_errors", "counter",
               "Writes that did not land, per attempt, by reason class: unavailable (5xx, timeout), "
               "api_error (other refusals of a request), auth (token refused), fields_missing (a "
               "score field does not exist on the platform: run setup), rate_limited (run "
               "stopped by a long Retry-After), invalid (record refused), gone, record_retry "
               "(platform asked to retry the record), internal (a bug).", ("source", "reason")),
    Definition("cx_rate_limited", "counter",
               "Rate-limit answers (HTTP 429 or throttled) from the platform, by job.",
               ("source", "job")),
    Definition("cx_rate_limit_waits", "counter",
               "Requests that waited for the platform's rate budget (client-side throttle or a "
               "Retry-After pause), by job.", ("source", "job")),
    Definition("cx_rate_limit_wait_seconds", "counter",
               "Seconds spent waiting for the platform's rate budget, by job.", ("source", "job")),
    Definition("cx_enrich_lookups", "counter",
               "Platform ids looked up by the enrichment job.", ("source",)),
    Definition("cx_touchpoints_imported", "counter",
               "New touchpoints stored other than by a webhook: via backfill, import or replay.",
               ("source", "via")),
)}


def _sample_name(d: Definition, part: str = "") -> str:
    if d.kind == "counter":
        return d.name + "_total"
    if d.kind == "histogram":
        return f"{d.name}_{part}"
    return d.name


def labels_key(labels: Mapping[str, str]) -> str:
    """The canonical text of a label set (the ``labels`` column)."""
    return json.dumps({k: str(v) for k, v in sorted(labels.items())}, separators=(",", ":"),
                      ensure_ascii=False)


def bucket_for(value: float, buckets: tuple[float, ...]) -> str:
    """The ``le`` of the smallest bucket holding ``value`` (buckets are stored non-cumulative)."""
    for b in buckets:
        if value <= b:
            return _le(b)
    return "+Inf"


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class Batch:
    """Increments and values gathered for one transaction, written by :meth:`write`."""

    def __init__(self) -> None:
        self.adds: dict[tuple[str, str], float] = {}
        self.sets: dict[tuple[str, str], float] = {}

    def _check(self, name: str, labels: Mapping[str, str], kind: str) -> Definition:
        d = DEFINITIONS[name]
        if d.kind != kind or set(labels) != set(d.labels):
            raise ValueError(f"{name} is a {d.kind} with labels {d.labels}, "
                             f"not a {kind} with {sorted(labels)}")
        return d

    def inc(self, name: str, labels: Mapping[str, str], amount: float = 1.0) -> None:
        d = self._check(name, labels, "counter")
        if amount < 0:
            raise ValueError(f"{name}: a counter only goes up")
        if amount:
            key = (_sample_name(d), labels_key(labels))
            self.adds[key] = self.adds.get(key, 0.0) + float(amount)

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        d = self._check(name, labels, "gauge")
        self.sets[(_sample_name(d), labels_key(labels))] = float(value)

    def observe(self, name: str, labels: Mapping[str, str], value: float) -> None:
        d = self._check(name, labels, "histogram")
        bucket = (_sample_name(d, "bucket"), labels_key({**labels, "le": bucket_for(value, d.buckets)}))
        total = (_sample_name(d, "sum"), labels_key(labels))
        self.adds[bucket] = self.adds.get(bucket, 0.0) + 1.0
        self.adds[total] = self.adds.get(total, 0.0) + float(value)

    def write(self, conn: Connection, now: datetime | None = None) -> None:
        """Apply everything in one statement per kind, in key order (no deadlocks)."""
        now = now or datetime.now(UTC)
        if self.adds:
            conn.execute(_statement(conn.dialect.name, add=True),
                         [{"name": n, "labels": lab, "value": v, "updated_at": now}
                          for (n, lab), v in sorted(self.adds.items())])
        if self.sets:
            conn.execute(_statement(conn.dialect.name, add=False),
                         [{"name": n, "labels": lab, "value": v, "updated_at": now}
                          for (n, lab), v in sorted(self.sets.items())])
        self.adds, self.sets = {}, {}


@cache
def _statement(dialect: str, *, add: bool) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(metric_values)
    value = metric_values.c.value + stmt.excluded.value if add else stmt.excluded.value
    return stmt.on_conflict_do_update(index_elements=["name", "labels"],
                                      set_={"value": value, "updated_at": stmt.excluded.updated_at})


# --- what callers record ------------------------------------------------------------------


def touchpoints_imported(conn: Connection, source: str, via: str, n: int, now: datetime) -> None:
    """New touchpoints stored by a backfill page, an import batch or a replay (same transaction)."""
    if n:
        b = Batch()
        b.inc("cx_touchpoints_imported", {"source": source, "via": via}, n)
        b.write(conn, now)


def record_run(conn: Connection, record: Mapping[str, Any]) -> None:
    """Count one finished job run (``scheduler.run_job``'s record, or the backfill's), in the
    transaction that stores its ``job_runs`` row; job-specific facts come from its details."""
    job, status = record["job"], record["status"]
    finished = record.get("finished_at") or datetime.now(UTC)
    b = Batch()
    b.inc("cx_job_runs", {"job": job, "status": status})
    if status in ("ok", "failed"):
        seconds = (record.get("duration_ms") or 0) / 1000
        b.observe("cx_job_duration_seconds", {"job": job}, seconds)
        b.set("cx_job_last_duration_seconds", {"job": job}, seconds)
        which = "success" if status == "ok" else "failure"
        b.set(f"cx_job_last_{which}_timestamp_seconds", {"job": job}, finished.timestamp())
    details = record.get("details") or {}
    if isinstance(details, Mapping):  # a failed run's details are its traceback: nothing read
        reader = _DETAILS.get(job)
        if reader is not None:
            reader(b, details)
    b.write(conn, finished)


def _score(b: Batch, d: Mapping[str, Any]) -> None:
    mode = d.get("mode")
    if mode not in ("full", "incremental"):  # "as_of": a report, nothing stored
        return
    b.inc("cx_scoring_customers_scored", {"mode": mode}, d.get("customers_scored") or 0)
    b.observe("cx_scoring_duration_seconds", {"mode": mode}, (d.get("duration_ms") or 0) / 1000)
    b.inc("cx_scoring_scores_changed", {}, d.get("changed") or 0)
    b.inc("cx_scoring_writes_queued", {}, d.get("outbox_queued") or 0)


_OUTCOMES = ("landed", "retried", "dead", "gone", "merged")


def _sync(b: Batch, d: Mapping[str, Any]) -> None:
    if d.get("dry_run"):  # nothing was sent
        return
    for source, s in (d.get("platforms") or {}).items():
        b.inc("cx_writeback_requests", {"source": source}, s.get("requests") or 0)
        for outcome in _OUTCOMES:
            b.inc("cx_writeback_writes", {"source": source, "outcome": outcome}, s.get(outcome) or 0)
        for reason, n in (s.get("failures") or {}).items():
            b.inc("cx_writeback_errors", {"source": source, "reason": reason}, n)
        _waits(b, source, "sync", s)


def _waits(b: Batch, source: str, job: str, s: Mapping[str, Any]) -> None:
    labels = {"source": source, "job": job}
    b.inc("cx_rate_limited", labels, s.get("rate_limited") or 0)
    b.inc("cx_rate_limit_waits", labels, s.get("waits") or 0)
    b.inc("cx_rate_limit_wait_seconds", labels, s.get("waited_seconds") or 0.0)


def _enrich(b: Batch, d: Mapping[str, Any]) -> None:
    for source, s in d.items():
        if not isinstance(s, Mapping):
            continue
        b.inc("cx_enrich_lookups", {"source": source}, s.get("looked_up") or 0)
        if "retry_after" in s:  # the run stopped on a rate limit
            b.inc("cx_rate_limited", {"source": source, "job": "enrich"}, 1)


def _backfill(b: Batch, d: Mapping[str, Any]) -> None:
    source = d.get("source")
    if source:
        _waits(b, source, "backfill", d)


_DETAILS: dict[str, Callable[[Batch, Mapping[str, Any]], None]] = {
    "score": _score, "sync": _sync, "enrich": _enrich, "backfill": _backfill,
}
