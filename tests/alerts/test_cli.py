"""``cx-connector alerts``, ``alerts check [--dry-run]`` and ``alerts retry`` as an admin uses them."""

from __future__ import annotations

import json

import pytest
import responses
from click.testing import CliRunner

from cx_connector.cli import main
from tests.alerts.conftest import HOOK_URL, WEBHOOKS, customer, deliveries, set_scores

RULES = {"red": {"condition": "turned_red", "webhooks": ["ops"], "notify_existing": True}}


@pytest.fixture
def cli(tmp_path, database_url):
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(
        json.dumps(
            {
                "database_url": database_url,
                "alerts": {"webhooks": WEBHOOKS, "rules": RULES, "max_attempts": 2},
            }
        )
    )

    def run(*args):
        return CliRunner().invoke(main, ["--config", str(cfg), *args], catch_exceptions=False)

    return run


@responses.activate
def test_check_then_list_then_retry(cli, make):
    rt = make(RULES)
    ann = customer(rt, "ann")
    set_scores(rt, ann, cx_health="red", cx_score=30)

    r = cli("alerts", "check", "--dry-run")
    assert r.exit_code == 0, r.output
    assert (
        "red (turned_red): 1 matching, 1 would fire, 0 would clear" in r.output
        and f"fired: #{ann}" in r.output
    )
    assert deliveries(rt) == []

    responses.add(responses.POST, HOOK_URL, status=404, body="no_service")
    r = cli("alerts", "check")
    assert r.exit_code == 1  # a delivery failed for good
    assert "red (turned_red): 1 matching, 1 fired, 0 cleared" in r.output
    assert "deliveries: 0 sent, 0 to retry, 1 failed, 0 skipped" in r.output

    r = cli("alerts")
    assert r.exit_code == 0
    assert "active alerts: red 1" in r.output and "deliveries: 1 dead" in r.output
    assert f"#{ann}" in r.output and "webhook:ops dead" in r.output
    assert "webhook ops: HTTP 404: the URL does not exist (any more)" in r.output
    assert HOOK_URL not in r.output

    data = json.loads(cli("alerts", "--json").output)
    assert data["summary"] == {"active": {"red": 1}, "deliveries": {"dead": 1}}
    [alert] = data["alerts"]
    assert alert["customer_id"] == ann and alert["status"] == "active" and alert["rule_configured"] is True
    assert alert["details"]["cx_score"] == 30
    [d] = alert["deliveries"]
    assert d["status"] == "dead" and d["last_error"].startswith("webhook ops: HTTP 404")
    assert data["deliveries"][0]["id"] == d["id"]

    responses.replace(responses.POST, HOOK_URL, status=200)
    r = cli("alerts", "retry", "--json")
    assert json.loads(r.output) == {"requeued": [d["id"]]}
    r = cli("alerts", "check", "--json")
    assert r.exit_code == 0
    run = json.loads(r.output)
    assert run["job"] == "alerts" and run["status"] == "ok" and run["details"]["deliveries"]["delivered"] == 1
    assert "deliveries: 1 done" in cli("alerts").output
    assert cli("alerts", "retry").output.strip() == "no failed deliveries to re-queue"


def test_no_rules(tmp_path, database_url):
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(json.dumps({"database_url": database_url}))
    r = CliRunner().invoke(main, ["--config", str(cfg), "alerts"])
    assert r.exit_code == 0 and "no alert rules configured" in r.output
    r = CliRunner().invoke(main, ["--config", str(cfg), "alerts", "check"])
    assert r.exit_code == 0 and "no alert rules configured" in r.output


def test_check_config_names_rules_never_urls(tmp_path, database_url):
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(
        json.dumps({"database_url": database_url, "alerts": {"webhooks": WEBHOOKS, "rules": RULES}})
    )
    r = CliRunner().invoke(main, ["--config", str(cfg), "check-config"])
    assert r.exit_code == 0 and "alerts:     red (turned_red)" in r.output
    assert HOOK_URL not in r.output and "slackPathToken" not in r.output


def test_bad_alerts_config_exits_2_naming_the_key(tmp_path, database_url):
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(
        json.dumps(
            {
                "database_url": database_url,
                "alerts": {
                    "webhooks": {
                        "ops": {"url": "http://hooks.example.com/T0/B0/sekrit-token", "secret": "short"}
                    },
                    "rules": {
                        "red": {"condition": "turned_red", "webhooks": ["ops"], "platforms": ["shopify"]}
                    },
                },
            }
        )
    )
    r = CliRunner().invoke(main, ["--config", str(cfg), "check-config"])
    assert r.exit_code == 2
    assert "alerts.webhooks.ops.url: must be https" in r.output
    assert "alerts.webhooks.ops.secret: too short" in r.output
    assert "alerts.rules.red.platforms: shopify is not an enabled connector" in r.output
    assert "sekrit-token" not in r.output
