"""Prometheus metrics: ``GET /metrics`` on every web instance tells the truth about the
whole deployment, however many workers, hosts and processes it has.

A deployment is several gunicorn workers per web instance, perhaps several instances
(hosts, Heroku dynos), one ``clock`` process (scoring, write-back, enrichment),
possibly on another host, and short-lived CLI commands (backfill, import, replay).
Only the web instances can be scraped. So every fact is counted where it happens
and kept where a scrape of any web instance can read it:

**Web-side events, per instance** (:mod:`cx_connector.metrics.web`): webhook requests
by source and status code, deliveries by outcome, signature and normalise failures,
new touchpoints from webhooks, HTTP requests and latency. Counted in the worker that
served the request, in ``prometheus_client``'s multiprocess files (shared-memory
writes, a few microseconds each; the webhook path never waits on another process, a
socket or the database for metrics), and summed over every worker of the instance, live or dead, by whichever
worker answers the scrape. Scope: the instance; Prometheus scrapes each instance and
sums (``sum without (instance, pid) (...)``).

**Everything else, in the database** (:mod:`cx_connector.metrics.stored`): job runs,
durations and last successes; customers scored; write-back requests, outcomes and
errors by reason class; rate-limit answers, waits and seconds waited; enrichment
lookups; touchpoints from backfill, import and replay. Added to a few rows of
``metric_values`` in the same transaction that records the fact (the ``job_runs``
row, the backfill page...), so it is exactly as durable as the fact, survives
restarts and reads the same from every host. Plus gauges computed at scrape time
from indexed aggregates: outbox backlog by platform and status, age of the oldest due
write, failed deliveries waiting for replay. Scope: the deployment; every instance
reports the same value, so aggregate with ``max without (instance) (...)``.

**Process metrics**: ``process_*`` of each live worker (labelled ``pid``) and
``python_info``; ``cx_web_workers``; ``cx_info{version}``.

Multiprocess mode needs ``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client``
is first imported, a clean directory at start-up, and the master told when a worker
exits. gunicorn's ``gunicorn.conf.py`` therefore has to provide these three hooks::

    from cx_connector.metrics import child_exit, on_exit, on_starting  # noqa: F401

:func:`on_starting` picks a private temporary directory when the variable is unset
(and :func:`on_exit` removes it), or empties the one given; :func:`child_exit` drops
an exited worker's live gauges and folds its counters into one archive file, so the
directory does not grow with every worker ever started. ``cx-connector serve`` wires
them itself. Without the hooks and the variable, each worker reports only its own
counters.

``/metrics`` wants ``Authorization: Bearer <token>``: ``metrics.token`` if set (give
Prometheus that one, not the admin token), ``admin_token`` always; compared in
constant time; without either token configured, ``/metrics`` answers 404. Labels
carry only source names, statuses, job ids, route patterns and reason classes
chosen by the code, never request data or configuration values.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

from cx_connector.config import PROMETHEUS_DIR_ENV, prometheus_multiproc_dir

#: set by :func:`on_starting` when it created the directory itself (removed by :func:`on_exit`)
_created: str | None = None


def on_starting(server: Any) -> None:
    """gunicorn hook (master, before any worker starts): prepare the multiprocess directory."""
    global _created
    path = prometheus_multiproc_dir()
    if not path:
        path = tempfile.mkdtemp(prefix="cx-connector-metrics-")
        os.environ[PROMETHEUS_DIR_ENV] = path  # the workers inherit it
        _created = path
    from cx_connector.metrics import web

    web.prepare(path)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook (master, after a worker exited, however it died)."""
    path = prometheus_multiproc_dir()
    if path and os.path.isdir(path):
        from cx_connector.metrics import web

        web.worker_exited(path, worker.pid)


def on_exit(server: Any) -> None:
    """gunicorn hook (master, at shutdown): remove the directory :func:`on_starting` created."""
    global _created
    if _created:
        with contextlib.suppress(OSError):
            shutil.rmtree(_created)
        _created = None
