"""Scoring runs: incremental vs full, the daily pass, what is stored and queued, the lease."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select, update

from cx_connector import db, identity, leases, scheduler
from cx_connector.models import outbox, population_models, written_values
from cx_connector.runtime import Runtime, build
from cx_connector.scoring import run
from tests.conftest import NOW, count, make_config
from tests.scoring.shop import (
    Writable,
    add,
    ago,
    cid,
    order,
    pending,
    scored_at,
    snapshots,
    tp,
    values,
)


@pytest.fixture
def crm(rt):
    rt.connectors["crm"] = Writable(None)
    return rt


def _with_clock(rt, when):
    """The same runtime with the clock at ``when``."""
    return Runtime(config=rt.config, engine=rt.engine, connectors=rt.connectors, clock=lambda: when)


def test_the_first_run_is_a_full_pass_and_stores_the_models(rt):
    add(rt, order("ann", ago(20), 10, "1"), tp("email_engaged", "bob", ago(3)))
    report = run.run(rt)
    assert (report["mode"], report["why"]) == ("full", "no population model yet")
    assert report["customers_scored"] == 2 and report["changed"] == 2
    assert count(rt.engine, "population_models") == 3
    assert scored_at(rt, "ann") is not None


def test_incremental_runs_touch_only_changed_customers_and_reuse_the_models(rt):
    add(rt, order("ann", ago(20), 10, "1"), tp("email_engaged", "bob", ago(3)))
    first = run.run(rt)
    bob_before = values(rt, "bob")
    later = _with_clock(rt, NOW + timedelta(minutes=15))
    assert run.run(later)["customers_scored"] == 0            # nothing changed
    add(rt, tp("csat_rating", "ann", ago(1), rating=(5, 5)), now=NOW + timedelta(minutes=20))
    report = run.run(_with_clock(rt, NOW + timedelta(minutes=30)))
    assert (report["mode"], report["customers_scored"]) == ("incremental", 1)
    assert report["models"]["fitted_at"] == first["models"]["fitted_at"]
    assert count(rt.engine, "population_models") == 3        # not refitted
    assert values(rt, "ann")["cx_csat"] == 100
    assert values(rt, "bob") == bob_before                   # untouched, cx_scored_at included


def test_a_full_pass_runs_once_a_day_at_full_score_at(rt):
    add(rt, order("ann", ago(20), 10, "1"))
    run.run(rt)                                              # 12:00: first, full
    assert run.run(_with_clock(rt, NOW + timedelta(hours=14)))["mode"] == "incremental"  # 02:00
    report = run.run(_with_clock(rt, NOW + timedelta(hours=15, minutes=5)))            # 03:05
    assert (report["mode"], report["customers_scored"]) == ("full", 1)
    assert "daily full pass" in report["why"]
    assert run.run(_with_clock(rt, NOW + timedelta(hours=16)))["mode"] == "incremental"


def test_a_finished_backfill_makes_the_next_run_a_full_pass(rt):
    from cx_connector.backfill import request_full_score_pass
    from cx_connector.models import job_runs

    add(rt, order("ann", ago(20), 10, "1"), tp("email_engaged", "bob", ago(3)))
    run.run(rt)
    later = NOW + timedelta(hours=1)
    with db.write(rt.engine) as conn:  # what cx-connector backfill records when it finishes
        request_full_score_pass(conn, later)
        conn.execute(job_runs.insert().values(job="backfill", started_at=later, finished_at=later,
                                              status="ok", details={"full_score_pass": True}))
    report = run.run(_with_clock(rt, later + timedelta(minutes=5)))
    assert (report["mode"], report["customers_scored"]) == ("full", 2)
    assert "backfill" in report["why"]
    assert count(rt.engine, "population_models") == 6        # refitted on the imported history
    assert run.run(_with_clock(rt, later + timedelta(minutes=10)))["mode"] == "incremental"


@pytest.mark.parametrize(("last", "now", "due"), [
    (None, "2026-06-15T12:00", True),
    ("2026-06-15T02:59", "2026-06-15T03:00", True),
    ("2026-06-15T03:00", "2026-06-15T23:59", False),
    ("2026-06-14T03:10", "2026-06-15T02:00", False),
    ("2026-06-13T12:00", "2026-06-15T02:00", True),   # more than 24 hours ago
])
def test_full_pass_due(last, now, due):
    def t(s):
        return datetime.fromisoformat(s).replace(tzinfo=UTC) if s else None
    assert run.full_pass_due(t(last), t(now), "03:00") is due


def test_a_settings_change_forces_a_full_pass(rt, database_url):
    add(rt, order("ann", ago(20), 10, "1"))
    run.run(rt)
    changed = build(make_config(database_url, scoring={"cross_sell": {"by": "product"}}),
                    engine=rt.engine, clock=lambda: NOW + timedelta(minutes=5))
    add(rt, tp("email_engaged", "ann", ago(0)), now=NOW + timedelta(minutes=1))
    report = run.run(changed)
    assert report["mode"] == "full" and "settings changed" in report["why"]


@pytest.mark.parametrize("scoring", [
    {"churn": {"high_below": 50, "medium_below": 80}},
    {"health": {"green_at": 90}},
    {"cx": {"weights": {"needs_met": 1, "ease": 0, "enjoyment": 0}}},
    {"horizon_days": 30},
    {"engagement_half_life_days": 10},
])
def test_any_scoring_setting_change_rescores_everyone(rt, database_url, scoring):
    """A threshold, weight, half-life or horizon changes scores, not only the models: the
    next run rescores everyone, so no customer keeps the old rules until the daily pass."""
    add(rt, order("ann", ago(20), 10, "1"), tp("email_engaged", "bob", ago(40)))
    run.run(rt)
    changed = build(make_config(database_url, scoring=scoring), engine=rt.engine,
                    clock=lambda: NOW + timedelta(minutes=5))
    report = run.run(changed)
    assert report["mode"] == "full" and report["customers_scored"] == 2
    key = next(iter(scoring))
    assert report["why"] == f"scoring settings changed since the models were fitted: scoring.{key}"
    assert run.run(_with_clock(changed, NOW + timedelta(minutes=6)))["mode"] == "incremental"


def test_the_kpi_window_does_not_rescore(rt, database_url):
    add(rt, order("ann", ago(20), 10, "1"))
    run.run(rt)
    changed = build(make_config(database_url, scoring={"kpi_window_days": 30}), engine=rt.engine,
                    clock=lambda: NOW + timedelta(minutes=5))
    assert run.run(changed)["mode"] == "incremental"


def test_full_asks_for_a_full_pass(rt):
    add(rt, order("ann", ago(20), 10, "1"))
    run.run(rt)
    assert run.run(_with_clock(rt, NOW + timedelta(minutes=1)), full=True)["mode"] == "full"


def test_snapshots_only_when_a_value_changed(rt):
    add(rt, order("ann", ago(20), 10, "1"))
    run.run(rt)
    run.run(_with_clock(rt, NOW + timedelta(minutes=1)), full=True)  # same values, later cx_scored_at
    assert len(snapshots(rt, "ann")) == 1
    run.run(_with_clock(rt, NOW + timedelta(days=30)), full=True)   # retention decayed
    assert len(snapshots(rt, "ann")) == 2


def test_the_outbox_gets_only_changed_values(crm):
    rt = crm
    add(rt, order("ann", ago(20), 10, "1", "coffee"), tp("order_fulfilled", "ann", ago(19), order_id="1"))
    run.run(rt)
    [write] = pending(rt)
    assert write["external_id"] == "ann"
    assert set(write["fields"]) == {k for k, v in values(rt, "ann").items() if v is not None}
    assert write["fields"]["cx_scored_at"] == "2026-06-15T12:00:00Z"
    # the sender wrote it
    with db.write(rt.engine) as conn:
        conn.execute(update(outbox).values(status="done"))
        conn.execute(written_values.insert(), [
            {"source": "crm", "external_id": "ann", "field": k, "value": v, "written_at": NOW}
            for k, v in write["fields"].items()])
    run.run(_with_clock(rt, NOW + timedelta(minutes=1)), full=True)
    assert [w["status"] for w in pending(rt)] == ["done"]       # nothing changed: no write
    add(rt, tp("csat_rating", "ann", ago(0), rating=(1, 5)), now=NOW + timedelta(minutes=2))
    run.run(_with_clock(rt, NOW + timedelta(minutes=3)))
    new = [w for w in pending(rt) if w["status"] == "pending"]
    assert len(new) == 1
    # the rating: a CX event (score, health), the CSAT, and the furthest journey stage
    assert set(new[0]["fields"]) == {"cx_score", "cx_health", "cx_csat", "cx_journey_stage", "cx_scored_at"}
    assert new[0]["previous"]["cx_csat"] is None and new[0]["fields"]["cx_csat"] == 0


def test_as_of_scores_the_past_and_stores_nothing(crm):
    rt = crm
    add(rt, order("ann", ago(200), 10, "1"), order("ann", ago(100), 20, "2"), order("ann", ago(5), 30, "3"))
    report = run.run(rt, as_of=date(2026, 1, 1), show=[cid(rt, "ann")])
    assert report["mode"] == "as_of" and report["stored"] is False
    assert report["as_of"] == datetime(2026, 1, 1, 23, 59, 59, 999999, tzinfo=UTC)
    [ann] = report["customers"]
    assert ann["scores"]["cx_expected_purchases_90d"] is not None
    # only the order of 2025-11-27 is before the end of 2026-01-01
    assert "Bought on 1 day, the last 35 days ago" in ann["explanation"]["cx_retention_probability"]
    for table in ("scores", "score_snapshots", "outbox", "population_models"):
        assert count(rt.engine, table) == 0, table
    assert scored_at(rt, "ann") is None


def test_a_touchpoint_arriving_during_a_run_keeps_its_customer_due(rt, monkeypatch):
    add(rt, order("ann", ago(20), 10, "1"))
    compute = run.compute

    def compute_while_a_webhook_arrives(*args, **kwargs):
        add(rt, tp("csat_rating", "ann", ago(0), rating=(5, 5)), now=NOW + timedelta(seconds=1))
        return compute(*args, **kwargs)

    monkeypatch.setattr(run, "compute", compute_while_a_webhook_arrives)
    run.run(rt)
    monkeypatch.setattr(run, "compute", compute)
    assert values(rt, "ann")["cx_csat"] is None                  # scored without the rating
    report = run.run(_with_clock(rt, NOW + timedelta(minutes=1)))
    assert (report["mode"], report["customers_scored"]) == ("incremental", 1)
    assert values(rt, "ann")["cx_csat"] == 100


def test_merged_customers_are_not_scored(rt):
    add(rt, order("ann", ago(20), 10, "1"), tp("email_engaged", "ann2", ago(2)))
    survivor, merged = cid(rt, "ann"), cid(rt, "ann2")
    with db.write(rt.engine) as conn:
        identity.merge(conn, [survivor, merged], now=NOW, actor="test", reason="test")
    report = run.run(rt)
    assert report["customers_scored"] == 1
    assert count(rt.engine, "scores") == 1
    assert values(rt, "ann")["cx_journey_stage"] == "purchase"


def test_a_second_concurrent_run_is_skipped(rt):
    add(rt, order("ann", ago(20), 10, "1"))
    assert leases.acquire(rt.engine, run.LEASE, "the-scheduler", timedelta(minutes=5))
    record = scheduler.run_job(rt, "score", run.job, lease=run.LEASE)
    assert record["status"] == "skipped"
    assert count(rt.engine, "scores") == 0
    leases.release(rt.engine, run.LEASE, "the-scheduler")
    assert scheduler.run_job(rt, "score", run.job, lease=run.LEASE)["status"] == "ok"


def test_the_scheduler_runs_score_and_kpis_under_their_leases(rt):
    jobs = {j.id: j for j in scheduler.jobs()}
    assert jobs["score"].lease == run.LEASE and jobs["score"].every(rt.config) == timedelta(minutes=15)
    assert jobs["kpis"].lease == "job:kpis"
    add(rt, order("ann", ago(20), 10, "1"))
    records = [scheduler.run_job(rt, j.id, j.func, lease=j.lease) for j in scheduler.jobs()
               if j.id in ("score", "kpis")]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert records[0]["details"]["customers_scored"] == 1 and records[1]["details"]["computed"]
    with db.read(rt.engine) as conn:
        kinds = sorted(conn.execute(select(population_models.c.kind)).scalars())
    assert kinds == ["bgnbd", "cooccurrence", "gamma_gamma"]


def test_stored_values_are_canonical(rt):
    """The outbox trusts scoring's values to be canonical (enqueue_many(canonical_input=True))."""
    from cx_connector.fields import FIELDS, canonical
    from cx_connector.models import scores
    add(rt, order("ann", ago(20), 19.999, "1", "coffee"), order("ann", ago(3), 7.125, "2", "tea"),
        tp("csat_rating", "ann", ago(2), rating=(2, 3)), tp("nps_response", "ann", ago(1), rating=(7, 9)),
        tp("email_engaged", "bob", ago(33)))
    run.run(rt)
    with db.read(rt.engine) as conn:
        stored = [dict(v) for v in conn.execute(select(scores.c.score_values)).scalars()]
    for scored in stored:
        assert set(scored) == set(FIELDS)
        for name, value in scored.items():
            assert canonical(name, value) == value and type(canonical(name, value)) is type(value), name


