"""The ``alerts:`` section of the configuration file.

Every key has a default except what only the admin can know (webhook URLs and
secrets, the value threshold of ``high_value_at_risk``), so the section can be left
out: no rules, no alerts. Unknown keys are errors with their key path, including a
setting given to a condition that does not take it. The meaning of every key is in
``config/cx-connector.example.yaml`` and in the README's "Alerts" section.

Webhook URLs are secrets (a Slack incoming-webhook URL carries its token in the
path): validation messages never repeat them, and :meth:`AlertSettings.secrets`
hands them to log scrubbing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from cx_connector.connector import Duration, WholeNumber

#: what a rule can watch for; see :mod:`cx_connector.alerts.conditions`
CONDITIONS: dict[str, str] = {
    "turned_red": "the customer's cx_health became red",
    "detractor_nps": "the customer's latest NPS answer (within `within`) is a detractor",
    "high_value_at_risk": "a customer worth at least `value_at_least` has a retention probability "
    "below `retention_below`",
    "ticket_reopened": "one of the customer's tickets was reopened `times` times or more "
    "(the last time within `within`)",
}

#: the settings each condition takes (besides the common ones)
CONDITION_KEYS: dict[str, tuple[str, ...]] = {
    "turned_red": (),
    "detractor_nps": ("detractor_max", "within"),
    "high_value_at_risk": ("value", "value_at_least", "retention_below"),
    "ticket_reopened": ("times", "within"),
}

#: the value measures of ``high_value_at_risk``: a numeric score field, or the revenue
#: the customer brought so far (net of cancellations and refunds, as scoring counts it)
VALUE_MEASURES = ("cx_clv_90d", "lifetime_revenue", "cx_expected_purchases_90d")

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class Webhook:
    """A URL alerts are posted to (``alerts.webhooks.<name>``)."""

    name: str
    url: str
    #: HMAC key of ``X-CX-Signature`` (required for ``format: json``)
    secret: str | None = None
    #: ``json`` (the alert as JSON) or ``slack`` (Slack incoming-webhook ``text`` + ``blocks``)
    format: str = "json"
    #: include the customer's name and email (else only ids and record links)
    personal_data: bool = True
    #: at most this many posts per minute (Slack: about one per second per webhook)
    max_per_minute: int = 60

    @property
    def action(self) -> str:
        return f"webhook:{self.name}"


@dataclass(frozen=True)
class Rule:
    """One alert rule (``alerts.rules.<name>``)."""

    name: str
    condition: str
    #: names of ``alerts.webhooks`` to post to
    webhooks: tuple[str, ...] = ()
    #: connectors to put the alert on the customer's record (HubSpot task, Zendesk note)
    platforms: tuple[str, ...] = ()
    #: on the rule's first evaluation, alert about customers who already match (default:
    #: record them as the baseline, and alert only about changes from then on)
    notify_existing: bool = False
    #: also post to the webhooks when the alert clears
    notify_on_clear: bool = False
    # -- condition settings (see CONDITION_KEYS) --
    #: detractor_nps: answers at or below this on the 0-10 scale (others are rescaled)
    detractor_max: int = 6
    #: detractor_nps, ticket_reopened: only answers / reopens this recent count
    within: timedelta = timedelta(days=30)
    #: high_value_at_risk
    value: str = "cx_clv_90d"
    value_at_least: float = 0.0
    retention_below: float = 30.0
    #: ticket_reopened: reopens of the same ticket
    times: int = 2

    @property
    def actions(self) -> tuple[str, ...]:
        return tuple(f"webhook:{w}" for w in self.webhooks) + tuple(f"platform:{p}" for p in self.platforms)


@dataclass(frozen=True)
class AlertSettings:
    #: how often the alerts job runs on its own (it also runs right after every scoring run)
    every: timedelta = timedelta(minutes=5)
    #: attempts of one delivery before it is parked as dead
    max_attempts: int = 8
    #: first retry delay, doubled per attempt with full jitter, capped at backoff_max
    backoff_base: timedelta = timedelta(seconds=30)
    backoff_max: timedelta = timedelta(hours=1)
    #: a delivery claimed by a run that died is sent again after this long
    claim_timeout: timedelta = timedelta(minutes=10)
    #: HTTP timeout of one webhook POST (connect and read each)
    timeout: timedelta = timedelta(seconds=10)
    #: longest Retry-After a run waits out before leaving a delivery to the next run
    max_wait: timedelta = timedelta(minutes=1)
    webhooks: Mapping[str, Webhook] = field(default_factory=dict)
    rules: Mapping[str, Rule] = field(default_factory=dict)

    def secrets(self) -> list[str]:
        """Webhook URLs and signing secrets: for log scrubbing, never to be shown."""
        out: list[str] = []
        for w in self.webhooks.values():
            out.append(w.url)
            path = urlsplit(w.url).path
            if len(path) > 1:
                out.append(path)  # a client library may log the path without the host
            if w.secret:
                out.append(w.secret)
        return out


# --- schemas -----------------------------------------------------------------------------


class _Strict(Schema):
    class Meta:
        unknown = RAISE


_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class Named(fields.Field):
    """A mapping of names to sections of one schema (``alerts.rules.<name>``), with every
    problem reported at ``<name>.<key>`` (marshmallow's Dict would add a level)."""

    def __init__(self, schema: type[Schema], **kw: Any) -> None:
        super().__init__(**kw)
        self.schema = schema

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValidationError("must be a mapping of names to settings")
        out: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for name, item in value.items():
            if not isinstance(name, str) or not _NAME_RE.match(name):
                errors[str(name)] = [
                    "not a valid name: use lower-case letters, digits, - and _ "
                    "(at most 64, starting with a letter)"
                ]
                continue
            try:
                out[name] = self.schema().load(item if item is not None else {})
            except ValidationError as exc:
                errors[name] = exc.messages
        if errors:
            raise ValidationError(errors)
        return out


def check_url(value: str) -> None:
    """https, or http to this machine (a local receiver while testing). Never echoes the URL."""
    try:
        parts = urlsplit(value)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise ValidationError("not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValidationError("not a valid URL: use https://host/path")
    if parts.scheme == "http" and host not in LOCAL_HOSTS:
        raise ValidationError("must be https (plain http only to localhost or 127.0.0.1, for testing)")
    if parts.username or parts.password:
        raise ValidationError("must not carry a user name or password; put credentials in the secret")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if "." not in host and host not in LOCAL_HOSTS:
            raise ValidationError("not a valid URL: the host needs a domain") from None


class WebhookSchema(_Strict):
    url = fields.String(required=True, validate=check_url)
    secret = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(min=16, error="too short: use at least 16 random characters"),
    )
    format = fields.String(load_default="json", validate=validate.OneOf(["json", "slack"]))
    personal_data = fields.Boolean(load_default=True)
    max_per_minute = WholeNumber(load_default=60, validate=validate.Range(min=1, max=6000))

    @validates_schema
    def _signed(self, data: dict, **_: Any) -> None:
        if data.get("format", "json") == "json" and not data.get("secret"):
            raise ValidationError(
                "missing: format json is signed with this secret (receivers verify X-CX-Signature with it)",
                "secret",
            )


class RuleSchema(_Strict):
    condition = fields.String(
        required=True, validate=validate.OneOf(list(CONDITIONS), error="one of: " + ", ".join(CONDITIONS))
    )
    webhooks = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    platforms = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    notify_existing = fields.Boolean(load_default=False)
    notify_on_clear = fields.Boolean(load_default=False)
    detractor_max = WholeNumber(validate=validate.Range(min=0, max=9))
    within = Duration()
    value = fields.String(
        validate=validate.OneOf(VALUE_MEASURES, error="one of: " + ", ".join(VALUE_MEASURES))
    )
    value_at_least = fields.Float(validate=validate.Range(min=0))
    retention_below = fields.Float(validate=validate.Range(min=0, max=100, min_inclusive=False))
    times = WholeNumber(validate=validate.Range(min=1, max=100))

    @validates_schema(skip_on_field_errors=False)  # report these along with any bad value
    def _fits_condition(self, data: dict, **_: Any) -> None:
        condition = data.get("condition")
        if condition not in CONDITION_KEYS:
            return
        takes = CONDITION_KEYS[condition]
        errors: dict[str, list[str]] = {}
        for key in set().union(*CONDITION_KEYS.values()) - set(takes):
            if key in data:
                errors[key] = [
                    f"not a setting of condition {condition} (it takes: {', '.join(takes) or 'nothing'})"
                ]
        if condition == "high_value_at_risk" and "value_at_least" not in data:
            errors["value_at_least"] = ["missing: the value (of `value`) from which a customer is high-value"]
        if not data.get("webhooks") and not data.get("platforms"):
            errors["webhooks"] = ["a rule needs an action: name webhooks and/or platforms"]
        if errors:
            raise ValidationError(errors)


class AlertSettingsSchema(_Strict):
    every = Duration(load_default=AlertSettings.every)
    max_attempts = WholeNumber(
        load_default=AlertSettings.max_attempts, validate=validate.Range(min=1, max=100)
    )
    backoff_base = Duration(load_default=AlertSettings.backoff_base)
    backoff_max = Duration(load_default=AlertSettings.backoff_max)
    claim_timeout = Duration(load_default=AlertSettings.claim_timeout)
    timeout = Duration(load_default=AlertSettings.timeout)
    max_wait = Duration(load_default=AlertSettings.max_wait)
    webhooks = Named(WebhookSchema, load_default=dict)
    rules = Named(RuleSchema, load_default=dict)

    @post_load
    def _make(self, data: dict, **_: Any) -> AlertSettings:
        data["webhooks"] = {name: Webhook(name=name, **w) for name, w in data["webhooks"].items()}
        data["rules"] = {
            name: Rule(
                name=name,
                **{
                    **r,
                    "webhooks": tuple(dict.fromkeys(r["webhooks"])),
                    "platforms": tuple(dict.fromkeys(r["platforms"])),
                },
            )
            for name, r in data["rules"].items()
        }
        return AlertSettings(**data)


def reference_problems(raw: Any, enabled: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Key paths of rules naming a webhook that is not defined, or a platform that is not
    enabled or cannot take alerts.

    Works on the raw ``alerts`` section (so these are reported together with every
    other mistake), and needs ``enabled``: the connector class of each connector with
    a section, which is why :mod:`cx_connector.config` calls it after loading both.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("rules"), dict):
        return []
    hooks = raw.get("webhooks") if isinstance(raw.get("webhooks"), dict) else {}
    able = sorted(name for name, cls in enabled.items() if getattr(cls, "alert_target", ""))
    problems = []
    for name, rule in raw["rules"].items():
        if not isinstance(rule, dict):
            continue
        named = rule.get("webhooks")
        unknown = [str(w) for w in named if w not in hooks] if isinstance(named, list) else []
        if unknown:
            problems.append(
                (
                    f"alerts.rules.{name}.webhooks",
                    f"no webhook named {', '.join(unknown)} under alerts.webhooks "
                    f"(defined: {', '.join(map(str, hooks)) or 'none'})",
                )
            )
        platforms = rule.get("platforms")
        for platform in platforms if isinstance(platforms, list) else []:
            cls = enabled.get(platform)
            if cls is None:
                problems.append(
                    (
                        f"alerts.rules.{name}.platforms",
                        f"{platform} is not an enabled connector (add a connectors.{platform} "
                        f"section); platforms that take alerts: {', '.join(able) or 'none enabled'}",
                    )
                )
            elif not getattr(cls, "alert_target", ""):
                problems.append(
                    (
                        f"alerts.rules.{name}.platforms",
                        f"{platform} cannot take alerts (enabled platforms that can: "
                        f"{', '.join(able) or 'none'})",
                    )
                )
    return problems
