"""``cx-connector setup``, ``sync`` and ``outbox`` as an admin uses them, and the demo step."""

from __future__ import annotations

import json

import pytest
import responses
from click.testing import CliRunner

from cx_connector.cli import demo, main
from cx_connector.fields import SCORE_FIELDS
from tests.conftest import TEST_CONNECTORS
from tests.seeding import rows, seed

HUB = "https://api.hubapi.test"
UPDATE = f"{HUB}/crm/v3/objects/contacts/batch/update"


@pytest.fixture
def cli(tmp_path, database_url):
    cfg = tmp_path / "cx.yaml"
    hub = TEST_CONNECTORS["hubspot"]
    cfg.write_text(json.dumps({"database_url": database_url, "connectors": {"hubspot": hub},
                               "writeback": {"max_attempts": 1}}))

    def run(*args):
        return CliRunner().invoke(main, ["--config", str(cfg), *args], catch_exceptions=False)
    return run


@pytest.fixture
def hub(rt):
    rt.connectors = {"hubspot": rt.connectors["hubspot"]}
    return rt


@responses.activate
def test_setup_twice_then_dry_run_prints_requests(cli, hub):
    responses.add(responses.GET, f"{HUB}/crm/v3/properties/contacts/groups/cx_connector", status=404)
    responses.add(responses.GET, f"{HUB}/crm/v3/properties/contacts", json={"results": []})
    r = cli("setup", "--dry-run")
    assert r.exit_code == 0
    assert "would create" in r.output and "POST /crm/v3/properties/contacts\n" in r.output
    assert '"name": "cx_score"' in r.output
    assert all(c.request.method == "GET" for c in responses.calls)

    responses.add(responses.POST, f"{HUB}/crm/v3/properties/contacts/groups", status=201, json={})
    responses.add(responses.POST, f"{HUB}/crm/v3/properties/contacts", status=201, json={})
    r = cli("setup")
    assert r.exit_code == 0 and "hubspot: 14 created" in r.output

    responses.replace(responses.GET, f"{HUB}/crm/v3/properties/contacts/groups/cx_connector", json={})
    from connectors.hubspot.fields import property_definition
    responses.replace(responses.GET, f"{HUB}/crm/v3/properties/contacts",
                      json={"results": [property_definition(f) for f in SCORE_FIELDS]})
    r = cli("setup")
    assert r.exit_code == 0 and "hubspot: nothing to do, all 14 fields already exist" in r.output


@responses.activate
def test_sync_dry_run_json_then_sync_then_outbox(cli, hub):
    seed(hub, "hubspot", ["1", "2"])
    r = cli("sync", "--dry-run", "--json")
    assert r.exit_code == 0 and len(responses.calls) == 0
    out = json.loads(r.output)
    assert out["status"] == "ok" and out["details"]["dry_run"] is True
    assert out["details"]["platforms"]["hubspot"]["planned"][0]["body"]["inputs"][1]["id"] == "2"
    # counts agree with their nouns: "1 requests" read as careless
    r = cli("sync", "--dry-run")
    assert "hubspot (dry run): 2 pending writes, 1 request would be sent:" in r.output
    assert "POST /crm/v3/objects/contacts/batch/update  (2 records)" in r.output

    r = cli("outbox")
    assert "hubspot: 2 pending" in r.output and "cx_score=87" in r.output

    responses.add(responses.POST, UPDATE, status=207, json={"results": [{"id": "1"}], "errors": [
        {"category": "VALIDATION_ERROR", "message": "bad value for cx_health", "context": {"ids": ["2"]}}]})
    r = cli("sync")
    assert r.exit_code == 0
    assert "hubspot: 2 writes in 1 request: 1 written, 0 to retry, 1 dead" in r.output

    r = cli("outbox", "--dead", "--json")
    dead = json.loads(r.output)["writes"]
    assert [d["external_id"] for d in dead] == ["2"] and "bad value" in dead[0]["last_error"]
    r = cli("outbox", "--dead")
    assert "bad value for cx_health" in r.output

    r = cli("outbox", "retry")
    assert f"re-queued 1 dead write: {dead[0]['id']}" in r.output
    assert [x["status"] for x in rows(hub.engine)] == ["done", "pending"]
    assert "no dead writes to re-queue" in cli("outbox", "retry").output


@responses.activate
def test_sync_exits_1_when_the_platform_refuses_the_token(cli, hub):
    seed(hub, "hubspot", ["1"])
    responses.add(responses.POST, UPDATE, status=401)
    r = cli("sync")
    assert r.exit_code == 1 and "access token was refused" in r.output


def test_demo_step_shows_what_would_be_written_to_each_platform(rt, capsys):
    seed(rt, "hubspot", ["501"])
    seed(rt, "zendesk", ["8447388090494"])
    seed(rt, "shopify", ["7369823420631"])
    with responses.RequestsMock():  # nothing is sent
        preview = demo.writeback_preview(rt)
    assert {k: v["requests"] for k, v in preview.items()} == {"hubspot": 1, "zendesk": 1, "shopify": 1}
    demo.echo_writeback(preview)
    out = capsys.readouterr().out
    assert "hubspot: 1 record write in 1 request" in out
    assert "PUT /api/v2/users/update_many.json" in out and "gid://shopify/Customer/7369823420631" in out
    assert [r["status"] for r in rows(rt.engine)] == ["pending"] * 3


def test_demo_step_without_scores_says_so(rt, capsys):
    demo.echo_writeback(demo.writeback_preview(rt))
    assert "nothing to write" in capsys.readouterr().out


@responses.activate
def test_setup_reports_a_conflicting_type_exits_1_and_changes_nothing(cli, hub):
    from connectors.hubspot.fields import property_definition
    existing = [property_definition(f) for f in SCORE_FIELDS]
    existing[2] = {**existing[2], "type": "string", "fieldType": "text"}
    responses.add(responses.GET, f"{HUB}/crm/v3/properties/contacts/groups/cx_connector", json={})
    responses.add(responses.GET, f"{HUB}/crm/v3/properties/contacts", json={"results": existing})
    r = cli("setup")
    assert r.exit_code == 1
    assert f"hubspot: conflict     property {SCORE_FIELDS[2].name}" in r.output
    assert "exists with type 'string'" in r.output
    assert all(c.request.method == "GET" for c in responses.calls)
    r = cli("setup", "--json")
    assert r.exit_code == 1
    out = json.loads(r.output)["platforms"][0]
    assert out["changed"] is False
    conflicts = [i["name"] for i in out["items"] if i["status"] == "conflict"]
    assert conflicts == [f"property {SCORE_FIELDS[2].name}"]
