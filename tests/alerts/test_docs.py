"""The README's "Alerts" section and the example configuration keep up with the code,
and the README's verification code accepts what the connector signs."""

from __future__ import annotations

import re
import time
from dataclasses import fields
from pathlib import Path

from cx_connector.alerts.deliver import sign
from cx_connector.alerts.settings import CONDITIONS, AlertSettings, Rule, Webhook
from cx_connector.config import load_config

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
SECTION = README.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
EXAMPLE_PATH = ROOT / "config" / "cx-connector.example.yaml"
EXAMPLE = EXAMPLE_PATH.read_text()
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
        assert f"{f.name}:" in EXAMPLE and f"`alerts.{f.name}" in SECTION, f.name
    for cls in (Webhook, Rule):
        for f in fields(cls):
            if f.name != "name":
                assert f"{f.name}:" in EXAMPLE and f"`{f.name}`" in SECTION, f.name
    for condition in CONDITIONS:
        assert f"| `{condition}` |" in SECTION


def test_the_readme_verification_code_accepts_a_signed_alert():
    code = re.search(r"```python\n(.*?)```", SECTION, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    body, secret = b'{"type":"alert.fired"}', "alert-signing-secret-0123456789"
    headers = sign(secret, body, int(time.time()))
    assert scope["verify"](secret, body, headers)
    assert not scope["verify"](secret, body + b" ", headers)
    assert not scope["verify"](secret, body, sign(secret, body, int(time.time()) - 3600))
