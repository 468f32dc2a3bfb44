"""``cx-connector score``, ``kpis``, ``customers explain`` and the demo's scores, as an admin runs them."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from cx_connector import leases
from cx_connector.cli import main
from cx_connector.cli.scoring import KPI_ROWS, STAGES_LABEL
from cx_connector.fields import FIELDS
from cx_connector.scoring import run
from tests.scoring.shop import add, order, tp


@pytest.fixture
def cli(tmp_path, database_url):
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\nconnectors:\n  generic:\n"
                   f"    secret: generic-test-secret-0123456789\n")

    def invoke(*args):
        return CliRunner().invoke(main, ["--config", str(cfg), *args])
    return invoke


def ago(days: float) -> datetime:
    """Before the real now: the commands run on the real clock."""
    return datetime.now(UTC) - timedelta(days=days)


@pytest.fixture
def history(rt):
    add(rt, order("ann", ago(40), 30, "1", "coffee"), tp("order_fulfilled", "ann", ago(39), order_id="1"),
        order("ann", ago(10), 50, "2", "tea"), tp("nps_response", "ann", ago(5), rating=(9, 10)),
        tp("email_engaged", "bob", ago(2)))
    return rt


def test_score_reports_the_run_and_the_model_used(cli, history):
    r = cli("score", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["customers_scored"] == 2 and report["mode"] == "full"
    assert report["duration_ms"] >= 0
    assert report["models"]["bgnbd"]["used"] == "recency fallback"
    assert set(report["models"]["gamma_gamma"]) == {"used", "reason"}
    text = cli("score", "--full").output
    assert "Scored 2 customers (full pass: asked for)" in text
    assert "Retention: recency fallback (only 1 customer has purchases" in text


def test_score_counts_agree_with_their_nouns(cli, history):
    """'Scored 1 customers' read as careless: one customer, one noun in the singular."""
    day = ago(20).date().isoformat()  # only ann had a touchpoint then
    out = cli("score", "--as-of", day).output
    assert out.startswith("Scored 1 customer (")
    assert "Cross-sell by category: 0 associations between 1 item from 1 customer" in out
    # the spend model's fallback reason says "no customer", not "only 0 customers"
    assert "(no customer has repeat purchases with a value;" in out
    out = cli("score", "--full").output
    assert out.startswith("Scored 2 customers (full pass: asked for) in ")
    assert "2 changed, 0 writes queued." in out


def test_score_as_of_says_report_only_once(cli, history):
    day = ago(20).date().isoformat()
    out = cli("score", "--as-of", day).output.splitlines()[0]
    assert f"(report-only run as of {day}: nothing stored)" in out
    assert out.replace("-", " ").count("report only") == 1, out


def test_a_missing_value_reads_n_a_in_score_and_customers(cli, history):
    """One wording for a score without a value in every text output of score and customers:
    'n/a' (as the demo and kpis say it), never Python's None nor 'no value'."""
    out = cli("score", "--customer", "bob@example.com").output
    assert "\n  cx_score: n/a\n" in out and "\n  cx_clv_90d: n/a\n" in out
    shown = cli("customers", "show", "bob@example.com").output
    assert "\n    cx_score: n/a\n" in shown
    explained = cli("customers", "explain", "bob@example.com").output
    assert "\nCX score (cx_score): n/a\n" in explained
    listed = cli("customers", "list").output.splitlines()
    assert listed[1].startswith("2 ") and " n/a " in listed[1]  # bob, newest first: no CX score
    for text in (out, shown, explained, "\n".join(listed)):
        assert "None" not in text and "no value" not in text
    # JSON keeps null
    data = json.loads(cli("customers", "explain", "bob@example.com", "--json").output)
    assert data["scores"]["cx_score"]["value"] is None


def test_score_as_of_prints_a_customer_and_stores_nothing(cli, history, engine):
    from tests.conftest import count
    day = ago(20).date().isoformat()
    r = cli("score", "--as-of", day, "--customer", "ann@example.com")
    assert r.exit_code == 0, r.output
    assert "report-only run" in r.output and "customer 1:" in r.output
    assert "Bought on 1 day" in r.output        # the second order came after that day
    assert count(engine, "scores") == 0