def test_stored_json_is_exactly_the_values_and_explanations(crm, monkeypatch):
    import json as json_
    rt = crm
    add(rt, order("ann", ago(20), 19.999, "1", "coffee"), tp("nps_response", "ann", ago(1), rating=(7, 9)),
        tp("email_engaged", "bob", ago(33)))
    captured = {}
    compute = run.compute

    def keep(*args, **kwargs):
        captured["result"] = compute(*args, **kwargs)
        return captured["result"]

    monkeypatch.setattr(run, "compute", keep)
    run.run(rt)
    result = captured["result"]
    rows = range(result.f.n)
    assert [json_.loads(t) for t in result.values_json(rows)] == result.values(rows)
    full, set_only = result.texts(rows)
    assert full == [db.json_dumps(v) for v in result.values(rows)]          # as json_dumps writes them
    assert set_only == [db.json_dumps({k: x for k, x in v.items() if x is not None})
                        for v in result.values(rows)]
    # the outbox got exactly those texts for the records' first writes
    with db.read(rt.engine) as conn:
        written = dict(conn.execute(select(outbox.c.customer_id, outbox.c.fields)).all())
    assert written == {c: json_.loads(t) for c, t in zip(result.ids.tolist(), set_only, strict=True)}
    from cx_connector.models import scores
    from cx_connector.scoring import explain
    assert [explain.expand(json_.loads(t), result.context) for t in result.explanations(rows, 7)] == [
        {**result.explanation(i), "context": 7} for i in rows]
    # what the database holds, expanded with its context, is the whole explanation
    with db.read(rt.engine) as conn:
        stored = dict(conn.execute(select(scores.c.customer_id, scores.c.explanation)).all())
        expanded = {c: explain.stored(conn, e) for c, e in stored.items()}
    for i, c in enumerate(result.ids.tolist()):
        assert "model" not in stored[c] and "settings" not in stored[c]        # one copy, in the context
        assert expanded[c] == {**result.explanation(i), "context": stored[c]["context"]}
        assert set(expanded[c]["settings"]) >= {"horizon_days", "churn", "health", "cx"}


