"""``cx-connector backfill`` as an admin uses it: plain progress lines when not on a
terminal, a bar on one, the summary, --json, --status, and the exit codes."""

from __future__ import annotations

import io
import json

import pytest
import responses
from click.testing import CliRunner
from responses import matchers

from cx_connector import backfill
from cx_connector.cli import main
from cx_connector.cli.backfill import Reporter
from tests.conftest import TEST_CONNECTORS, count, fixture_json

RATINGS = "https://acme.zendesk.test/api/v2/satisfaction_ratings.json"


@pytest.fixture
def cli(tmp_path, database_url):
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(json.dumps({"database_url": database_url,
                               "connectors": {"zendesk": TEST_CONNECTORS["zendesk"],
                                              "generic": TEST_CONNECTORS["generic"]}}))

    def run(*args):
        return CliRunner().invoke(main, ["--config", str(cfg), *args], catch_exceptions=False)
    return run


def ratings(after: str | None, ids: list[int], next_cursor: str | None) -> None:
    params = {"score": "received", "page[size]": "100", **({"page[after]": after} if after else {})}
    records = [{**fixture_json("zendesk", "api", "satisfaction_rating.json"), "id": i, "ticket_id": i}
               for i in ids]
    meta = {"has_more": bool(next_cursor), "after_cursor": next_cursor}
    responses.get(RATINGS, match=[matchers.query_param_matcher(params)],
                  json={"satisfaction_ratings": records, "meta": meta})


@responses.activate
def test_plain_progress_lines_and_summary(cli, engine):
    ratings(None, [1, 2], "p2")
    ratings("p2", [3], None)
    r = cli("backfill", "zendesk", "--only", "satisfaction_ratings")
    assert r.exit_code == 0, r.output
    assert "backfill zendesk: satisfaction_ratings\n" in r.stderr
    assert "backfill zendesk satisfaction_ratings: starting\n" in r.stderr
    assert ("backfill zendesk satisfaction_ratings: page 1, 2 records · 1 page · 2 new touchpoints"
            in r.stderr)
    assert "backfill zendesk satisfaction_ratings: done, 3 records · 2 pages · 3 new touchpoints" in r.stderr
    assert "satisfaction_ratings  done    2      3        3" in r.stdout
    assert "zendesk: 3 records, 3 new touchpoints. The next scoring run rescores the 1 customer." \
        in r.stdout
    assert count(engine, "touchpoints") == 3


@responses.activate
def test_json_summary(cli):
    ratings(None, [1], None)
    r = cli("backfill", "zendesk", "--only", "satisfaction_ratings", "--json")
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["status"] == "ok" and out["new_touchpoints"] == 1 and out["full_score_pass"] is True
    assert out["resources"][0]["resource"] == "satisfaction_ratings"


@responses.activate
def test_failure_exits_1_and_says_how_to_resume_then_status_and_refusal(cli):
    ratings(None, [1], "p2")
    responses.get(RATINGS, status=401, json={"error": "Couldn't authenticate you"}, match=[
        matchers.query_param_matcher({"score": "received", "page[size]": "100", "page[after]": "p2"})])
    r = cli("backfill", "zendesk", "--only", "satisfaction_ratings")
    assert r.exit_code == 1
    assert "check connectors.zendesk credentials" in r.stderr
    assert "cx-connector backfill zendesk --resume" in r.stderr

    r = cli("backfill", "zendesk", "--status")
    assert r.exit_code == 0
    assert "satisfaction_ratings  failed  1      1" in r.stdout

    r = cli("backfill", "zendesk", "--only", "satisfaction_ratings")
    assert r.exit_code == 2
    assert "did not finish" in r.stderr and "--resume" in r.stderr

    ratings("p2", [2], None)
    r = cli("backfill", "zendesk", "--resume")
    assert r.exit_code == 0, r.output
    assert "(resuming)" in r.stderr and "starting at page 2 (resumed)" in r.stderr