@pytest.mark.parametrize(("day", "says"), [
    ("2026-13-01", "'2026-13-01' does not match the format '%Y-%m-%d'"),
    ("yesterday", "'yesterday' does not match the format"),
    ("", "'' does not match the format"),
    ((datetime.now(UTC) + timedelta(days=2)).date().isoformat(), "is in the future (today is "),
])
def test_score_as_of_refuses_bad_and_future_dates(cli, history, engine, day, says):
    from tests.conftest import count
    r = cli("score", "--as-of", day)
    assert r.exit_code == 2 and says in r.output, r.output
    assert "Invalid value for '--as-of'" in r.output
    assert count(engine, "scores") == 0 and count(engine, "job_runs") == 0


def test_score_as_of_today_and_before_anyone_existed(cli, history):
    today = datetime.now(UTC).date().isoformat()
    assert json.loads(cli("score", "--as-of", today, "--json").output)["customers_scored"] == 2
    early = json.loads(cli("score", "--as-of", ago(100).date().isoformat(), "--json").output)
    assert early["customers_scored"] == 0        # nobody had a touchpoint then: nobody is scored


def test_score_is_skipped_while_another_process_scores(cli, history, engine):
    assert leases.acquire(engine, run.LEASE, "scheduler-elsewhere", timedelta(minutes=5))
    r = cli("score")
    assert r.exit_code == 1 and "another process is running the score job" in r.output


def test_customers_explain_every_score_in_words_and_json(cli, history):
    cli("score")
    r = cli("customers", "explain", "ann@example.com")
    assert r.exit_code == 0, r.output
    for field in FIELDS.values():
        assert f"({field.name})" in r.output
    # the reason is the full pass's, dated: models are reused until the next one
    assert re.search(r"Fallback \(at the full pass of \d{4}-\d\d-\d\d: only 1 customer has purchases",
                     r.output)
    assert "9 is a promoter answer" in r.output
    data = json.loads(cli("customers", "explain", "ann@example.com", "--json").output)
    assert set(data["scores"]) == set(FIELDS)
    assert data["scores"]["cx_nps_category"] == {"value": "promoter", "explanation":
                                                 "9 is a promoter answer (promoter 9-10, passive 7-8, "
                                                 "detractor 0-6)."}
    assert data["inputs"]["retention"]["purchase_days"] == 2
    assert data["inputs"]["settings"]["cx"]["negative_weight"] == 2.0
    assert cli("customers", "explain", "nobody@example.com").exit_code == 1


def test_explain_before_scoring_says_what_to_run(cli, history):
    r = cli("customers", "explain", "ann@example.com")
    assert r.exit_code == 1 and "run `cx-connector score`" in r.output


def test_customers_list_and_show_include_every_score(cli, history):
    cli("score")
    listed = json.loads(cli("customers", "list", "--json").output)
    assert all(set(c["scores"]) == set(FIELDS) for c in listed)
    shown = json.loads(cli("customers", "show", "ann@example.com", "--json").output)
    assert shown["scores"]["cx_nps_last"] == 9 and shown["scores"]["cx_journey_stage"] == "advocacy"


def test_kpis_prints_the_snapshot_and_stores_it(cli, history, engine):
    from tests.conftest import count
    cli("score")
    r = cli("kpis")
    assert r.exit_code == 0, r.output
    assert "NPS (promoters - detractors, %): 100.0" in r.output
    # each customer counts in the furthest stage reached: the label says so
    assert "\n  Customers per stage (furthest reached): " in r.output
    assert "(rolling 90 days; 2 customers):" in r.output
    data = json.loads(cli("kpis", "--json").output)
    assert data["latest"]["nps"] == 100.0 and data["latest"]["customers"] == 2
    assert count(engine, "kpi_snapshots") == 1


