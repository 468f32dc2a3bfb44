"""The ``alerts:`` section: defaults, every mistake reported with its key path, URLs
validated and never repeated, secrets handed to log scrubbing."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from cx_connector import logs
from cx_connector.alerts.settings import AlertSettings, Rule
from cx_connector.config import config_from_mapping
from cx_connector.errors import ConfigError
from tests.alerts.conftest import HOOK_URL, SECRET, SLACK_URL, WEBHOOKS
from tests.conftest import TEST_CONNECTORS


def load(alerts, connectors=None):
    return config_from_mapping({"alerts": alerts, "connectors": connectors or {}}, env={})


def problems(alerts, connectors=None):
    """Key path -> message (several messages at one path joined by " | ")."""
    with pytest.raises(ConfigError) as err:
        load(alerts, connectors)
    out: dict[str, str] = {}
    for path, message in err.value.problems:
        out[path] = f"{out[path]} | {message}" if path in out else message
    return out


def test_no_section_no_rules():
    assert config_from_mapping({}, env={}).alerts == AlertSettings()
    assert AlertSettings().rules == {} and AlertSettings().every == timedelta(minutes=5)


def test_a_full_section_loads_typed():
    a = load(
        {
            "every": "2m",
            "max_attempts": 5,
            "backoff_base": "10s",
            "backoff_max": "30m",
            "timeout": "5s",
            "webhooks": WEBHOOKS,
            "rules": {
                "red": {
                    "condition": "turned_red",
                    "webhooks": ["ops", "slack", "ops"],
                    "platforms": ["hubspot"],
                },
                "nps": {
                    "condition": "detractor_nps",
                    "detractor_max": 5,
                    "within": "7d",
                    "webhooks": ["slack"],
                },
                "vip": {
                    "condition": "high_value_at_risk",
                    "value": "lifetime_revenue",
                    "value_at_least": 2000,
                    "retention_below": 40,
                    "platforms": ["zendesk"],
                    "notify_on_clear": True,
                },
                "reopen": {"condition": "ticket_reopened", "times": 3, "webhooks": ["ops"]},
            },
        },
        {"hubspot": TEST_CONNECTORS["hubspot"], "zendesk": TEST_CONNECTORS["zendesk"]},
    ).alerts
    assert (a.every, a.max_attempts, a.timeout) == (timedelta(minutes=2), 5, timedelta(seconds=5))
    assert a.webhooks["ops"].format == "json" and a.webhooks["ops"].secret == SECRET
    assert a.webhooks["slack"].format == "slack" and a.webhooks["slack"].secret is None
    assert a.rules["red"] == Rule(
        name="red", condition="turned_red", webhooks=("ops", "slack"), platforms=("hubspot",)
    )
    assert a.rules["red"].actions == ("webhook:ops", "webhook:slack", "platform:hubspot")
    assert (a.rules["nps"].detractor_max, a.rules["nps"].within) == (5, timedelta(days=7))
    vip = a.rules["vip"]
    assert (vip.value, vip.value_at_least, vip.retention_below, vip.notify_on_clear) == (
        "lifetime_revenue",
        2000,
        40,
        True,
    )
    assert a.rules["reopen"].times == 3 and a.rules["reopen"].within == timedelta(days=30)


def test_mistakes_name_their_key_path():
    p = problems(
        {
            "every": "often",
            "colour": "red",
            "webhooks": {
                "ops": {"url": HOOK_URL},  # json needs a secret
                "slack": {"url": SLACK_URL, "format": "teams", "secret": "short"},
                "Ops Team": {"url": HOOK_URL, "secret": SECRET},
            },
            "rules": {
                "red": {"condition": "went_red", "webhooks": ["ops"]},
                "nps": {"condition": "detractor_nps", "times": 2, "webhooks": ["pager"]},
                "vip": {"condition": "high_value_at_risk", "value": "karma", "webhooks": ["ops"]},
                "idle": {"condition": "turned_red"},
                "reopen": {
                    "condition": "ticket_reopened",
                    "times": 0,
                    "platforms": ["generic", "zendesk"],
                    "webhooks": ["ops"],
                },
            },
        },
        {"generic": TEST_CONNECTORS["generic"]},
    )
    assert p["alerts.every"].startswith("not a duration")
    assert p["alerts.colour"].startswith("unknown key")
    assert p["alerts.webhooks.ops.secret"].startswith("missing: format json is signed")
    assert p["alerts.webhooks.slack.format"] == "Must be one of: json, slack."
    assert p["alerts.webhooks.slack.secret"].startswith("too short")
    assert p["alerts.webhooks.Ops Team"].startswith("not a valid name")
    assert p["alerts.rules.red.condition"].startswith("one of: turned_red, detractor_nps")
    assert p["alerts.rules.nps.times"] == (
        "not a setting of condition detractor_nps (it takes: detractor_max, within)"
    )
    assert (
        p["alerts.rules.nps.webhooks"] == "no webhook named pager under alerts.webhooks "
        "(defined: ops, slack, Ops Team)"
    )
    assert p["alerts.rules.vip.value"].startswith("one of: cx_clv_90d, lifetime_revenue")
    assert p["alerts.rules.vip.value_at_least"].startswith("missing")
    assert p["alerts.rules.idle.webhooks"] == "a rule needs an action: name webhooks and/or platforms"
    assert (
        p["alerts.rules.reopen.times"] == "Must be greater than or equal to 1 and less than or equal to 100."
    )
    assert p["alerts.rules.reopen.platforms"] == (
        "generic cannot take alerts (enabled platforms that can: none) | zendesk is not an enabled connector "
        "(add a connectors.zendesk section); platforms that take alerts: none enabled"
    )


def test_platforms_must_be_enabled_connectors_that_take_alerts():
    p = problems(
        {"webhooks": WEBHOOKS, "rules": {"red": {"condition": "turned_red", "platforms": ["hubspot"]}}},
        {"zendesk": TEST_CONNECTORS["zendesk"]},
    )
    assert p == {
        "alerts.rules.red.platforms": "hubspot is not an enabled connector (add a connectors.hubspot "
        "section); platforms that take alerts: zendesk"
    }


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXX", True),
        ("https://10.0.0.5:8443/cx", True),
        ("http://localhost:9000/hook", True),
        ("http://127.0.0.1/hook", True),
        ("http://[::1]:8080/hook", True),
        ("http://hooks.example.com/secret-token", False),
        ("ftp://hooks.example.com/x", False),
        ("https://user:pw@hooks.example.com/x", False),
        ("https://intranet/x", False),
        ("hooks.example.com/secret-token", False),
        ("https://hooks.example.com:99999/secret-token", False),
    ],
)
def test_urls_are_https_except_to_this_machine_and_never_repeated(url, ok):
    alerts = {
        "webhooks": {"ops": {"url": url, "secret": SECRET}},
        "rules": {"red": {"condition": "turned_red", "webhooks": ["ops"]}},
    }
    if ok:
        assert load(alerts).alerts.webhooks["ops"].url == url
        return
    with pytest.raises(ConfigError) as err:
        load(alerts)
    assert list(dict(err.value.problems)) == ["alerts.webhooks.ops.url"]
    assert "secret-token" not in str(err.value) and "pw@" not in str(err.value)


def test_urls_and_secrets_are_scrubbed_from_logs(caplog):
    c = load({"webhooks": WEBHOOKS, "rules": {"red": {"condition": "turned_red", "webhooks": ["ops"]}}})
    secrets = c.secrets()
    assert HOOK_URL in secrets and SLACK_URL in secrets and SECRET in secrets
    assert "/services/T0001/B0002/slackPathToken123" in secrets  # a path alone, as a library may log it
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, f"POST {SLACK_URL} failed; key {SECRET}", (), None
    )
    logs.ScrubSecrets(secrets).filter(record)
    assert "slackPathToken123" not in record.getMessage() and SECRET not in record.getMessage()
