"""Loading the one YAML configuration file.

This module is the only place that reads the environment. The file is found at
``--config``, else ``$CX_CONNECTOR_CONFIG``, else ``./cx-connector.yaml``.
``${VAR}`` and ``${VAR:-default}`` in string values are replaced from the
environment *after* YAML parsing (so a secret containing ``:`` or ``#`` cannot
change the document's structure); ``$${`` escapes a literal ``${``.

Validation happens once, here, with marshmallow. Unknown keys are errors, and
every problem is reported with its key path (``connectors.shopify.client_secret:
missing``) in one :class:`~cx_connector.errors.ConfigError` (CLI exit code 2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates

from cx_connector import registry
from cx_connector.alerts.settings import AlertSettings, AlertSettingsSchema, reference_problems
from cx_connector.connector import Duration, WholeNumber
from cx_connector.errors import ConfigError
from cx_connector.scoring.settings import ScoringSettings, ScoringSettingsSchema

DEFAULT_PATH = "cx-connector.yaml"
ENV_PATH = "CX_CONNECTOR_CONFIG"
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_DATABASE_URL = "sqlite:///cx-connector.db"

_VAR_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# --- typed results ------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    score_every: timedelta = timedelta(minutes=15)
    sync_every: timedelta = timedelta(minutes=5)
    enrich_every: timedelta = timedelta(minutes=5)
    full_score_at: str = "03:00"


@dataclass(frozen=True)
class Writeback:
    dry_run: bool = False
    #: sends of one write before it is parked as dead (5xx, timeouts, per-record retries)
    max_attempts: int = 8
    #: first retry delay; doubled per attempt, with full jitter, up to backoff_max
    backoff_base: timedelta = timedelta(seconds=2)
    backoff_max: timedelta = timedelta(minutes=15)
    #: a write claimed longer ago than this by a worker that never finished goes back to pending
    claim_timeout: timedelta = timedelta(minutes=10)
    #: longest wait (Retry-After, backoff) one sync run sits out; longer ones end the run for
    #: that platform and the writes wait for the next run
    max_wait: timedelta = timedelta(minutes=1)
    #: a sync run stops claiming new writes after this long (the rest waits for the next run)
    max_run_time: timedelta = timedelta(minutes=4)


@dataclass(frozen=True)
class Webhooks:
    max_body_bytes: int = 1024 * 1024
    signature_tolerance: timedelta = timedelta(minutes=5)
    #: longest a webhook waits for a database lock, and runs one statement, before it
    #: answers 503 (the platforms give up after 5 s and retry)
    database_timeout: timedelta = timedelta(seconds=3)


@dataclass(frozen=True)
class Logging:
    level: str = "INFO"
    format: str = "json"


@dataclass(frozen=True)
class Privacy:
    #: where personal-data export files are written (relative: to the working directory)
    export_dir: str = "exports"


@dataclass(frozen=True)
class Checkouts:
    #: a checkout with no order this long after it started is abandoned
    abandon_after: timedelta = timedelta(hours=6)
    #: checkouts older than this are no longer examined by the abandonment job
    lookback: timedelta = timedelta(days=30)


@dataclass(frozen=True)
class Metrics:
    #: bearer token for GET /metrics (16+ characters); the admin token is always accepted too
    token: str | None = None


@dataclass(frozen=True)
class Admin:
    """The admin console's session cookie (the token itself is ``admin_token``)."""

    #: ``auto``: Secure when the request came over https (directly, or per the
    #: X-Forwarded-Proto/Forwarded header of a TLS-terminating proxy); ``always``: Secure
    #: on every response (TLS ends at a proxy that sets no such header)
    secure_cookie: str = "auto"
    #: a session unused for this long must log in again
    session_lifetime: timedelta = timedelta(hours=12)


