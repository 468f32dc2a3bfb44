"""The database going away (for 10 s, mid-traffic) or held by someone else: webhooks
answer 503 within the platforms' deadline, and nothing is lost.

The first test: the deployment users run.

gunicorn (the shipped settings) and a clock process reach PostgreSQL through a TCP
proxy the test controls (bench/dbproxy.py). For 5 s every connection is reset and new
ones refused (a restart, a failover); for 5 more, new connections hang (a host that is
down). Checked: webhooks answer 503 with ``Retry-After``, never 500 and never later than
the platforms' 5 s; ``/healthz`` says 503; nothing is half-written; service resumes by
itself; the clock survives, records the failed runs once it can, and runs again; the
platforms' retries then land every event exactly once.
"""

from __future__ import annotations

import importlib.util
import itertools
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from cx_connector.models import deliveries, job_runs, touchpoints
from tests.conftest import PG_URL, make_config
from tests.test_crash import free_port
from tests.test_processes import start, stop

SECRET = "generic-outage-secret-0123456789"
DEADLINE = 5.0  # HubSpot and Shopify give up after 5 s


def load_dbproxy() -> Any:
    path = Path(__file__).resolve().parent.parent / "bench" / "dbproxy.py"
    spec = importlib.util.spec_from_file_location("dbproxy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(i: int) -> tuple[bytes, dict[str, str]]:
    import base64
    import hashlib
    import hmac
    import json

    body = json.dumps({"touchpoint_id": f"outage:{i}", "occurred_at": "2026-05-01T10:00:00Z",
                       "customer": {"source_id": f"o{i % 40}", "email": f"o{i % 40}@example.com"},
                       "kind": "order_placed", "value": "12.50", "currency": "EUR"}).encode()
    sig = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    return body, {"X-CX-Signature": sig, "X-CX-Delivery-Id": f"d{i}", "Content-Type": "application/json"}


@pytest.mark.slow
@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (CX_TEST_DATABASE_URL)")
def test_database_away_for_ten_seconds(tmp_path, database_url, rt):
    dbproxy = load_dbproxy()
    url = make_url(PG_URL)
    proxy = dbproxy.TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    port = free_port()
    config = tmp_path / "cx.yaml"
    config.write_text(f"database_url: {proxied}\nlogging: {{level: INFO}}\n"
                      "schedule: {score_every: 1s, sync_every: 1s, enrich_every: 1h}\n"
                      "scoring: {min_purchasers: 1000000}\n"
                      f"connectors:\n  generic:\n    secret: {SECRET}\n")
    env = {"CX_CONNECTOR_CONFIG": str(config), "PORT": str(port), "WEB_CONCURRENCY": "2"}
    logs = {"web": tmp_path / "web.log", "clock": tmp_path / "clock.log"}
    web = start(["-m", "gunicorn", "-c", "python:cx_connector.gunicorn_conf"], env, logs["web"], tmp_path)
    clock = start(["-m", "cx_connector", "scheduler"], env, logs["clock"], tmp_path)
    base = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    health: list[tuple[float, int, float]] = []
    phases: dict[str, float] = {}
    lock = threading.Lock()
    try:
        deadline = time.time() + 40
        while True:  # both up
            try:
                up = requests.get(f"{base}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                up = False
            if up and "scheduler running" in logs["clock"].read_text():
                break
            assert time.time() < deadline, logs["web"].read_text()[-2000:] + logs["clock"].read_text()[-2000:]
            time.sleep(0.2)

        counter = itertools.count()
        stop_at = [float("inf")]

        def sender() -> None:
            with requests.Session() as s:
                while time.time() < stop_at[0]:
                    with lock:
                        i = next(counter)
                    body, headers = event(i)
                    t0 = time.perf_counter()
                    try:
                        r = s.post(f"{base}/webhooks/generic", data=body, headers=headers, timeout=15)
                        out = {"i": i, "status": r.status_code, "retry_after": r.headers.get("Retry-After"),
                               "body": r.text}
                    except requests.RequestException as exc:
                        out = {"i": i, "status": 0, "body": repr(exc)}
                    out.update(at=time.time(), seconds=time.perf_counter() - t0)
                    with lock:
                        results.append(out)
                    time.sleep(0.02 if out["status"] == 200 else 0.2)  # the platforms back off too

        def prober() -> None:
            while time.time() < stop_at[0]:
                t0 = time.perf_counter()
                try:
                    code = requests.get(f"{base}/healthz", timeout=15).status_code
                except requests.RequestException:
                    code = 0
                with lock:
                    health.append((time.time(), code, time.perf_counter() - t0))
                time.sleep(0.25)

        threads = [threading.Thread(target=sender) for _ in range(4)] + [threading.Thread(target=prober)]
        for t in threads:
            t.start()
        time.sleep(2)
        phases["cut"] = time.time()
        proxy.cut("reset")
        time.sleep(5)
        phases["hang"] = time.time()
        proxy.cut("hang")
        time.sleep(5)
        phases["restored"] = time.time()
        proxy.restore()
        time.sleep(4)
        stop_at[0] = time.time()
        for t in threads:
            t.join(30)
        # (a sender still running would add results after the retries below are chosen)
        assert not any(t.is_alive() for t in threads), "a sender or the prober did not stop"

        # the platforms retry what was not acknowledged (HubSpot and Shopify retry any non-2xx)
        retried: Counter[int] = Counter()
        todo = [r["i"] for r in results if r["status"] != 200]

        def retry(part: list[int]) -> None:
            with requests.Session() as s:
                for i in part:
                    body, headers = event(i)
                    r = s.post(f"{base}/webhooks/generic", data=body, headers=headers, timeout=15)
                    with lock:
                        retried[r.status_code] += 1

        threads = [threading.Thread(target=retry, args=(todo[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a retry did not finish"
        assert sum(retried.values()) == len(todo)
        assert web.poll() is None and clock.poll() is None, "a process died"
        time.sleep(2.5)  # the clock's next round, on the database again
    finally:
        codes = [stop(web), stop(clock)]
        proxy.close()

    outage = (phases["cut"], phases["restored"])
    during = [r for r in results if outage[0] + 0.5 < r["at"] - r["seconds"] and r["at"] < outage[1]]
    assert during, "no webhook was sent while the database was away"

    # webhooks: 200 or 503 with Retry-After, never 500, never an error, never past the deadline
    statuses = Counter(r["status"] for r in results)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0
    for r in results:
        if r["status"] == 503:
            assert r["retry_after"] and int(r["retry_after"]) > 0
            assert '"database_unavailable"' in r["body"]
    slowest = max(results, key=lambda r: r["seconds"])
    assert slowest["seconds"] < DEADLINE, slowest
    assert all(r["status"] == 503 for r in during), Counter(r["status"] for r in during)

    # /healthz: 503 while away, 200 again afterwards, within the deadline too
    away = [code for at, code, took in health if outage[0] + 0.5 < at - took and at < outage[1]]
    assert away and set(away) == {503}, away
    assert max(took for _, _, took in health) < DEADLINE
    assert health[-1][1] == 200

    # service resumed by itself: after the restore every webhook was answered 200 again
    # (at most a connect timeout's worth of requests still in flight from the outage)
    after = [r for r in results if r["at"] - r["seconds"] > outage[1] + 0.5]
    assert after and {r["status"] for r in after} == {200}, Counter(r["status"] for r in after)
    assert set(retried) == {200}, retried

    # nothing half-written, and every event stored exactly once
    with rt.engine.connect() as conn:
        n_events = len(results)
        per_delivery = dict(conn.execute(select(touchpoints.c.delivery_id, func.count())
                                         .group_by(touchpoints.c.delivery_id)).all())
        stored = conn.execute(select(deliveries.c.id, deliveries.c.status)).all()
        ids = conn.execute(select(touchpoints.c.touchpoint_id)).scalars().all()
        runs = conn.execute(select(job_runs.c.job, job_runs.c.status, job_runs.c.error,
                                   job_runs.c.started_at).order_by(job_runs.c.id)).all()
    assert {s for _, s in stored} == {"processed"}
    assert per_delivery == {d: 1 for d, _ in stored}  # no delivery without its touchpoint, or vice versa
    assert len(ids) == len(set(ids)) == n_events == len(stored), (
        len(ids), len(set(ids)), n_events, len(stored), Counter(r["status"] for r in results), retried)

    # the clock: failed runs recorded (once the database was back), then ok runs again
    failed = [r for r in runs if r.status == "failed"]
    assert failed and all("DatabaseUnavailable" in (r.error or "") or "OperationalError" in (r.error or "")
                          for r in failed), failed
    assert any(r.status == "ok" and r.started_at.timestamp() > outage[1] for r in runs)

    web_log = logs["web"].read_text()
    assert "unhandled error" not in web_log and "WORKER TIMEOUT" not in web_log
    assert codes == [0, 0], (codes, logs["clock"].read_text()[-3000:])


HOLD = """
import sys, time
from sqlalchemy import text
from cx_connector import db
engine = db.make_engine(sys.argv[1])
with db.write(engine) as conn:
    if not db.is_sqlite(engine):
        conn.execute(text("LOCK TABLE deliveries IN EXCLUSIVE MODE"))
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_database_locked_by_another_process_answers_503_within_the_deadline(database_url, post_signed,
                                                                              rt, app):
    """Another process holds the write lock (SQLite) or a table lock (PostgreSQL) for
    longer than ``webhooks.database_timeout``: the webhook gives up after that long with
    503 and Retry-After, stores nothing, and lands once the lock is gone."""
    import subprocess
    import sys

    rt.config = make_config(database_url, webhooks={"database_timeout": "1s"})
    holder = subprocess.Popen([sys.executable, "-c", HOLD, database_url, "2"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        body = {"touchpoint_id": "locked:1", "occurred_at": "2026-05-01T10:00:00Z",
                "customer": {"source_id": "l1"}, "kind": "order_placed", "value": "1", "currency": "EUR"}
        t0 = time.perf_counter()
        r = post_signed("generic", body)
        took = time.perf_counter() - t0
        assert r.status_code == 503, r.get_data(as_text=True)
        assert r.headers["Retry-After"] and r.json["error"] == "database_unavailable"
        assert 0.9 < took < 2.5, took
    finally:
        holder.wait(10)
        holder.stdout.close()
    assert post_signed("generic", body).status_code == 200
    with rt.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(deliveries)).scalar_one() == 1


@pytest.mark.skipif(bool(PG_URL), reason="SQLite's writer queue")
def test_a_writer_that_gave_up_leaves_its_place_in_the_queue_to_the_next(database_url, engine):
    """SQLite: one writer gives up waiting (its deadline passed) while another process
    holds the write lock; the next writer of this process takes over its place in the
    queue and gets the lock as soon as it is free; later writers are not held up."""
    import subprocess
    import sys

    from sqlalchemy import text

    from cx_connector import db
    from cx_connector.errors import DatabaseUnavailable

    holder = subprocess.Popen([sys.executable, "-c", HOLD, database_url, "1.5"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        with pytest.raises(DatabaseUnavailable, match=r"no write slot within 0\.3 s"), \
                db.write(db.deadline(engine, 0.3)):
            pass
        assert 0.25 < time.perf_counter() - t0 < 1.2
        with db.write(db.deadline(engine, 5)) as conn:  # waits for the holder, not for 5 s
            conn.execute(text("INSERT INTO leases (name, holder, acquired_at, expires_at) "
                              "VALUES ('x', 'y', '2026-01-01', '2026-01-01')"))
        assert time.perf_counter() - t0 < 3.5
    finally:
        holder.wait(10)
        holder.stdout.close()
    t1 = time.perf_counter()
    for k in range(20):  # nothing is left queued: with and without deadline, no wait
        with db.write(db.deadline(engine, 1) if k % 2 else engine):
            pass
    assert time.perf_counter() - t1 < 2


@pytest.mark.skipif(bool(PG_URL), reason="SQLite's writer queue")
def test_the_writer_queue_helper_is_one_thread_kept_for_every_contended_write(database_url, engine):
    """Starting a thread for each write that finds another process holding the lock cost
    ~150 us of CPU each time: the process's helper is started once and kept."""
    import subprocess
    import sys

    from cx_connector import db

    helpers = []
    for _ in range(2):
        holder = subprocess.Popen([sys.executable, "-c", HOLD, database_url, "0.3"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            with db.write(db.deadline(engine, 5)):
                pass
        finally:
            holder.wait(10)
            holder.stdout.close()
        helpers.append(db._writer_lock(engine)._helper)
    assert helpers[0] is not None and helpers[0] is helpers[1] and helpers[0].is_alive()