def test_explanations_share_one_context_row_per_models_and_settings(rt, database_url):
    from cx_connector.scoring import explain
    from tests.scoring.shop import explanation
    add(rt, order("ann", ago(20), 10, "1"), tp("email_engaged", "bob", ago(3)))
    run.run(rt)
    assert count(rt.engine, "score_contexts") == 1
    first = explanation(rt, "ann")
    assert first["settings"]["churn"] == {"high_below": 30.0, "medium_below": 60.0}
    add(rt, tp("csat_rating", "ann", ago(1), rating=(5, 5)), now=NOW + timedelta(minutes=1))
    run.run(_with_clock(rt, NOW + timedelta(minutes=2)))          # incremental, same models and settings
    assert count(rt.engine, "score_contexts") == 1
    assert explanation(rt, "ann")["context"] == first["context"]
    # other churn thresholds: a full pass (everyone under the new rules) and a new context
    stricter = build(make_config(database_url, scoring={"churn": {"high_below": 50, "medium_below": 80}}),
                     engine=rt.engine, clock=lambda: NOW + timedelta(minutes=4))
    add(rt, tp("csat_rating", "ann", ago(0), rating=(1, 5)), now=NOW + timedelta(minutes=3))
    assert run.run(stricter)["mode"] == "full"
    assert count(rt.engine, "score_contexts") == 2
    ann, bob = explanation(rt, "ann"), explanation(rt, "bob")
    assert ann["context"] == bob["context"] != first["context"]
    assert bob["settings"]["churn"]["high_below"] == 50.0
    assert "high risk below 50, medium below 80" in explain.render(bob, values(rt, "bob"))["cx_churn_risk"]
    # the old context row stays: the snapshots and explanations made under it keep their words
    assert explain.render(first, {"cx_churn_risk": "low", "cx_retention_probability": 71})[
        "cx_churn_risk"].startswith("Retention probability 71%: high risk below 30, medium below 60")