def test_demo_scores_the_samples_and_prints_kpis():
    r = CliRunner().invoke(main, ["demo"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = r.output.split("Scores as of")[1]
    assert "alice@example.com" in out and "CX 100 (green)" in out
    assert re.search(r"recency fallback \(only \d+ customers have purchases", out)
    assert "Company KPIs (rolling 90 days):" in out
    # the value depends on the bundled samples
    assert re.search(r"^  NPS \(promoters - detractors, %\): -?\d+\.\d$", out, re.M)
    for _, label in KPI_ROWS:  # every KPI, as `cx-connector kpis` shows them
        assert f"\n  {label}: " in out, label
    assert f"\n  {STAGES_LABEL}: awareness " in out
    assert "run `cx-connector demo --database-url sqlite:///cx-demo.db` to keep the data" in out
    data = json.loads(CliRunner().invoke(main, ["demo", "--json"], catch_exceptions=False).output)
    scored = {c["email"]: c["scores"] for c in data["scoring"]["customers"]}
    assert scored["bob@example.com"]["cx_nps_category"] == "detractor"
    assert set(scored["carol@acme.example"]) == set(FIELDS)
    assert data["scoring"]["kpis"]["checkout_conversion"] == 0.0


def test_the_demo_prints_a_command_that_explains_its_scores(tmp_path, monkeypatch):
    """With --database-url the demo prints the shell commands that explain a customer's
    scores; they work as printed (an admin copies them), in the directory they ran in."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'ann' / 'it'}'s a demo.db"  # a quote and spaces: quoted twice
    (tmp_path / "ann").mkdir()
    r = CliRunner().invoke(main, ["demo", "--database-url", url], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    command = r.output.split("is enough:\n    ")[1].splitlines()[0]
    assert command.endswith("cx-connector --config cx-demo.yaml customers explain alice@example.com")
    echo = command.split(" && ")[0]
    done = subprocess.run(["sh", "-c", echo], cwd=tmp_path, check=True)
    assert done.returncode == 0
    explained = CliRunner().invoke(main, shlex.split(command.split(" && ")[1])[1:], catch_exceptions=False)
    assert explained.exit_code == 0, explained.output
    assert "CX score (cx_score): 100" in explained.output and "CX pyramid" in explained.output


def test_the_explain_command_quotes_only_what_needs_it():
    from cx_connector.cli.demo import explain_command
    assert explain_command("sqlite:///cx-demo.db", "ann@example.com") == (
        "echo 'database_url: sqlite:///cx-demo.db' > cx-demo.yaml && "
        "cx-connector --config cx-demo.yaml customers explain ann@example.com")
    # a '#' would start a YAML comment: single-quoted in YAML, then for the shell
    assert explain_command("postgresql://u:p#1@db/cx", 7).startswith(
        "echo 'database_url: '\"'\"'postgresql://u:p#1@db/cx'\"'\"'' > cx-demo.yaml")


TABLES = ("customers", "touchpoints", "deliveries", "outbox", "scores", "job_runs")


def test_the_demo_refuses_a_database_with_data_and_changes_nothing(database_url, rt, engine):
    """The demo rescored everyone in the database it was given and left sample write-backs
    in the outbox, which a real `sync` would send: a database with data is a usage error."""
    from tests.conftest import count
    add(rt, order("ann", ago(3), 30, "1", "coffee"))  # one real customer
    before = {t: count(engine, t) for t in TABLES}
    r = CliRunner().invoke(main, ["demo", "--database-url", database_url], catch_exceptions=False)
    assert r.exit_code == 2, r.output
    assert "Invalid value for '--database-url': this database already holds customers and touchpoints." \
        in r.output
    assert "only runs on a new file or an empty database" in r.output
    assert {t: count(engine, t) for t in TABLES} == before


def test_the_demo_refuses_a_database_with_only_webhook_deliveries(database_url, post_signed, engine):
    from tests.conftest import count
    post_signed("generic", b"{not json")  # a failed delivery, and nothing else
    assert count(engine, "deliveries") == 1 and count(engine, "customers") == 0
    r = CliRunner().invoke(main, ["demo", "--database-url", database_url], catch_exceptions=False)
    assert r.exit_code == 2 and "this database already holds webhook deliveries." in r.output


def test_the_demo_runs_on_an_empty_database_once(database_url, engine):
    """A migrated database without rows is empty; the second run finds the first one's
    samples and is refused, saying why."""
    from tests.conftest import count
    first = CliRunner().invoke(main, ["demo", "--database-url", database_url], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "(the day after the newest sample event)" in first.output
    before = {t: count(engine, t) for t in TABLES}
    again = CliRunner().invoke(main, ["demo", "--database-url", database_url], catch_exceptions=False)
    assert again.exit_code == 2
    assert ("A database an earlier demo filled is refused too: the demo runs once per database."
            in again.output)
    assert {t: count(engine, t) for t in TABLES} == before


def test_the_demo_refuses_its_own_file_without_migrating_it_first(tmp_path):
    """A refused database is not touched, not even its schema (it may be an older release's)."""
    url = f"sqlite:///{tmp_path / 'cx-demo.db'}"
    assert CliRunner().invoke(main, ["demo", "--database-url", url], catch_exceptions=False).exit_code == 0
    path = tmp_path / "cx-demo.db"
    import sqlite3
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001_initial'")
    r = CliRunner().invoke(main, ["demo", "--database-url", url], catch_exceptions=False)
    assert r.exit_code == 2 and "already holds customers, touchpoints and webhook deliveries" in r.output
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0001_initial",)
