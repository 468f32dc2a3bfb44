"""What the clock process and the CLI do reaches /metrics through the database."""

from __future__ import annotations

import json
import random
import threading
from datetime import timedelta

import pytest
import responses
from sqlalchemy import select

from cx_connector import db, scheduler, sync
from cx_connector.app import create_app
from cx_connector.metrics import stored
from cx_connector.models import deliveries, metric_values
from cx_connector.runtime import build
from cx_connector.scoring import run as scoring
from cx_connector.throttle import FakeClock
from tests.conftest import NOW, make_config
from tests.metrics.scraping import scrape, series, value
from tests.scoring.shop import add, ago, order, tp
from tests.seeding import seed
from tests.test_sync import URL, ok

IDS = [str(900000000000 + i) for i in range(30)]


def test_scoring_runs_show_duration_customers_and_last_success(rt, client):
    add(rt, order("ann", ago(20), 10, "1"), tp("email_engaged", "bob", ago(3)))
    first = scheduler.run_job(rt, "score", scoring.job, lease=scoring.LEASE)
    assert first["status"] == "ok" and first["details"]["mode"] == "full"
    m = scrape(client)
    assert value(m, "cx_job_runs_total", job="score", status="ok") == 1
    assert value(m, "cx_scoring_customers_scored_total", mode="full") == 2
    assert value(m, "cx_scoring_scores_changed_total") == 2
    assert value(m, "cx_scoring_duration_seconds_count", mode="full") == 1
    assert value(m, "cx_scoring_duration_seconds_sum", mode="full") == pytest.approx(
        first["details"]["duration_ms"] / 1000)
    assert value(m, "cx_job_duration_seconds_count", job="score") == 1
    assert value(m, "cx_job_duration_seconds_bucket", job="score", le="+Inf") == 1
    assert value(m, "cx_job_last_success_timestamp_seconds", job="score") == NOW.timestamp()
    assert value(m, "cx_job_last_duration_seconds", job="score") == first["duration_ms"] / 1000

    scheduler.run_job(rt, "score", scoring.job, lease=scoring.LEASE)  # nothing changed since
    m = scrape(client)
    assert value(m, "cx_job_runs_total", job="score", status="ok") == 2
    assert value(m, "cx_scoring_customers_scored_total", mode="incremental") == 0
    assert value(m, "cx_scoring_duration_seconds_count", mode="incremental") == 1
    assert value(m, "cx_scoring_customers_scored_total", mode="full") == 2  # unchanged


def test_failed_and_skipped_runs_are_counted(rt, client):
    def boom(_rt):
        raise ValueError("kaput")

    scheduler.run_job(rt, "enrich", boom)
    started, release = threading.Event(), threading.Event()

    def slow(_rt):
        started.set()
        release.wait(10)
        return {}

    t = threading.Thread(target=scheduler.run_job, args=(rt, "enrich", slow))
    t.start()
    assert started.wait(10)
    assert scheduler.run_job(rt, "enrich", lambda _rt: {})["status"] == "skipped"
    release.set()
    t.join(10)
    m = scrape(client)
    assert value(m, "cx_job_runs_total", job="enrich", status="failed") == 1
    assert value(m, "cx_job_runs_total", job="enrich", status="skipped") == 1
    assert value(m, "cx_job_runs_total", job="enrich", status="ok") == 1
    assert value(m, "cx_job_last_failure_timestamp_seconds", job="enrich") == NOW.timestamp()
    assert value(m, "cx_job_duration_seconds_count", job="enrich") == 2  # skipped runs did not run


@responses.activate
def test_sync_runs_show_outcomes_errors_rate_limits_and_backlog(rt, client):
    rt.connectors = {"hubspot": rt.connectors["hubspot"]}
    seed(rt, "hubspot", IDS)
    m = scrape(client)
    assert value(m, "cx_outbox_writes", source="hubspot", status="pending") == 30
    assert value(m, "cx_outbox_writes", source="hubspot", status="dead") == 0
    assert value(m, "cx_outbox_oldest_due_seconds", source="hubspot") == 0  # due just now

    responses.add(responses.POST, URL, status=429, headers={"Retry-After": "3"})
    responses.add(responses.POST, URL, status=503, body="upstream down")
    responses.add_callback(responses.POST, URL, callback=ok)
    clock = FakeClock(NOW)
    run = scheduler.run_job(rt, "sync", lambda r: sync.sync(r, clock=clock, rng=random.Random(1)))
    assert run["status"] == "ok"
    stats = run["details"]["platforms"]["hubspot"]
    assert stats["failures"] == {"unavailable": 30} and stats["rate_limited"] == 1
    m = scrape(client)
    assert value(m, "cx_writeback_requests_total", source="hubspot") == 3
    assert value(m, "cx_writeback_writes_total", source="hubspot", outcome="retried") == 30
    assert value(m, "cx_writeback_writes_total", source="hubspot", outcome="landed") == 30
    assert value(m, "cx_writeback_writes_total", source="hubspot", outcome="dead") == 0
    assert value(m, "cx_writeback_errors_total", source="hubspot", reason="unavailable") == 30
    assert value(m, "cx_rate_limited_total", source="hubspot", job="sync") == 1
    assert value(m, "cx_rate_limit_waits_total", source="hubspot", job="sync") == 1
    assert value(m, "cx_rate_limit_wait_seconds_total", source="hubspot", job="sync") == pytest.approx(3)
    assert value(m, "cx_outbox_writes", source="hubspot", status="pending") == 0
    assert value(m, "cx_job_runs_total", job="sync", status="ok") == 1