def test_refused_for_a_connector_without_an_api_and_bad_since(cli):
    r = cli("backfill", "generic")
    assert r.exit_code == 2 and ("generic has no API to import history from (enabled sources that "
                                 "can: zendesk)") in r.stderr
    r = cli("backfill", "zendesk", "--since", "last tuesday")
    assert r.exit_code == 2 and "--since 'last tuesday'" in r.stderr
    r = cli("backfill", "shopify")  # a usage error like every other, naming what is enabled
    assert r.exit_code == 2 and "shopify is not enabled" in r.stderr
    assert "(enabled: generic, zendesk)" in r.stderr
    r = cli("backfill", "zendesk", "--status")
    assert r.exit_code == 0 and "no backfill of zendesk has been started" in r.stdout
    # a refused run prints its error alone, not a "backfill zendesk: ..." line as if it started
    r = cli("backfill", "zendesk", "--only", "bogus")
    assert r.exit_code == 2 and r.stderr.startswith("error: zendesk has no backfill resource bogus")
    r = cli("backfill", "zendesk", "--resume", "--restart")
    assert r.exit_code == 2 and r.stderr.startswith("error: --resume and --restart exclude each other")


def test_terminal_bar_with_rate_and_eta():
    out = io.StringIO()
    report = Reporter(out, tty=True)
    report(backfill.Progress("start", "zendesk", "tickets"))
    report(backfill.Progress("page", "zendesk", "tickets", pages=3, records=3000, touchpoints=2990,
                             remaining=1000, rate=500.0, eta=2.0))
    report(backfill.Progress("wait", "zendesk", "tickets", pages=3, records=3000, remaining=1000,
                             message="rate limited; waiting 45 s (Retry-After)"))
    report(backfill.Progress("done", "zendesk", "tickets", pages=4, records=4000, touchpoints=3990))
    text = out.getvalue()
    assert "\r\x1b[2Kzendesk tickets  [##################------]  75%  3,000 records · 3 pages · " \
           "2,990 new touchpoints · 500/s · ETA 0:00:02" in text
    assert "(rate limited; waiting 45 s (Retry-After))" in text
    assert text.endswith("\r\x1b[2Kzendesk tickets: done, 4,000 records · 4 pages · 3,990 new touchpoints\n")


def test_plain_lines_name_the_remaining_records_and_waits():
    out = io.StringIO()
    report = Reporter(out, tty=False)
    report(backfill.Progress("page", "hubspot", "contacts", pages=2, records=400, touchpoints=10,
                             remaining=600))
    report(backfill.Progress("wait", "hubspot", "contacts", message="rate limited; waiting 2 s"))
    report(backfill.Progress("failed", "hubspot", "contacts", pages=2, records=400,
                             message="boom; run `cx-connector backfill hubspot --resume`"))
    assert out.getvalue().splitlines() == [
        "backfill hubspot contacts: page 2, 400 records · 2 pages · 10 new touchpoints, 600 to go",
        "backfill hubspot contacts: rate limited; waiting 2 s",
        "backfill hubspot contacts: failed, 400 records · 2 pages · 0 new touchpoints: boom; run "
        "`cx-connector backfill hubspot --resume`",
    ]


@responses.activate
def test_ctrl_c_exits_130_and_says_how_to_resume(cli):
    ratings(None, [1], "p2")

    def interrupt(request):
        raise KeyboardInterrupt

    responses.add_callback(responses.GET, RATINGS, callback=interrupt, match=[
        matchers.query_param_matcher({"score": "received", "page[size]": "100", "page[after]": "p2"})])
    r = cli("backfill", "zendesk", "--only", "satisfaction_ratings")
    assert r.exit_code == 130
    assert "interrupted" in r.stderr and "cx-connector backfill zendesk --resume" in r.stderr
    r = cli("backfill", "zendesk", "--status", "--json")
    assert [(s["resource"], s["status"], s["cursor"]) for s in json.loads(r.stdout)] == [
        ("satisfaction_ratings", "interrupted", "p2")]


@responses.activate
def test_a_wait_is_one_line_when_not_on_a_terminal(cli):
    """The progress line is the report; the JSON log used to repeat each wait as a warning."""
    responses.get(RATINGS, status=429, headers={"Retry-After": "0"}, json={"error": "TooManyRequests"})
    ratings(None, [1], None)
    r = cli("backfill", "zendesk", "--only", "satisfaction_ratings")
    assert r.exit_code == 0, r.output
    waits = [line for line in r.stderr.splitlines() if "wait" in line]
    assert waits == ["backfill zendesk satisfaction_ratings: rate limited; waiting 0 s (Retry-After)"]
    assert not [line for line in r.stderr.splitlines() if line.startswith("{")]  # no JSON log lines