def test_explanations_stored_before_contexts_existed_still_render(rt):
    """Version 1 explanations carry their own copy of the model and settings."""
    from cx_connector.models import scores
    from cx_connector.scoring import explain
    from tests.scoring.shop import explanation
    add(rt, order("ann", ago(20), 10, "1"))
    run.run(rt)
    e = explanation(rt, "ann")
    old = {"version": 1, **{k: v for k, v in e.items() if k not in ("version", "context")}}
    with db.write(rt.engine) as conn:
        conn.execute(update(scores).where(scores.c.customer_id == cid(rt, "ann")).values(explanation=old))
    assert explanation(rt, "ann") == old
    assert explain.render(old, values(rt, "ann")) == explain.render(e, values(rt, "ann"))
    with pytest.raises(ValueError, match="expanded"):   # a context id alone cannot be shown
        explain.render({"version": 2, "context": e["context"], "retention": e["retention"]}, {})


def test_as_of_today_is_now_and_the_future_is_refused(rt):
    add(rt, order("ann", ago(20), 10, "1"), tp("email_engaged", "bob", ago(3)))
    report = run.run(rt, as_of=NOW.date())
    assert report["as_of"] == NOW and report["customers_scored"] == 2
    assert run.run(rt, as_of=ago(10).date())["customers_scored"] == 1     # bob had no touchpoint yet
    with pytest.raises(ValueError, match="in the future"):
        run.run(rt, as_of=(NOW + timedelta(days=1)).date())
    assert count(rt.engine, "scores") == 0