@responses.activate
def test_writes_waiting_for_a_retry_and_dead_writes_are_in_the_backlog(database_url):
    rt = build(make_config(database_url, writeback={"backoff_base": "1h", "max_attempts": 2}),
               clock=lambda: NOW)
    try:
        rt.connectors = {"hubspot": rt.connectors["hubspot"]}
        client = create_app(rt=rt, configure_logging=False).test_client()
        seed(rt, "hubspot", IDS[:4])
        responses.add(responses.POST, URL, status=503, body="upstream down")
        scheduler.run_job(rt, "sync", lambda r: sync.sync(r, clock=FakeClock(NOW),
                                                          rng=random.Random(1)))
        m = scrape(client)
        assert value(m, "cx_outbox_writes", source="hubspot", status="retrying") == 4
        assert value(m, "cx_outbox_writes", source="hubspot", status="pending") == 0
        later = NOW + timedelta(hours=3)  # every retry is due, for two hours at most
        rt.clock = lambda: later
        m = scrape(client)
        assert 3600 <= value(m, "cx_outbox_oldest_due_seconds", source="hubspot") <= 3 * 3600
        scheduler.run_job(rt, "sync", lambda r: sync.sync(r, clock=FakeClock(later),
                                                          rng=random.Random(1)))
        m = scrape(client)
        assert value(m, "cx_outbox_writes", source="hubspot", status="dead") == 4
        assert value(m, "cx_writeback_writes_total", source="hubspot", outcome="dead") == 4
        assert value(m, "cx_writeback_errors_total", source="hubspot", reason="unavailable") == 8
        assert value(m, "cx_outbox_oldest_due_seconds", source="hubspot") == 0
    finally:
        rt.engine.dispose()


@responses.activate
def test_a_refused_record_and_a_refused_token_have_their_reason_class(rt, client):
    rt.connectors = {"hubspot": rt.connectors["hubspot"]}
    seed(rt, "hubspot", IDS[:2])
    responses.add(responses.POST, URL, status=401, json={"message": "expired token"})
    scheduler.run_job(rt, "sync", lambda r: sync.sync(r, clock=FakeClock(NOW)))
    m = scrape(client)
    assert value(m, "cx_writeback_errors_total", source="hubspot", reason="auth") == 2
    assert value(m, "cx_outbox_writes", source="hubspot", status="pending") == 2  # kept for later


def test_dry_run_syncs_count_as_runs_but_send_nothing(rt, client):
    rt.connectors = {"hubspot": rt.connectors["hubspot"]}
    seed(rt, "hubspot", IDS[:3])
    scheduler.run_job(rt, "sync", lambda r: sync.sync(r, dry_run=True, clock=FakeClock(NOW)))
    m = scrape(client)
    assert value(m, "cx_job_runs_total", job="sync", status="ok") == 1
    assert not series(m, "cx_writeback_requests_total")


def test_touchpoints_from_replay_and_import_are_counted_in_the_database(rt, client,
                                                                                   post_signed, tmp_path):
    from click.testing import CliRunner

    from cx_connector import inbox
    from cx_connector.cli import main

    bad = {"touchpoint_id": "r:1", "occurred_at": "2026-05-01T10:00:00Z", "customer": {"source_id": "c1"},
           "kind": "no-such-kind"}
    delivery = post_signed("generic", bad).get_json()["delivery_id"]
    assert inbox.replay(rt.engine, rt.connectors, delivery).status == "failed"  # still bad: nothing
    m = scrape(client)
    assert not series(m, "cx_touchpoints_imported_total")

    lines = tmp_path / "tps.jsonl"
    lines.write_text("\n".join(json.dumps({
        "source": "generic", "touchpoint_id": f"i:{i}", "occurred_at": "2026-05-01T10:00:00Z",
        "customer": {"source_id": f"c{i}"}, "kind": "order_placed", "stage": "purchase",
        "channel": "web"}) for i in range(4)))
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {rt.config.database_url}\n")
    result = CliRunner().invoke(main, ["--config", str(cfg), "import", str(lines)])
    assert result.exit_code == 0, result.output
    CliRunner().invoke(main, ["--config", str(cfg), "import", str(lines)])  # known: not new
    m = scrape(client)
    assert value(m, "cx_touchpoints_imported_total", source="generic", via="import") == 4

    with db.write(rt.engine) as conn:  # a delivery that failed under an earlier (buggy) release
        replayable = conn.execute(deliveries.insert().values(
            source="generic", delivery_key="old-1", topic="", received_at=NOW, headers={},
            body=json.dumps({**bad, "touchpoint_id": "r:2", "kind": "order_placed"}).encode(),
            status="failed", error="bug", attempts=1).returning(deliveries.c.id)).scalar_one()
    assert inbox.replay(rt.engine, rt.connectors, replayable).status == "processed"
    m = scrape(client)
    assert value(m, "cx_touchpoints_imported_total", source="generic", via="replay") == 1
    assert value(m, "cx_inbox_failed_deliveries", source="generic") == 1  # the first one


