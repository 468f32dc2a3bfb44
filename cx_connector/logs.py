"""Structured JSON logs, with a request id, that never contain a configured secret.

One JSON object per line, on stderr, from every process (web workers, gunicorn's
master through :class:`GunicornLogger`, the clock, CLI commands). Every line has
``time``, ``level``, ``logger`` and ``message``; ``request_id`` inside a web request;
``job`` and ``job_run_id`` inside a job run (see :func:`fields`); then the call's own
``extra`` fields, and ``exception`` with the traceback. ``logging.format: text`` writes
the same fields as ``key=value`` after the message (:class:`TextFormatter`).

Secrets are kept out of log calls by design (headers and bodies are never logged);
:class:`ScrubSecrets` is the second line of defence: any configured secret value
that still reaches a record (an exception message echoing a URL, say) is replaced
by ``[redacted]``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
#: fields added to every line logged in the current context (a job's id, ...)
_fields: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("log_fields",
                                                                                   default=None)
T = TypeVar("T")


@contextlib.contextmanager
def fields(**values: Any) -> Iterator[None]:
    """Add ``values`` to every line logged inside the block (in this thread or task)."""
    token = _fields.set({**(_fields.get() or {}), **values})
    try:
        yield
    finally:
        _fields.reset(token)


def carry_context(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` run in a copy of the caller's context: for thread pools, whose threads do not
    inherit the request id or job fields of the thread that submits the work."""
    ctx = contextvars.copy_context()

    def run(*args: Any, **kwargs: Any) -> T:
        return ctx.copy().run(fn, *args, **kwargs)

    return run

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


#: where :class:`ScrubSecrets` leaves the scrubbed copy of the context's :func:`fields`
_CONTEXT_ATTR = "_cx_log_fields"


def structured(record: logging.LogRecord) -> dict[str, Any]:
    """A line's fields beyond time, level, logger and message: ``request_id``, the
    context's :func:`fields` (``job``, ``job_run_id``), then the call's own ``extra``
    (which wins over a context field of the same name)."""
    out: dict[str, Any] = {}
    rid = request_id.get()
    if rid:
        out["request_id"] = rid
    context = getattr(record, _CONTEXT_ATTR, None)
    if context is None:
        context = _fields.get()
    if context:
        out.update(context)
    values = record.__dict__
    for key in _extra_keys(values):
        out[key] = values[key]
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(structured(record))
        if record.exc_info or record.exc_text:
            out["exception"] = record.exc_text or self.formatException(record.exc_info)
        return _ENCODER.encode(out)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``: the fields a JSON line carries
    (:func:`structured`: the job, its status and duration, the request id...) after the
    message, so that ``job finished`` says which job, how it ended and how long it took.

    A value with a space, a quote, an ``=`` or a line break is a JSON string (quoted and
    escaped), so a line stays one line and splits back into its pairs; dicts and lists
    are compact JSON. Values have been scrubbed of secrets by :class:`ScrubSecrets`.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in structured(record).items())
        return f"{line} {pairs}" if pairs else line


_BARE = re.compile(r"[^\s\"'=\\]+")
#: compact: a dict or list value must not contain spaces (they separate the pairs)
_COMPACT = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":"))


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else _COMPACT.encode(value)
    if isinstance(value, _PLAIN) or value is None or isinstance(value, dict | list | tuple):
        return _COMPACT.encode(value)
    return _text_value(str(value))  # a datetime, a Decimal...


#: one encoder for every line (``json.dumps`` with options builds a new one per call)
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


def _extra_keys(values: dict[str, Any]) -> list[str]:
    """A record's own fields (a call's ``extra``), in the order they were set."""
    return [k for k in values if k not in _STANDARD and not k.startswith("_")]


#: values that cannot hold a secret
_PLAIN = (bool, int, float)


class ScrubSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "[redacted]")
        return text

    def _scrub_value(self, value: Any) -> Any:
        if value is None or isinstance(value, _PLAIN):
            return value
        if isinstance(value, str):
            return self._scrub(value)
        text = json.dumps(value, default=str, ensure_ascii=False)  # dicts, lists: as logged
        scrubbed = self._scrub(text)
        if scrubbed == text:
            return value
        try:
            return json.loads(scrubbed)
        except ValueError:
            return scrubbed

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self._scrub(record.getMessage())
        record.args = ()
        values = record.__dict__
        for key in [k for k in values if k not in _STANDARD and k != _CONTEXT_ATTR]:
            setattr(record, key, self._scrub_value(values[key]))
        context = _fields.get()
        if context:  # the job's fields, printed with the line by either formatter
            setattr(record, _CONTEXT_ATTR, {k: self._scrub_value(v) for k, v in context.items()})
        if record.exc_info and not record.exc_text:
            # formatted once, scrubbed, and cached where every formatter looks for it
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        return True


_HANDLER_NAME = "cx-connector"


def _formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def is_configured() -> bool:
    """Whether :func:`configure` installed its handler in this process."""
    return any(h.get_name() == _HANDLER_NAME for h in logging.getLogger().handlers)


def configure(level: str = "INFO", fmt: str = "json", secrets: Iterable[str] = ()) -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == _HANDLER_NAME:
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_formatter(fmt))
    handler.addFilter(ScrubSecrets(secrets))
    root.addHandler(handler)
    root.setLevel(level)
    # the migration check at every start makes Alembic announce its plugins and dialect
    logging.getLogger("alembic").setLevel(level if level == "DEBUG" else "WARNING")


# --- gunicorn's own logs -------------------------------------------------------------------------


def gunicorn_logger_class(config: Any = None) -> type:
    """A gunicorn ``logger_class`` writing its error and access logs as JSON lines (or the
    configured text format) with secrets scrubbed, to the destinations gunicorn was given.

    ``config``: the :class:`~cx_connector.config.Config` to take the format and secrets
    from; without it the configuration is found as ``create_app()`` finds it. The access
    line carries ``method``, ``path`` (no query string), ``status``, ``ms``, ``bytes``,
    ``remote_addr``, ``user_agent`` and the response's ``request_id``; the app's own
    ``request`` line says the same, so gunicorn's ``accesslog`` can stay off.
    """
    from gunicorn.glogging import Logger

    class GunicornLogger(Logger):
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            fmt, secrets = _gunicorn_settings(config)
            scrub = ScrubSecrets(secrets)
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(_formatter(fmt))
                    for f in [f for f in handler.filters if isinstance(f, ScrubSecrets)]:
                        handler.removeFilter(f)
                    handler.addFilter(scrub)

        def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
            if not self.access_log_enabled:
                return
            atoms = self.atoms(resp, req, environ, request_time)
            self.access_log.info("access", extra={
                "method": atoms.get("m"), "path": atoms.get("U"), "status": atoms.get("s"),
                "ms": round(request_time.total_seconds() * 1000, 2), "bytes": atoms.get("B"),
                "remote_addr": atoms.get("h"), "user_agent": atoms.get("a"),
                "request_id": atoms.get("{x-request-id}o") or None})

    return GunicornLogger


def _gunicorn_settings(config: Any) -> tuple[str, list[str]]:
    if config is None:
        from cx_connector.config import load_config

        try:
            config = load_config()
        except Exception:  # the app reports a bad configuration itself when it loads
            return "json", []
    return config.logging.format, config.secrets()


def __getattr__(name: str) -> Any:
    """``logger_class = "cx_connector.logs.GunicornLogger"`` in ``gunicorn.conf.py`` (built on
    first use, so that importing this module does not import gunicorn)."""
    if name == "GunicornLogger":
        return gunicorn_logger_class()
    raise AttributeError(name)
