"""gunicorn settings for the ``web`` process: ``gunicorn -c python:cx_connector.gunicorn_conf``.

The repository's ``gunicorn.conf.py`` (which a bare ``gunicorn`` reads from the working
directory, as the Procfile does) imports this module, so a checkout and a pip-installed
package run the same settings. Everything can still be overridden the usual gunicorn way:
command-line flags or ``GUNICORN_CMD_ARGS`` (both win over this file).

Environment read here (the web server's, not the application's: the application's
settings come only from the YAML file, see :mod:`cx_connector.config`):

``PORT``
    Bind ``0.0.0.0:$PORT`` (Heroku, Dokku, Render... set it). Without it: ``127.0.0.1:8000``,
    for a reverse proxy on the same host.
``WEB_CONCURRENCY``
    Worker processes. Default: one per CPU plus one (3 on two cores), each with
    :data:`threads` threads.
``FORWARDED_ALLOW_IPS``
    Proxies whose ``X-Forwarded-Proto`` is trusted (default: loopback only). ``*`` on
    Heroku, whose router addresses are not fixed; never ``*`` when gunicorn's port is
    reachable without the proxy.

Why these values (see docs/deploy.md for the platform side):

* The platforms give a webhook 5 s (HubSpot, Shopify) to 10 s (Zendesk) before they call
  it failed and retry. The request itself is bounded by the database deadlines in
  :mod:`cx_connector.db` (connect timeout, statement and lock timeouts): a request never
  waits on an unreachable or locked database for longer than the platform does, it
  answers 503 with ``Retry-After``.
* ``gthread`` workers: slow or idle keep-alive connections wait in the worker's poller,
  not in a busy worker, and a proxy can reuse its connections (``keepalive``). A sync
  worker would be held by a slow client until ``timeout`` killed it.
* ``timeout`` 20 s: a worker whose main loop is silent that long is hung and replaced.
  No webhook request is still useful by then.
* ``graceful_timeout`` 10 s: on SIGTERM (a deploy, a restart) the in-flight requests,
  each finished within the platforms' 5 s, complete; far inside Heroku's 30 s before
  SIGKILL and systemd's 90 s.
* ``keepalive`` 75 s: longer than the idle timeout of the usual proxies in front (nginx
  upstream keep-alive 60 s, AWS ALB 60 s), so the proxy, not gunicorn, closes an idle
  connection and never sends a request on one gunicorn is closing.
* ``preload_app``: the application (and its configuration) is loaded once in the master,
  so a bad configuration stops the server at start with its message, every worker shares
  the same memory pages, and a killed worker is replaced by a fork in milliseconds. The
  master opens a database connection (the migration check), and database connections
  must never cross a fork: :func:`when_ready` closes the master's before any worker is
  forked and :func:`post_fork` makes each worker drop any it inherited without touching
  them (``Engine.dispose(close=False)``), so every worker opens its own.
* No gunicorn access log: the application logs one structured line per request (method,
  path, status, duration, request id), through the same secret-scrubbing handler as
  every other line (``logconfig_dict`` below says how to turn gunicorn's on as well).
* gunicorn's own lines (boot, worker exits) go through the root handler the application
  installs, so they come out in the configured format (JSON by default) and scrubbed.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

from gunicorn import glogging

# --- what to serve ------------------------------------------------------------------------

wsgi_app = "cx_connector:create_app()"

# --- where and how many -------------------------------------------------------------------

bind = [f"0.0.0.0:{os.environ['PORT']}"] if os.environ.get("PORT") else ["127.0.0.1:8000"]


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may use (containers, taskset)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


workers = int(os.environ.get("WEB_CONCURRENCY") or _cpus() + 1)
worker_class = "gthread"
#: threads per worker; each may hold one database connection while it works, so a web
#: process needs at most ``workers * threads`` connections (3 * 4 = 12 on two cores)
threads = 4
backlog = 2048

# --- time ---------------------------------------------------------------------------------

timeout = 20
graceful_timeout = 10
keepalive = 75

# --- behind a proxy -----------------------------------------------------------------------

forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# --- process model ------------------------------------------------------------------------

preload_app = True
# the heartbeat file lives in memory where there is a /dev/shm (containers often have a
# disk-backed /tmp, whose writes can stall a worker past its timeout)
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108
# gunicorn >= 25.1 opens a control socket at one fixed path per user; two servers on one
# host would fight over it. The process manager (Procfile host, systemd) controls ours.
control_socket_disable = True

# --- logs ---------------------------------------------------------------------------------

errorlog = "-"
loglevel = "info"
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    # the handler is named like the one cx_connector.logs.configure installs, which
    # replaces it (adding the secret scrubber) as soon as the application is loaded
    "root": {"level": "INFO", "handlers": ["cx-connector"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        # off (INFO lines dropped): the application's "request" line is the access log;
        # set this level to INFO for gunicorn's combined-format line as well
        "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
    },
    "handlers": {
        "cx-connector": {"class": "logging.StreamHandler", "formatter": "json",
                         "stream": "ext://sys.stderr"},
    },
    "formatters": {"json": {"()": "cx_connector.logs.JsonFormatter"}},
}


class Logger(glogging.Logger):
    """gunicorn's logger, without building an access line nobody will see.

    With ``logconfig_dict`` set, gunicorn builds every request's access-log atoms (a
    dict of ~25 entries, dates formatted) before handing them to ``gunicorn.access``,
    whose level (WARNING above) then drops the line: 16 us of a worker's CPU per request
    (0.3 us without; in-process, 2026-12-06), about 1 % of a webhook's. Setting that
    logger to INFO brings the line back.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


