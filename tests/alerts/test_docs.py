"""The README's "Alerts" section and the example configuration keep up with the code,
and the README's verification code accepts what the connector signs."""

from __future__ import annotations

import re
import time
from dataclasses import fields
from pathlib import Path

from cx_connector.alerts.deliver import sign
from cx_connector.alerts.settings import CONDITION_KEYS, CONDITIONS, AlertSettings, Rule, Webhook
from cx_connector.config import load_config

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
SECTION = README.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
REFERENCE = README.split("\n## Configuration reference\n", 1)[1].split("\n## ", 1)[0]
COMMANDS = README.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
EXAMPLE_PATH = ROOT / "config" / "cx-connector.example.yaml"
EXAMPLE = EXAMPLE_PATH.read_text()
CONDITION_SETTINGS = {key for keys in CONDITION_KEYS.values() for key in keys}
ENV = {
    k: "x" * 24
    for k in (
        "CX_ADMIN_TOKEN",
        "HUBSPOT_CLIENT_SECRET",
        "HUBSPOT_ACCESS_TOKEN",
        "ZENDESK_API_TOKEN",
        "ZENDESK_WEBHOOK_SECRET",
        "SHOPIFY_ACCESS_TOKEN",
        "SHOPIFY_CLIENT_SECRET",
        "CX_GENERIC_SECRET",
        "CX_ALERTS_SECRET",
    )
}


def test_the_example_is_valid_and_shows_every_condition():
    alerts = load_config(EXAMPLE_PATH, env=ENV).alerts
    assert {r.condition for r in alerts.rules.values()} == set(CONDITIONS)
    assert {w.format for w in alerts.webhooks.values()} == {"json", "slack"}
    defaults = AlertSettings()
    for f in fields(AlertSettings):
        if f.name not in ("webhooks", "rules"):
            assert getattr(alerts, f.name) == getattr(defaults, f.name), (
                f.name
            )  # the example shows the defaults


def test_every_key_is_documented():
    for f in fields(AlertSettings):
        assert f"{f.name}:" in EXAMPLE and f"`alerts.{f.name}`" in REFERENCE, f.name
    [hooks] = [line for line in REFERENCE.splitlines() if line.startswith("| `alerts.webhooks`")]
    [rules] = [line for line in REFERENCE.splitlines() if line.startswith("| `alerts.rules`")]
    for cls, row in ((Webhook, hooks), (Rule, rules)):
        for f in fields(cls):
            if f.name != "name":
                assert f"{f.name}:" in EXAMPLE, f.name
                # in the reference row; a condition's settings in the Alerts section's table
                assert f"`{f.name}`" in (SECTION if f.name in CONDITION_SETTINGS else row), f.name
    for condition in CONDITIONS:
        assert f"| `{condition}` |" in SECTION and f"`{condition}`" in rules


def test_the_commands_are_in_the_command_table():
    for command in ("alerts", "alerts check", "alerts retry"):
        assert f"`{command}" in COMMANDS, command


def test_the_readme_verification_code_accepts_a_signed_alert():
    code = re.search(r"```python\n(.*?)```", SECTION, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    body, secret = b'{"type":"alert.fired"}', "alert-signing-secret-0123456789"
    headers = sign(secret, body, int(time.time()))
    assert scope["verify"](secret, body, headers)
    assert not scope["verify"](secret, body + b" ", headers)
    assert not scope["verify"](secret, body, sign(secret, body, int(time.time()) - 3600))