@dataclass(frozen=True)
class Config:
    database_url: str = DEFAULT_DATABASE_URL
    admin_token: str | None = None
    schedule: Schedule = field(default_factory=Schedule)
    writeback: Writeback = field(default_factory=Writeback)
    webhooks: Webhooks = field(default_factory=Webhooks)
    logging: Logging = field(default_factory=Logging)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    privacy: Privacy = field(default_factory=Privacy)
    checkouts: Checkouts = field(default_factory=Checkouts)
    metrics: Metrics = field(default_factory=Metrics)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    admin: Admin = field(default_factory=Admin)
    #: validated settings object per *enabled* connector, by connector name
    connectors: Mapping[str, Any] = field(default_factory=dict)
    #: where the configuration came from (a path, or "<mapping>")
    origin: str = "<mapping>"

    def secrets(self) -> list[str]:
        """Every configured secret value (for log scrubbing and the leak tests)."""
        values = [t for t in (self.admin_token, self.metrics.token) if t]
        password = urlsplit(self.database_url).password
        if password:
            values.append(password)
        for name, settings in self.connectors.items():
            values += registry.available()[name](settings).secrets()
        values += self.alerts.secrets()
        return [v for v in values if v]


# --- field types ------------------------------------------------------------------




class _Strict(Schema):
    class Meta:
        unknown = RAISE


class TimeOfDay(fields.String):
    """``HH:MM``, 24 h. Unquoted, YAML 1.1 reads ``3:30`` as the base-60 number 210 (and
    ``3`` as 3): a number gets the same "use HH:MM" hint as ``25:00``, saying what YAML did
    and how to quote it, not marshmallow's "Not a valid string."."""

    HINT = "use HH:MM (24 h, UTC)"

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, int) and 60 <= value < 24 * 60:  # H:MM read in base 60
                h, m = divmod(value, 60)
                raise ValidationError(f"{self.HINT}, in quotes: YAML read this as the number {value} "
                                      f"(unquoted, {h}:{m:02d} is a base-60 number); "
                                      f"write \"{h:02d}:{m:02d}\"")
            raise ValidationError(f"{self.HINT}, in quotes: YAML read this as the number {value}; "
                                  "write e.g. \"03:30\"")
        text = super()._deserialize(value, attr, data, **kw)
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", text):
            raise ValidationError(self.HINT)
        return text


class ScheduleSchema(_Strict):
    score_every = Duration(load_default=Schedule.score_every)
    sync_every = Duration(load_default=Schedule.sync_every)
    enrich_every = Duration(load_default=Schedule.enrich_every)
    full_score_at = TimeOfDay(load_default=Schedule.full_score_at)

    @post_load
    def _make(self, data: dict, **_: Any) -> Schedule:
        return Schedule(**data)


class WritebackSchema(_Strict):
    dry_run = fields.Boolean(load_default=False)
    max_attempts = WholeNumber(load_default=Writeback.max_attempts,
                               validate=validate.Range(min=1, max=100))
    backoff_base = Duration(load_default=Writeback.backoff_base)
    backoff_max = Duration(load_default=Writeback.backoff_max)
    claim_timeout = Duration(load_default=Writeback.claim_timeout)
    max_wait = Duration(load_default=Writeback.max_wait)
    max_run_time = Duration(load_default=Writeback.max_run_time)

    @post_load
    def _make(self, data: dict, **_: Any) -> Writeback:
        return Writeback(**data)


class WebhooksSchema(_Strict):
    max_body_bytes = WholeNumber(load_default=Webhooks.max_body_bytes,
                                 validate=validate.Range(min=1024, max=64 * 1024 * 1024))
    signature_tolerance = Duration(load_default=Webhooks.signature_tolerance)
    database_timeout = Duration(load_default=Webhooks.database_timeout)

    @validates("database_timeout")
    def _database_timeout(self, value: timedelta, **_: Any) -> None:
        if not timedelta(seconds=1) <= value <= timedelta(seconds=60):
            raise ValidationError("between 1s and 60s (the platforms wait 5 s to 10 s for an answer)")

    @post_load
    def _make(self, data: dict, **_: Any) -> Webhooks:
        return Webhooks(**data)