@responses.activate
def test_backfill_pages_rate_limits_and_run_are_counted(rt, client):
    from cx_connector import backfill
    from tests.clock import SteppingClock
    from tests.test_backfill import ONLY, rating, ratings_page

    ratings_page(None, [rating(1, 1)], "p2")
    ratings_page("p2", [], None, status=429, headers={"Retry-After": "2"})
    ratings_page("p2", [rating(2, 2)], "p3")
    ratings_page("p3", [rating(3, 3)], None)
    summary = backfill.run(rt, "zendesk", only=ONLY, clock=SteppingClock(NOW))
    assert (summary["status"], summary["new_touchpoints"]) == ("ok", 3)
    m = scrape(client)
    assert value(m, "cx_touchpoints_imported_total", source="zendesk", via="backfill") == 3
    assert value(m, "cx_job_runs_total", job="backfill", status="ok") == 1
    assert value(m, "cx_rate_limited_total", source="zendesk", job="backfill") == 1
    assert value(m, "cx_rate_limit_waits_total", source="zendesk", job="backfill") >= 1
    assert value(m, "cx_rate_limit_wait_seconds_total", source="zendesk", job="backfill") >= 2


# --- the stored counters themselves ------------------------------------------------------------


def test_concurrent_increments_from_separate_transactions_all_count(rt):
    def bump():
        for _ in range(20):
            with db.write(rt.engine) as conn:
                b = stored.Batch()
                b.inc("cx_rate_limited", {"source": "hubspot", "job": "sync"})
                b.inc("cx_rate_limit_waits", {"source": "hubspot", "job": "sync"}, 2)
                b.write(conn, NOW)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with rt.engine.connect() as conn:
        got = dict(conn.execute(select(metric_values.c.name, metric_values.c.value)).all())
    assert got == {"cx_rate_limited_total": 80.0, "cx_rate_limit_waits_total": 160.0}


def test_histograms_fold_buckets_of_another_release_into_the_next_larger_one(rt, client):
    with db.write(rt.engine) as conn:
        b = stored.Batch()
        b.observe("cx_job_duration_seconds", {"job": "x"}, 0.3)
        b.observe("cx_job_duration_seconds", {"job": "x"}, 7000)
        b.write(conn, NOW)
        conn.execute(metric_values.insert().values(  # a bucket bound this release does not have
            name="cx_job_duration_seconds_bucket", labels=stored.labels_key({"job": "x", "le": "0.7"}),
            value=5, updated_at=NOW))
        conn.execute(metric_values.insert().values(  # a metric this release does not know
            name="cx_gone_metric_total", labels="{}", value=1, updated_at=NOW))
    m = scrape(client)
    assert value(m, "cx_job_duration_seconds_bucket", job="x", le="0.1") == 0
    assert value(m, "cx_job_duration_seconds_bucket", job="x", le="0.5") == 1
    assert value(m, "cx_job_duration_seconds_bucket", job="x", le="1.0") == 6
    assert value(m, "cx_job_duration_seconds_bucket", job="x", le="3600.0") == 6
    assert value(m, "cx_job_duration_seconds_bucket", job="x", le="+Inf") == 7
    assert value(m, "cx_job_duration_seconds_count", job="x") == 7
    assert value(m, "cx_job_duration_seconds_sum", job="x") == pytest.approx(7000.3)
    assert not any(name.startswith("cx_gone") for name, _ in m)


def test_a_batch_refuses_what_its_definition_does_not_allow():
    b = stored.Batch()
    with pytest.raises(ValueError, match="labels"):
        b.inc("cx_job_runs", {"job": "x"})
    with pytest.raises(ValueError, match="gauge"):
        b.inc("cx_job_last_duration_seconds", {"job": "x"})
    with pytest.raises(ValueError, match="only goes up"):
        b.inc("cx_scoring_scores_changed", {}, -1)
    with pytest.raises(KeyError):
        b.inc("cx_not_declared", {})