logger_class = "cx_connector.gunicorn_conf.Logger"  # by name: the same class however this file is read


# --- hooks --------------------------------------------------------------------------------


def _runtime(wsgi: Any) -> Any:
    """The cx-connector runtime of a loaded app (None for another WSGI app)."""
    return getattr(wsgi, "extensions", {}).get("cx")


def when_ready(server: Any) -> None:
    """Master, after loading the app and before forking: close its database connections,
    then freeze what start-up allocated (``gc.freeze``): the workers' garbage collections
    no longer walk the ~100,000 objects of the loaded app (a full collection of them took
    ~44 ms in-process), nor write to their memory pages, which the workers therefore keep
    sharing with the master."""
    rt = _runtime(server.app.wsgi()) if server.cfg.preload_app else None
    if rt is not None:
        rt.engine.dispose()
    gc.freeze()


def post_fork(server: Any, worker: Any) -> None:
    """Worker, right after the fork: forget inherited pooled connections without closing
    them (they belong to the master); the worker opens its own on first use."""
    rt = _runtime(getattr(worker, "wsgi", None) or (server.app.wsgi() if server.cfg.preload_app else None))
    if rt is not None:
        rt.engine.dispose(close=False)


def post_worker_init(worker: Any) -> None:
    """Worker, app loaded: make sure its log handler is the configured, scrubbing one (a
    reload of gunicorn's logging would otherwise have replaced it)."""
    rt = _runtime(worker.wsgi)
    if rt is not None:
        from cx_connector import logs

        logs.configure(rt.config.logging.level, rt.config.logging.format, rt.config.secrets())


def on_starting(server: Any) -> None:
    """Master, before the first worker: prepare the directory where every worker keeps its
    /metrics counters (prometheus-client multiprocess mode, see cx_connector.metrics)."""
    from cx_connector import metrics

    metrics.on_starting(server)


def child_exit(server: Any, worker: Any) -> None:
    """Master, after a worker exited (normally, or killed): fold the dead worker's counters
    into the archive so /metrics keeps them (cx_connector.metrics)."""
    from cx_connector import metrics

    metrics.child_exit(server, worker)


def on_exit(server: Any) -> None:
    """Master, at shutdown: remove the metrics directory on_starting created."""
    from cx_connector import metrics

    metrics.on_exit(server)
