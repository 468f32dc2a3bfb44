"""``GET /metrics``: this instance's web counters plus the database's facts, in the
Prometheus text format, behind a bearer token.

A scrape costs one read of the multiprocess files of this instance and one read-only
transaction of four small queries: every row of ``metric_values`` (a few hundred),
the open outbox writes grouped by platform, status and attempts, with the oldest due
time (read from the outbox's ``(status, attempts, source, next_attempt_at)`` index
alone; ``done`` rows, the bulk of the table, are never read), and the failed
deliveries grouped by source (the ``(status, received_at)`` index). Nothing scans
``touchpoints``, ``deliveries`` or ``customers``. On PostgreSQL the transaction has a
statement timeout, so a sick database makes a scrape report ``cx_database_up 0``
instead of hanging it.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text

from cx_connector import __version__, db
from cx_connector.config import Config
from cx_connector.errors import CxError, DatabaseUnavailable, NotFound, Unauthorized
from cx_connector.metrics import web
from cx_connector.metrics.stored import DEFINITIONS, Definition
from cx_connector.models import deliveries, metric_values, outbox

log = logging.getLogger(__name__)

#: a scrape's queries give up after this long on PostgreSQL (Prometheus' default timeout is 10 s)
STATEMENT_TIMEOUT_MS = 3000
#: outbox statuses reported (``retrying``: pending after at least one failed attempt)
OUTBOX_STATUSES = ("pending", "retrying", "in_flight", "dead")

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
def scrape() -> Any:
    rt = current_app.extensions["cx"]
    try:
        authorise(rt.config, request.headers.get("Authorization", ""))
    except CxError as exc:
        resp = jsonify(exc.to_json())
        resp.status_code = exc.http_status
        if exc.http_status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="cx-connector metrics"'
        return resp
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    body = generate_latest(_Collectors([*web.collectors(rt.connectors), DatabaseCollector(rt)]))
    return Response(body, content_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


def authorise(config: Config, header: str) -> None:
    """``Authorization: Bearer <metrics.token or admin_token>``, compared in constant time."""
    tokens = [t for t in (config.metrics.token, config.admin_token) if t]
    if not tokens:
        raise NotFound("metrics are disabled: set metrics.token (or admin_token) in the configuration")
    scheme, _, given = header.strip().partition(" ")
    presented = given.strip().encode()
    ok = False
    for token in tokens:  # every token is compared, whichever matches
        ok |= hmac.compare_digest(presented, token.encode())
    if scheme.lower() != "bearer" or not presented or not ok:
        raise Unauthorized("send Authorization: Bearer <token> with metrics.token (or admin_token) "
                           "from the configuration")


class _Collectors:
    """What ``generate_latest`` asks for: every family of every collector."""

    def __init__(self, collectors: Sequence[Any]) -> None:
        self.collectors = collectors

    def collect(self) -> Iterable[Any]:
        for c in self.collectors:
            yield from c.collect()


# --- the database's side -------------------------------------------------------------------------


class DatabaseCollector:
    """Facts every instance reads alike from the database (scope: the whole deployment)."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        t0 = time.perf_counter()
        try:
            families = self._read()
            up = 1.0
        except (sa_exc.SQLAlchemyError, DatabaseUnavailable) as exc:
            log.warning("metrics: the database could not be read", extra={"error": type(exc).__name__})
            families, up = [], 0.0
        info = GaugeMetricFamily("cx_info", "The cx-connector release serving this scrape.",
                                 labels=["version"])
        info.add_metric([__version__], 1.0)
        families += [
            GaugeMetricFamily("cx_database_up", "1 when this scrape could read the database, else 0 "
                              "(the database-backed series are then missing).", value=up),
            GaugeMetricFamily("cx_metrics_database_seconds", "Time this scrape spent reading the "
                              "database.", value=time.perf_counter() - t0),
            info,
        ]
        return families

    def _read(self) -> list[Any]:
        now = self.rt.now()
        with db.read(self.rt.engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            rows = conn.execute(select(metric_values.c.name, metric_values.c.labels,
                                       metric_values.c.value)).all()
            # grouped by the index's own columns (attempts, not "attempts > 0"), so the
            # groups come out of the index in order; _outbox folds the attempts
            open_writes = conn.execute(
                select(outbox.c.source, outbox.c.status, outbox.c.attempts, func.count(),
                       func.min(outbox.c.next_attempt_at))
                .where(outbox.c.status.in_(["pending", "in_flight", "dead"]))
                .group_by(outbox.c.status, outbox.c.attempts, outbox.c.source)).all()
            failed = conn.execute(select(deliveries.c.source, func.count())
                                  .where(deliveries.c.status == "failed")
                                  .group_by(deliveries.c.source)).all()
        return [*stored_families(rows), *self._outbox(open_writes, now), self._failed(failed)]

    def _outbox(self, rows: Sequence[Any], now: datetime) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        writers = [name for name, c in self.rt.connectors.items() if c.writes_back]
        counts = {(s, st): 0 for s in writers for st in OUTBOX_STATUSES}
        oldest: dict[str, datetime] = {}
        for source, status, attempts, n, due in rows:
            key = "retrying" if status == "pending" and attempts else status
            counts[(source, key)] = counts.get((source, key), 0) + n
            if status == "pending" and due is not None:
                due = due if due.tzinfo else due.replace(tzinfo=UTC)
                oldest[source] = min(due, oldest.get(source, due))
        backlog = GaugeMetricFamily(
            "cx_outbox_writes", "Open score writes by platform and status: pending, retrying (pending "
            "after a failed attempt), in_flight (claimed by a sync run), dead (needs a person: "
            "cx-connector outbox --dead).", labels=["source", "status"])
        for (source, status), n in sorted(counts.items()):
            backlog.add_metric([source, status], n)
        age = GaugeMetricFamily(
            "cx_outbox_oldest_due_seconds", "How long the oldest pending write has been due (0 when "
            "none is due): grows when write-back is stuck.", labels=["source"])
        for source in sorted(set(writers) | set(oldest)):
            due = oldest.get(source)
            age.add_metric([source], max(0.0, (now - due).total_seconds()) if due else 0.0)
        return [backlog, age]

    def _failed(self, rows: Sequence[Any]) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        counts = {name: 0 for name in self.rt.connectors}
        counts.update({source: n for source, n in rows})
        family = GaugeMetricFamily(
            "cx_inbox_failed_deliveries", "Stored deliveries whose payload failed, waiting for a fix "
            "and a replay (cx-connector events list --failed).", labels=["source"])
        for source, n in sorted(counts.items()):
            family.add_metric([source], n)
        return family


def _samples() -> dict[str, tuple[Definition, str]]:
    out: dict[str, tuple[Definition, str]] = {}
    for d in DEFINITIONS.values():
        if d.kind == "counter":
            out[d.name + "_total"] = (d, "")
        elif d.kind == "histogram":
            out[d.name + "_bucket"] = (d, "bucket")
            out[d.name + "_sum"] = (d, "sum")
        else:
            out[d.name] = (d, "")
    return out


def stored_families(rows: Iterable[Sequence[Any]]) -> list[Any]:
    """Metric families from ``metric_values`` rows (rows of unknown metrics or labels are skipped)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    samples = _samples()
    plain: dict[str, dict[tuple[str, ...], float]] = {}
    hist: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {}
    for name, labels_text, value in rows:
        found = samples.get(name)
        if found is None:
            continue
        d, part = found
        try:
            labels = json.loads(labels_text)
        except ValueError:
            continue
        le = labels.pop("le", None)
        if set(labels) != set(d.labels):
            continue
        key = tuple(str(labels[k]) for k in d.labels)
        if d.kind != "histogram":
            plain.setdefault(d.name, {})[key] = float(value)
            continue
        h = hist.setdefault(d.name, {}).setdefault(key, {"buckets": {}, "sum": 0.0})
        if part == "sum":
            h["sum"] = float(value)
        elif le is not None:
            try:
                bound = float(le)
            except ValueError:
                continue
            h["buckets"][bound] = h["buckets"].get(bound, 0.0) + float(value)
    out: list[Any] = []
    for d in DEFINITIONS.values():
        if d.kind == "counter" and d.name in plain:
            fam = CounterMetricFamily(d.name, d.help, labels=list(d.labels))
        elif d.kind == "gauge" and d.name in plain:
            fam = GaugeMetricFamily(d.name, d.help, labels=list(d.labels))
        elif d.kind == "histogram" and d.name in hist:
            fam = HistogramMetricFamily(d.name, d.help, labels=list(d.labels))
            bounds = [*d.buckets, float("inf")]
            for key, h in sorted(hist[d.name].items()):
                per = dict.fromkeys(bounds, 0.0)
                for bound, n in h["buckets"].items():  # a bound of an older release: next larger one
                    per[next(b for b in bounds if bound <= b)] += n
                cumulative, acc = [], 0.0
                for b in bounds:
                    acc += per[b]
                    cumulative.append((floatToGoString(b), acc))
                fam.add_metric(list(key), cumulative, sum_value=h["sum"])
            out.append(fam)
            continue
        else:
            continue
        for key, value in sorted(plain[d.name].items()):
            fam.add_metric(list(key), value)
        out.append(fam)
    return out
