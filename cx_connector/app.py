"""The application factory: one ``create_app()``, blueprints, nothing at import time.

gunicorn: ``gunicorn -c python:cx_connector.gunicorn_conf`` (the shipped settings, which
name ``cx_connector:create_app()``). The configuration file is found as the CLI finds it
(``$CX_CONNECTOR_CONFIG``, else ``./cx-connector.yaml``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify, request
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from cx_connector import admin, db, inbox, logs
from cx_connector.config import Config, load_config
from cx_connector.connector import Headers
from cx_connector.errors import CxError, DatabaseUnavailable, NotFound, SignatureError
from cx_connector.metrics import scrape as metrics_endpoint
from cx_connector.metrics import web as metrics
from cx_connector.runtime import Runtime, build

log = logging.getLogger("cx_connector.http")


def runtime() -> Runtime:
    return current_app.extensions["cx"]


# --- webhooks ------------------------------------------------------------------------------

webhooks = Blueprint("webhooks", __name__)


@webhooks.post("/webhooks/<source>")
def receive(source: str) -> Any:
    rt = runtime()
    connector = rt.connectors.get(source)
    if connector is None:
        raise NotFound(f"no enabled connector at /webhooks/{source}")
    try:
        body = request.get_data(cache=False)  # 413 when Content-Length is above the limit
    except RequestEntityTooLarge:
        body = None
    if body is None or len(body) >= rt.config.webhooks.max_body_bytes:  # chunked: cut at the limit
        raise RequestEntityTooLarge(f"webhook bodies are limited to "
                                    f"{rt.config.webhooks.max_body_bytes - 1} bytes")
    try:
        # bounded waits: a locked or unreachable database answers 503 before the platform gives up
        engine = db.deadline(rt.engine, rt.config.webhooks.database_timeout.total_seconds())
        # the URL only for a connector that reads it (werkzeug builds it anew on every access)
        receipt = inbox.receive(engine, connector, body, Headers(request.headers.items()),
                                method=request.method,
                                url=request.url if connector.reads_request_url else "", now=rt.now())
    except SignatureError as exc:
        log.warning("webhook signature rejected", extra={"source": source, "reason": exc.message})
        metrics.signature_failed(rt.connectors, source)
        raise
    metrics.delivered(rt.connectors, source, receipt.status, receipt.touchpoints,
                      receipt.failed_at == "normalise")
    # logged with the request's own line (_after): one line per webhook
    g.webhook = {"source": source, "delivery": receipt.status, "delivery_id": receipt.delivery_id,
                 "touchpoints": receipt.touchpoints}
    out = {"status": receipt.status, "delivery_id": receipt.delivery_id,
           "touchpoints": receipt.touchpoints}
    if receipt.error:
        out["error"] = receipt.error
    return current_app.response_class(json.dumps(out), 200, mimetype="application/json")


# --- health ------------------------------------------------------------------------------------

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> Any:
    try:
        with runtime().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except sa_exc.SQLAlchemyError as exc:
        log.warning("health check failed", extra={"error": type(exc).__name__})
        return jsonify({"status": "unavailable", "database": "unreachable"}), 503
    return jsonify({"status": "ok", "database": "ok"})


# --- errors and request logging ------------------------------------------------------------------


def _error(exc: BaseException) -> Any:
    if isinstance(exc, CxError):
        resp = jsonify(exc.to_json())
        resp.status_code = exc.http_status
        resp.headers.extend(getattr(exc, "headers", None) or {})
        if exc.http_status == 503:
            resp.headers["Retry-After"] = "10"
        return resp
    if isinstance(exc, HTTPException):
        resp = jsonify({"error": (exc.name or "error").lower().replace(" ", "_"),
                        "message": exc.description})
        resp.status_code = exc.code or 500
        return resp
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) and db.is_connection_error(exc):
        return _error(DatabaseUnavailable("database unavailable: try again shortly"))
    log.exception("unhandled error")
    resp = jsonify({"error": "internal_error",
                    "message": "unexpected error; see the server log for request id "
                               f"{logs.request_id.get()}"})
    resp.status_code = 500
    return resp


def new_request_id() -> str:
    """A random version-4 UUID in hex, as ``uuid.uuid4().hex`` gives it, without building a
    ``UUID`` object (2.7 -> 1.0 us a request)."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
    return b.hex()


def _before() -> None:
    # (the request and g proxies resolved once per hook: each access costs a context lookup)
    req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
    rid = req.headers.get("X-Request-Id", "")
    rid = rid if rid and len(rid) <= 64 and rid.replace("-", "").isalnum() else new_request_id()
    ctx.request_id = rid
    ctx.started = time.perf_counter()
    ctx.request_id_token = logs.request_id.set(rid)


def _teardown(_exc: BaseException | None) -> None:
    # a worker's lines between requests must not carry the last request's id
    token = g.pop("request_id_token", None)
    if token is not None:
        try:
            logs.request_id.reset(token)
        except ValueError:  # set in another context
            logs.request_id.set(None)


def _after(resp: Any) -> Any:
    req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
    resp.headers["X-Request-Id"] = ctx.get("request_id", "")
    started = ctx.get("started")
    elapsed = time.perf_counter() - started if started is not None else None
    metrics.observe(runtime().connectors, req, resp.status_code, elapsed)
    path = req.path
    if elapsed is not None and path != "/healthz":
        fields = {"method": req.method, "path": path, "status": resp.status_code,
                  "ms": round(elapsed * 1000, 2)}
        webhook = ctx.pop("webhook", None)
        if webhook is None:
            log.info("request", extra=fields)
        else:  # a webhook's request line also says what became of the delivery
            log.info("webhook received", extra={**fields, **webhook})
    return resp


def create_app(config_path: str | None = None, *, config: Config | None = None,
               rt: Runtime | None = None, configure_logging: bool = True) -> Flask:
    """Build the WSGI app.

    Refuses to start (raises :class:`~cx_connector.errors.NotMigrated`) on a database
    whose schema is not this release's; starts anyway when the database is merely
    unreachable, answering 503 until it is back.
    """
    if rt is None:
        config = config or load_config(config_path)
        rt = build(config)
    config = rt.config
    if configure_logging:
        logs.configure(config.logging.level, config.logging.format, config.secrets())
    try:
        db.check_migrated(rt.engine)
    except DatabaseUnavailable as exc:
        log.warning("starting without a database: %s", exc.message)

    app = Flask("cx_connector")
    app.config["MAX_CONTENT_LENGTH"] = config.webhooks.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["cx"] = rt
    app.register_blueprint(webhooks)
    app.register_blueprint(health)
    app.register_blueprint(metrics_endpoint.blueprint)
    admin.init_app(app)  # /admin pages and /api/v1 (cx_connector/admin)
    app.register_error_handler(Exception, _error)
    app.before_request(_before)
    app.after_request(_after)
    app.teardown_request(_teardown)
    return app