def test_values_texts_keep_types_and_close_without_the_last_field():
    """:meth:`Result.texts` joins per-field tokens: a column mixing 1, 1.0 and True keeps
    each one's JSON, and a row whose last field is None still closes its object."""
    from cx_connector.fields import SCORE_FIELDS
    names = [f.name for f in SCORE_FIELDS]
    columns = {name: [None, None, None, None] for name in names}
    columns["cx_score"] = [1, 1.0, True, None]
    columns["cx_health"] = ["green", None, "red", None]
    columns["cx_scored_at"] = ["2026-06-15T12:00:00Z", None, None, None]
    result = run.Result.__new__(run.Result)   # texts() reads the columns only
    result.columns = columns
    rows = range(4)
    full, set_only = result.texts(rows)
    assert full == [db.json_dumps(v) for v in result.values(rows)]
    assert set_only == [db.json_dumps({k: x for k, x in v.items() if x is not None})
                        for v in result.values(rows)]
    assert set_only[1:] == ['{"cx_score":1.0}', '{"cx_score":true,"cx_health":"red"}', "{}"]
    rows = range(1, 3)                        # a slice: the same texts as those rows of the whole
    assert result.texts(rows) == (full[1:3], set_only[1:3])


def test_a_full_pass_stopped_half_way_is_done_again_by_the_next_run(rt, database_url, monkeypatch):
    """The pass's models are stored last: a pass that stopped after some chunks (a deploy,
    SIGKILL, a database error) leaves the old models, so the next run is a full pass again.
    It once stored them first, and the next runs were incremental: the customers not yet
    written kept the scores of the old settings until the next daily pass."""
    from tests.scoring.shop import explanation as shop_explanation
    add(rt, *[order(f"c{i}", ago(10 + i), 10, f"o{i}") for i in range(5)])
    run.run(rt)
    monkeypatch.setattr(run, "WRITE_CHUNK", 2)
    changed = build(make_config(database_url, scoring={"churn": {"high_below": 50, "medium_below": 80}}),
                    engine=rt.engine, clock=lambda: NOW + timedelta(minutes=5))
    from cx_connector.scoring import store
    real, calls = store.set_scored_at, [0]

    def stopped_in_the_second_chunk(*args, **kwargs):  # the last statement of a chunk's transaction
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("the process was stopped here")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "set_scored_at", stopped_in_the_second_chunk)
    with pytest.raises(RuntimeError):
        run.run(changed)
    monkeypatch.setattr(store, "set_scored_at", real)
    half = [shop_explanation(rt, f"c{i}")["settings"]["churn"]["high_below"] for i in range(5)]
    assert sorted(half) == [30, 30, 30, 50, 50]  # one chunk of two written, under the new rules
    report = run.run(_with_clock(changed, NOW + timedelta(minutes=6)))
    assert report["mode"] == "full" and report["customers_scored"] == 5, report["why"]
    for i in range(5):
        assert shop_explanation(rt, f"c{i}")["settings"]["churn"]["high_below"] == 50
