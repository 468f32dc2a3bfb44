"""The backfill driver (cx_connector/backfill.py): fresh runs versus --resume, re-runs,
Ctrl-C, retries, the lease and the full scoring pass; through a real connector (Zendesk's
satisfaction ratings, mocked with `responses`) and the real database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import responses
from responses import matchers
from sqlalchemy import select, text

from cx_connector import backfill, db, leases
from cx_connector.connector import CustomerRef
from cx_connector.identity import merge, resolve
from cx_connector.models import backfill_state, customers, job_runs
from tests.clock import SteppingClock
from tests.conftest import NOW, count, fixture_json

RATINGS = "https://acme.zendesk.test/api/v2/satisfaction_ratings.json"
ONLY = ["satisfaction_ratings"]


def rating(rid: int, ticket: int, requester: int = 7881) -> dict:
    r = fixture_json("zendesk", "api", "satisfaction_rating.json")
    r.update(id=rid, ticket_id=ticket, requester_id=requester,
             updated_at=f"2024-01-{ticket % 28 + 1:02d}T10:00:00Z")
    return r


def ratings_page(after: str | None, records: list, next_cursor: str | None, **kw) -> None:
    params = {"score": "received", "page[size]": "100"}
    if after:
        params["page[after]"] = after
    meta = {"has_more": next_cursor is not None, "after_cursor": next_cursor}
    responses.get(RATINGS, match=[matchers.query_param_matcher(params)],
                  json={"satisfaction_ratings": records, "meta": meta}, **kw)


def three_pages() -> None:
    ratings_page(None, [rating(1, 1)], "p2")
    ratings_page("p2", [rating(2, 2)], "p3")
    ratings_page("p3", [rating(3, 3)], None)


def run(rt, **kw):
    kw.setdefault("only", ONLY)
    kw.setdefault("clock", SteppingClock(NOW))
    return backfill.run(rt, "zendesk", **kw)


def saved(engine) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(select(backfill_state).where(
            backfill_state.c.resource == "satisfaction_ratings")).mappings().one())


@responses.activate
def test_rerunning_a_finished_backfill_adds_nothing(rt, engine):
    three_pages()
    first = run(rt)
    assert (first["status"], first["records"], first["new_touchpoints"]) == ("ok", 3, 3)
    state = saved(engine)
    assert (state["status"], state["pages"], state["records"]) == ("done", 3, 3)
    assert state["finished_at"] == NOW
    second = run(rt)
    assert (second["status"], second["records"], second["new_touchpoints"]) == ("ok", 3, 0)
    assert count(engine, "touchpoints") == 3 and count(engine, "customers") == 1
    assert saved(engine)["status"] == "done"


@responses.activate
def test_ctrl_c_keeps_the_cursor_and_resume_continues_from_it(rt, engine):
    ratings_page(None, [rating(1, 1)], "p2")

    def interrupt(request):
        raise KeyboardInterrupt

    responses.add_callback(responses.GET, RATINGS, callback=interrupt, match=[matchers.query_param_matcher(
        {"score": "received", "page[size]": "100", "page[after]": "p2"})])
    seen: list[backfill.Progress] = []
    summary = run(rt, report=seen.append)
    assert summary["status"] == "interrupted"
    assert "cx-connector backfill zendesk --resume" in summary["error"]
    assert seen[-1].kind == "interrupted" and "--resume" in seen[-1].message
    state = saved(engine)
    assert (state["status"], state["cursor"], state["pages"]) == ("interrupted", "p2", 1)
    assert count(engine, "touchpoints") == 1

    with pytest.raises(backfill.BackfillRefused, match=r"did not finish .*--resume.*--restart"):
        run(rt)

    responses.reset()
    ratings_page("p2", [rating(2, 2)], "p3")
    ratings_page("p3", [rating(3, 3)], None)
    summary = run(rt, resume=True)
    assert summary["status"] == "ok" and summary["resumed"]
    assert [c.request.params["page[after]"] for c in responses.calls] == ["p2", "p3"]
    assert count(engine, "touchpoints") == 3
    assert saved(engine)["pages"] == 3


@responses.activate
def test_restart_discards_the_saved_cursor_and_starts_over(rt, engine):
    with db.write(engine) as conn:
        conn.execute(backfill_state.insert().values(
            source="zendesk", resource="satisfaction_ratings", cursor="p3", status="failed", pages=2,
            records=2, started_at=NOW, updated_at=NOW, error="boom"))
    three_pages()
    summary = run(rt, restart=True)
    assert summary["status"] == "ok" and summary["records"] == 3
    assert responses.calls[0].request.params.get("page[after]") is None
    state = saved(engine)
    assert (state["status"], state["pages"], state["error"]) == ("done", 3, None)


@responses.activate
def test_resume_of_a_finished_backfill_has_nothing_to_do(rt, engine):
    three_pages()
    run(rt)
    calls = len(responses.calls)
    summary = run(rt, resume=True)
    assert summary["status"] == "ok" and summary["resources"] == []
    assert summary["already_finished"] == ONLY and len(responses.calls) == calls


def test_refusals_say_what_to_do(rt, engine):
    with pytest.raises(backfill.BackfillRefused, match="no backfill of zendesk to resume"):
        run(rt, resume=True)
    with pytest.raises(backfill.BackfillRefused, match="--resume and --restart"):
        run(rt, resume=True, restart=True)
    with pytest.raises(backfill.BackfillRefused, match="keeps the --since it was started with"):
        run(rt, resume=True, since=NOW)
    with pytest.raises(backfill.BackfillRefused, match="generic cannot backfill"):
        backfill.run(rt, "generic")
    with pytest.raises(backfill.BackfillRefused, match=r"no backfill resource orders .*it has: users"):
        run(rt, only=["orders"])
    with leases.Held(engine, "backfill:zendesk") as held:
        assert held
        with pytest.raises(backfill.BackfillRefused, match="another backfill of zendesk is running"):
            run(rt)


@responses.activate
def test_an_outage_is_retried_with_backoff_then_stops_resumably(rt, engine):
    ratings_page(None, [rating(1, 1)], "p2")
    for _ in range(backfill.MAX_ATTEMPTS):
        responses.get(RATINGS, status=503, body="Service Unavailable", match=[matchers.query_param_matcher(
            {"score": "received", "page[size]": "100", "page[after]": "p2"})])
    clock = SteppingClock(NOW)
    summary = run(rt, clock=clock)
    assert summary["status"] == "failed" and "6 attempts" in summary["error"]
    assert [s for s in clock.sleeps if s >= 1] == [2.0, 4.0, 8.0, 16.0, 32.0]
    state = saved(engine)
    assert (state["status"], state["cursor"]) == ("failed", "p2")
    assert "--resume" in state["error"]


@responses.activate
def test_endless_rate_limiting_stops_instead_of_waiting_forever(rt, engine):
    for _ in range(4):
        responses.get(RATINGS, status=429, json={"error": "TooManyRequests"})
    clock = SteppingClock(NOW)
    summary = run(rt, clock=clock, max_throttled=3)
    assert summary["status"] == "failed" and "still rate limited after 3 waits" in summary["error"]
    assert len(responses.calls) == 4


@responses.activate
def test_a_connector_returning_its_cursor_again_is_stopped(rt, engine):
    ratings_page(None, [rating(1, 1)], "p2")
    ratings_page("p2", [rating(2, 2)], "p2")
    summary = run(rt)
    assert summary["status"] == "failed" and "no new cursor" in summary["error"]
    assert count(engine, "touchpoints") == 2


@responses.activate
def test_a_finished_backfill_makes_the_next_scoring_run_a_full_pass(rt, engine):
    earlier = NOW - timedelta(days=3)
    with db.write(engine) as conn:
        ids = resolve(conn, "shopify", [(CustomerRef("c1", email="a@example.com"), earlier),
                                        (CustomerRef("c2", email="b@example.com"), earlier),
                                        (CustomerRef("c3", email="c@example.com"), earlier)], now=earlier)
        conn.execute(customers.update().values(changed_at=earlier, scored_at=earlier))
        merge(conn, [ids["c2"], ids["c3"]], now=earlier, actor="test", reason="test")
    three_pages()
    summary = run(rt)
    assert summary["status"] == "ok" and summary["full_score_pass"]
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(customers))}
        live = [r for r in rows.values() if r.merged_into_id is None]
        assert {r.changed_at for r in live} == {NOW}  # everyone, touched or not
        assert rows[ids["c3"]].changed_at is None  # merged away: never scored
        assert all(r.changed_at > r.scored_at for r in live if r.scored_at)
        job = conn.execute(select(job_runs).where(job_runs.c.job == "backfill")).mappings().one()
    assert job["status"] == "ok" and job["details"]["full_score_pass"] is True
    assert job["details"]["source"] == "zendesk" and job["details"]["customers_marked"] == len(live)


@responses.activate
def test_an_interrupted_backfill_does_not_request_the_full_pass(rt, engine):
    with db.write(engine) as conn:
        resolve(conn, "shopify", [(CustomerRef("c1"), NOW - timedelta(days=1))],
                now=NOW - timedelta(days=1))
    responses.get(RATINGS, status=401, json={"error": "Couldn't authenticate you"})
    summary = run(rt)
    assert summary["status"] == "failed" and not summary["full_score_pass"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT changed_at FROM customers")).scalar_one() is not None
        assert conn.execute(select(job_runs.c.status)).scalar_one() == "failed"


@responses.activate
def test_progress_reports_pages_remaining_and_waits(rt):
    ratings_page(None, [rating(1, 1)], "p2")
    responses.get(RATINGS, status=429, headers={"Retry-After": "3"}, json={"error": "TooMany"},
                  match=[matchers.query_param_matcher({"score": "received", "page[size]": "100",
                                                       "page[after]": "p2"})])
    ratings_page("p2", [rating(2, 2)], None)
    seen: list[backfill.Progress] = []
    run(rt, report=seen.append)
    assert [p.kind for p in seen] == ["start", "page", "wait", "page", "done"]
    assert [p.records for p in seen if p.kind == "page"] == [1, 2]
    assert seen[-2].remaining == 0 and seen[2].message == "rate limited; waiting 3 s (Retry-After)"


@pytest.mark.parametrize(("text_", "expected"), [
    ("2024-01-31", datetime(2024, 1, 31, tzinfo=UTC)),
    ("2024-01-31T08:30:00+02:00", datetime(2024, 1, 31, 6, 30, tzinfo=UTC)),
    ("2024-01-31T08:30:00", datetime(2024, 1, 31, 8, 30, tzinfo=UTC)),
    ("90d", NOW - timedelta(days=90)),
    ("12w", NOW - timedelta(weeks=12)),
])
def test_since_accepts_dates_times_and_spans(text_, expected):
    assert backfill.parse_since(text_, NOW) == expected


@pytest.mark.parametrize("bad", ["yesterday", "2030-01-01", "-5d", ""])
def test_since_refuses_what_it_cannot_read(bad):
    with pytest.raises(backfill.BackfillRefused):
        backfill.parse_since(bad, NOW)


def test_state_lists_saved_rows(rt, engine):
    with db.write(engine) as conn:
        conn.execute(backfill_state.insert().values(
            source="zendesk", resource="tickets", cursor=json.dumps({"a": 1}), status="running",
            pages=1, records=10, started_at=NOW, updated_at=NOW))
    rows = backfill.state(rt, "zendesk")
    assert [(r["resource"], r["status"], r["records"]) for r in rows] == [("tickets", "running", 10)]
    assert backfill.state(rt, "shopify") == []
