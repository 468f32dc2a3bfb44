"""The CLI as an admin uses it: import with bad rows, events list/replay, customers, db."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cx_connector import db
from cx_connector.cli import main
from cx_connector.models import deliveries
from tests.conftest import TEST_CONNECTORS, count


@pytest.fixture
def cli(tmp_path, database_url):
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\nconnectors:\n  generic:\n"
                   f"    secret: generic-test-secret-0123456789\n")

    def run(*args, input=None):
        return CliRunner().invoke(main, ["--config", str(cfg), *args], input=input,
                                  catch_exceptions=False)
    return run


def line(tid, **kw):
    body = {"source": "shopify", "touchpoint_id": tid, "occurred_at": "2026-04-01T00:00:00+02:00",
            "customer": {"source_id": "c1", "email": "Ann@Example.com"}, "kind": "order_placed",
            "value": "10.50", "currency": "EUR"}
    body.update(kw)
    return json.dumps(body)


def test_import_keeps_good_rows_and_reports_bad_ones_by_line(cli, tmp_path, engine):
    f = tmp_path / "tp.jsonl"
    f.write_text("\n".join([line("o1"), "{broken", line("o2", kind="nope"), "", line("o3"),
                            line("o1"), "[1]", line("o4", customer={"source_id": ""})]) + "\n")
    r = cli("import", str(f))
    assert r.exit_code == 1
    assert "line 2: not valid JSON" in r.output
    assert "line 3: kind: Must be one of" in r.output
    assert "line 7: expected one touchpoint as a JSON object, got a list" in r.output
    assert "line 8: customer.source_id" in r.output
    assert "3 valid lines (2 new touchpoints, 1 already known), 4 invalid lines skipped" in r.output
    assert count(engine, "touchpoints") == 2
    with engine.connect() as conn:
        assert conn.execute(text("SELECT email FROM customers")).scalar_one() == "ann@example.com"


def test_import_reports_unstorable_amounts_by_line_and_keeps_the_rest(cli, tmp_path, engine):
    f = tmp_path / "tp.jsonl"
    f.write_text("\n".join([
        line("o1"),
        line("o2", value="1e30"),                                       # cannot be stored exactly
        line("o3", value="99999999999999.99995"),                       # 10^14 once rounded
        line("o4", products=[{"title": "x", "price": "1e20"}]),
        line("r1", kind="refund_issued", value="10"),                   # refunds are negative
        line("r2", kind="refund_issued", value="-10"),
        line("n1", customer={"source_id": "\u0000"}),                    # blank once cleaned
    ]) + "\n")
    r = cli("import", str(f))
    assert r.exit_code == 1, r.output
    assert "line 2: value: out of range" in r.output
    assert "line 3: value: out of range" in r.output
    assert "line 4: products.0.price: out of range" in r.output
    assert "line 5: value: a refund is negative" in r.output
    assert "line 7: customer.source_id: must not be empty once NUL characters" in r.output
    assert "2 valid lines (2 new touchpoints, 0 already known), 5 invalid lines skipped" in r.output
    assert count(engine, "touchpoints") == 2


def test_import_summary_counts_in_the_singular(cli, tmp_path):
    f = tmp_path / "one.jsonl"
    f.write_text(line("o1") + "\n" + "{broken\n")
    r = cli("import", str(f))
    assert "1 valid line (1 new touchpoint, 0 already known), 1 invalid line skipped" in r.output


def test_import_json_summary_and_stdin(cli, engine):
    r = cli("import", "-", "--json", input=line("o9") + "\n")
    assert r.exit_code == 0
    assert json.loads(r.output)["stored"] == 1


def test_events_list_show_and_replay(cli, post_signed, engine, rt, monkeypatch):
    post_signed("generic", b"{bad json")
    post_signed("generic", json.dumps({"touchpoint_id": "x", "occurred_at": "2026-01-01T00:00:00Z",
                                       "customer": {"source_id": "c"}, "kind": "contact_created"}))
    r = cli("events", "list", "--failed", "--json")
    rows = json.loads(r.output)
    assert [row["status"] for row in rows] == ["failed"] and "not valid JSON" in rows[0]["error"]
    assert "processed" in cli("events", "list").output
    assert "{bad json" in cli("events", "show", str(rows[0]["id"])).output
    r = cli("events", "replay", "--failed")
    assert r.exit_code == 1 and "failed: body is not valid JSON" in r.output
    processed = json.loads(cli("events", "list", "--status", "processed", "--json").output)[0]["id"]
    with engine.begin() as conn:  # delivered again after its touchpoint was lost: stored anew
        conn.execute(text("DELETE FROM touchpoints"))
    replayed = cli("events", "replay", str(processed)).output
    assert f"delivery {processed}: processed (1 new touchpoint)" in replayed
    assert cli("events", "replay").exit_code == 2  # usage error: ID or --failed


def test_customers_list_and_show(cli, post_signed):
    post_signed("generic", {"touchpoint_id": "x", "occurred_at": "2026-01-01T00:00:00Z",
                            "customer": {"source_id": "c", "email": "zed@example.com", "name": "Zed"},
                            "kind": "contact_created"})
    listed = json.loads(cli("customers", "list", "--json").output)
    assert listed[0]["email"] == "zed@example.com" and listed[0]["sources"] == ["generic"]
    shown = cli("customers", "show", "zed@example.com")
    assert "generic:c" in shown.output and "contact_created" in shown.output
    assert json.loads(cli("customers", "show", "generic:c", "--json").output)["touchpoints"] == 1
    assert cli("customers", "show", "nobody@example.com").exit_code == 1


def test_commands_refuse_an_unmigrated_database(tmp_path):
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: sqlite:///{tmp_path / 'empty.db'}\n")
    r = CliRunner().invoke(main, ["--config", str(cfg), "events", "list"])
    assert r.exit_code == 2 and "cx-connector db upgrade" in r.output
    r = CliRunner().invoke(main, ["--config", str(cfg), "db", "upgrade"])
    assert r.exit_code == 0 and "upgraded from empty" in r.output
    r = CliRunner().invoke(main, ["--config", str(cfg), "db", "upgrade"])
    assert "nothing to do" in r.output
    assert CliRunner().invoke(main, ["--config", str(cfg), "events", "list"]).exit_code == 0


def test_app_refuses_to_start_unmigrated(tmp_path):
    from cx_connector.app import create_app
    from cx_connector.errors import NotMigrated
    from tests.conftest import make_config

    with pytest.raises(NotMigrated, match="db upgrade"):
        create_app(config=make_config(f"sqlite:///{tmp_path / 'e.db'}"), configure_logging=False)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_demo_runs_offline_and_prints_touchpoints():
    r = CliRunner().invoke(main, ["demo"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "Touchpoints stored" in r.output and "alice@example.com" in r.output
    assert "failed" not in r.output.split("Touchpoints stored")[0].lower()


ENABLED = "(enabled: generic, hubspot)"


@pytest.mark.parametrize(("args", "says"), [
    (["backfill", "zendesk"], f"zendesk is not enabled: add a connectors.zendesk section to the "
                              f"configuration {ENABLED}"),
    (["backfill", "hubspt"], "no connector named 'hubspt' (enabled: generic, hubspot; installed: "
                             "generic, hubspot, shopify, zendesk)"),
    (["backfill", "generic"], "generic has no API to import history from (enabled sources that can: "
                              "hubspot)"),
    (["enrich", "--source", "shopify"], f"shopify is not enabled: add a connectors.shopify section "
                                        f"to the configuration {ENABLED}"),
    (["enrich", "--source", "generic"], "generic cannot look records up (enabled sources that can: "
                                        "hubspot)"),
    (["sync", "--source", "zendesk"], "zendesk is not enabled"),
    (["sync", "--source", "hubspot", "--source", "generic"],
     "generic does not write scores back (enabled sources that can: hubspot)"),
    (["setup", "--dry-run", "--source", "shopify"], "shopify is not enabled"),
    (["setup", "--source", "Hubspot"], "no connector named 'Hubspot'"),
    (["outbox", "retry", "--source", "zendesk"], "zendesk is not enabled"),
    (["events", "replay", "--failed", "--source", "zendesk"], "zendesk is not enabled"),
    (["events", "list", "--source", "zendsk"], "no connector named 'zendsk'"),
    (["outbox", "--source", "nope"], "no connector named 'nope'"),
])
def test_an_unknown_disabled_or_unable_source_is_a_usage_error_before_anything_runs(
        tmp_path, database_url, engine, args, says):
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(json.dumps({"database_url": database_url,
                               "connectors": {k: TEST_CONNECTORS[k] for k in ("generic", "hubspot")}}))
    r = CliRunner().invoke(main, ["--config", str(cfg), *args], catch_exceptions=False)
    assert r.exit_code == 2, r.output
    assert says in r.stderr, r.stderr
    assert r.stdout == ""
    assert count(engine, "job_runs") == 0 and count(engine, "audit_log") == 0


def test_history_filters_accept_a_connector_disabled_since(cli, engine):
    """events list and outbox show stored rows: a connector disabled since they were stored
    may be named (it is installed, just not configured any more)."""
    with engine.begin() as conn:
        conn.execute(deliveries.insert().values(
            source="zendesk", delivery_key="k1", topic="zen:event-type:ticket.created",
            received_at=datetime(2026, 6, 1, tzinfo=UTC), headers={}, body=b"{}", status="failed",
            error="connector zendesk is not enabled"))
    r = cli("events", "list", "--source", "zendesk")
    assert r.exit_code == 0 and "zen:event-type:ticket.created" in r.output
    r = cli("outbox", "--source", "shopify")
    assert r.exit_code == 0 and "the outbox is empty" in r.output