class LoggingSchema(_Strict):
    level = fields.String(load_default="INFO",
                          validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"]))
    format = fields.String(load_default="json", validate=validate.OneOf(["json", "text"]))

    @post_load
    def _make(self, data: dict, **_: Any) -> Logging:
        return Logging(**data)


class PrivacySchema(_Strict):
    export_dir = fields.String(load_default=Privacy.export_dir, validate=validate.Length(min=1))

    @post_load
    def _make(self, data: dict, **_: Any) -> Privacy:
        return Privacy(**data)


class CheckoutsSchema(_Strict):
    abandon_after = Duration(load_default=Checkouts.abandon_after)
    lookback = Duration(load_default=Checkouts.lookback)

    @post_load
    def _make(self, data: dict, **_: Any) -> Checkouts:
        return Checkouts(**data)


def _validate_token(value: str | None) -> None:
    if value is not None and len(value) < 16:
        raise ValidationError("too short: use at least 16 random characters "
                              "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")


class MetricsSchema(_Strict):
    token = fields.String(load_default=None, allow_none=True,
                          validate=lambda v: _validate_token(v or None))

    @post_load
    def _make(self, data: dict, **_: Any) -> Metrics:
        return Metrics(token=data["token"] or None)  # "" (an unset ${VAR:-}): no token


class AdminSchema(_Strict):
    secure_cookie = fields.String(load_default=Admin.secure_cookie,
                                  validate=validate.OneOf(["auto", "always"]))
    session_lifetime = Duration(load_default=Admin.session_lifetime)

    @post_load
    def _make(self, data: dict, **_: Any) -> Admin:
        return Admin(**data)


def _connectors_schema() -> type[Schema]:
    available = registry.available()
    attrs: dict[str, Any] = {
        name: fields.Nested(cls.settings_schema, required=False) for name, cls in available.items()
    }
    attrs["Meta"] = type("Meta", (), {"unknown": RAISE})
    return type("ConnectorsSchema", (Schema,), attrs)


def normalise_database_url(url: str) -> str:
    """Accept the URLs hosting platforms hand out (``postgres://``) and pick psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


class ConfigSchema(_Strict):
    database_url = fields.String(load_default=DEFAULT_DATABASE_URL)
    admin_token = fields.String(load_default=None, allow_none=True)
    schedule = fields.Nested(ScheduleSchema, load_default=Schedule)
    writeback = fields.Nested(WritebackSchema, load_default=Writeback)
    webhooks = fields.Nested(WebhooksSchema, load_default=Webhooks)
    logging = fields.Nested(LoggingSchema, load_default=Logging)
    scoring = fields.Nested(ScoringSettingsSchema, load_default=ScoringSettings)
    privacy = fields.Nested(PrivacySchema, load_default=Privacy)
    checkouts = fields.Nested(CheckoutsSchema, load_default=Checkouts)
    metrics = fields.Nested(MetricsSchema, load_default=Metrics)
    alerts = fields.Nested(AlertSettingsSchema, load_default=AlertSettings)
    admin = fields.Nested(AdminSchema, load_default=Admin)
    connectors = fields.Raw(load_default=dict)

    @validates("database_url")
    def _db(self, value: str, **_: Any) -> None:
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if scheme not in ("sqlite", "postgres", "postgresql"):
            raise ValidationError("use sqlite:///path.db or postgresql://user:pass@host/db")

    @validates("admin_token")
    def _token(self, value: str | None, **_: Any) -> None:
        _validate_token(value)

    @post_load
    def _make(self, data: dict, **_: Any) -> dict:
        data["database_url"] = normalise_database_url(data["database_url"])
        return data


# --- loading --------------------------------------------------------------------------


def _flatten(errors: Any, prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(errors, dict):
        for key, sub in errors.items():
            path = f"{prefix}.{key}" if prefix and key != "_schema" else (prefix or str(key))
            if key == "_schema":
                path = prefix
            out += _flatten(sub, path)
    elif isinstance(errors, list):
        for item in errors:
            out += _flatten(item, prefix)
    else:
        msg = str(errors)
        msg = {
            "Missing data for required field.": "missing",
            "Unknown field.": "unknown key (misspelt? see config/cx-connector.example.yaml)",
            "Field may not be null.": "missing (empty value)",
        }.get(msg, msg)
        out.append((prefix, msg))
    return out


def _interpolate(value: Any, env: Mapping[str, str], path: str, problems: list) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else str(k), problems)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}.{i}", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def repl(m: re.Match) -> str:
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        problems.append((path, f"environment variable {name} is not set "
                               f"(set it, or write ${{{name}:-default}})"))
        return ""

    return _VAR_RE.sub(repl, value)


def config_from_mapping(raw: Any, env: Mapping[str, str] | None = None,
                        origin: str = "<mapping>") -> Config:
    """Validate an already-parsed configuration document."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("", "the file must be a YAML mapping of keys to values")], origin)
    problems: list[tuple[str, str]] = []
    data = _interpolate(raw, os.environ if env is None else env, "", problems)

    try:
        loaded = ConfigSchema().load(data)
    except ValidationError as exc:
        problems += _flatten(exc.messages)
        loaded = None

    connectors: dict[str, Any] = {}
    section = data.get("connectors", {})
    if section is None:
        section = {}
    if not isinstance(section, dict):
        problems.append(("connectors", "must be a mapping of connector name to its settings"))
    else:
        known = registry.available()
        for name, settings in section.items():
            if name not in known:
                problems.append((f"connectors.{name}",
                                 f"unknown connector (installed: {', '.join(known) or 'none'})"))
                continue
            if settings is None:
                settings = {}
            try:
                connectors[name] = known[name].settings_schema().load(settings)
            except ValidationError as exc:
                problems += _flatten(exc.messages, f"connectors.{name}")
    # alert rules may only name defined webhooks and enabled platforms that take alerts
    named = section if isinstance(section, dict) else {}
    problems += reference_problems(data.get("alerts"), {n: registry.available()[n] for n in named
                                                        if n in registry.available()})

    if problems:
        # a key whose environment variable is missing reports that, not the empty value's fault
        unset = {path for path, msg in problems if msg.startswith("environment variable")}
        problems = [(path, msg) for path, msg in problems
                    if path not in unset or msg.startswith("environment variable")]
        raise ConfigError(problems, origin)
    assert loaded is not None
    loaded["connectors"] = connectors
    return Config(origin=origin, **loaded)


def prometheus_multiproc_dir(env: Mapping[str, str] | None = None) -> str | None:
    """The directory of prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``),
    which the library itself reads on import; see :mod:`cx_connector.metrics`."""
    env = os.environ if env is None else env
    return env.get(PROMETHEUS_DIR_ENV) or env.get(PROMETHEUS_DIR_ENV.lower()) or None


def resolve_path(path: str | os.PathLike | None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(path or env.get(ENV_PATH) or DEFAULT_PATH)


def load_config(path: str | os.PathLike | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Find, read, interpolate and validate the configuration file."""
    env = os.environ if env is None else env
    explicit = path or env.get(ENV_PATH)
    p = resolve_path(path, env)
    if not p.exists():
        hint = ("" if explicit else
                f" (looked for --config, then ${ENV_PATH}, then ./{DEFAULT_PATH}; "
                "start from config/cx-connector.example.yaml)")
        raise ConfigError([("", f"configuration file {p} not found{hint}")], str(p))
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("", f"cannot read {p}: {exc}")], str(p)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([("", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}")],
                          str(p)) from None
    return config_from_mapping(raw, env, origin=str(p))
