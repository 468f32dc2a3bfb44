"""Admin console benchmark: every page and API endpoint on a shop of 100,000 customers.

    python bench/admin.py [--customers 100000] [--touchpoints 1000000] [--database-url URL] [--reuse]

Builds the synthetic shop of bench/shop.py (with ``--reuse``: takes the database as it
is if it already holds customers), scores it with a full pass, stores the day's KPI
snapshot (timed, with and without the pain points it now carries), adds an inbox
(deliveries, some failed), dead outbox writes and a month of job runs, then requests
every admin page and API endpoint through the app, logged in, and reports the median
of several requests (the overview's first, uncached, request on its own).

Baseline, measured in the same run: the bare scan of every customer's scores that a
health-filtered page would need without the ``ix_scores_health`` index,
``SELECT count(*) FROM scores WHERE <health of score_values> = 'red'`` (on SQLite with
``NOT INDEXED``, on PostgreSQL with index scans switched off).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select, text, update

from bench import shop
from bench.score import runtime
from cx_connector import db
from cx_connector.app import create_app
from cx_connector.config import config_from_mapping
from cx_connector.models import customers, deliveries, job_runs, outbox, scores
from cx_connector.runtime import Runtime

TOKEN = "bench-admin-token-0123456789"
REPEAT = 5


def baseline(engine: Any) -> float:
    sqlite = db.is_sqlite(engine)
    sql = ("SELECT count(*) FROM scores NOT INDEXED WHERE json_extract(score_values, '$.cx_health') = 'red'"
           if sqlite else "SELECT count(*) FROM scores WHERE (score_values ->> 'cx_health') = 'red'")
    timings = []
    with engine.connect() as conn:
        if not sqlite:
            for setting in ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan"):
                conn.execute(text(f"SET {setting} = off"))
        for _ in range(3):
            t0 = time.perf_counter()
            conn.execute(text(sql)).scalar()
            timings.append(time.perf_counter() - t0)
    return min(timings)


def operations_data(rt: Runtime) -> None:
    """An inbox of 2,000 deliveries (200 failed), 500 dead writes, 30 runs of each job."""
    now = rt.now()
    with db.write(rt.engine) as conn:
        if conn.execute(select(func.count()).select_from(deliveries)).scalar_one():
            return
        conn.execute(deliveries.insert(), [
            {"source": ("hubspot", "zendesk", "shopify")[i % 3], "delivery_key": f"bench-{i}",
             "topic": "bench", "received_at": now - timedelta(minutes=i), "headers": {},
             "body": b'{"broken"' if i % 10 == 0 else b"{}",
             "status": "failed" if i % 10 == 0 else "processed", "attempts": 1,
             "error": "body is not valid JSON" if i % 10 == 0 else None, "processed_at": now}
            for i in range(2000)])
        ids = list(conn.execute(select(outbox.c.id).order_by(outbox.c.id).limit(500)).scalars())
        conn.execute(update(outbox).where(outbox.c.id.in_(ids)).values(
            status="dead", attempts=8, last_error="HTTP 400: property does not exist"))
        conn.execute(job_runs.insert(), [
            {"job": job, "started_at": now - timedelta(minutes=15 * k), "finished_at": now,
             "status": "ok", "duration_ms": 1000 + k, "details": {}, "host": "bench"}
            for job in ("enrich", "checkouts", "score", "kpis", "sync") for k in range(30)])


def timed(client: Any, path: str, headers: dict[str, str] | None = None, repeat: int = REPEAT) -> dict:
    runs, cpu = [], []
    status = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        resp = client.get(path, headers=headers or {})
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        status = resp.status_code
        resp.close()
    return {"path": path, "status": status, "median_ms": statistics.median(runs) * 1000,
            "first_ms": runs[0] * 1000, "max_ms": max(runs) * 1000, "cpu_ms": statistics.median(cpu) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--touchpoints", type=int, default=1_000_000)
    ap.add_argument("--database-url", default=None, help="default: a new SQLite file in a temp directory")
    ap.add_argument("--reuse", action="store_true", help="keep a database that already holds customers")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    url = args.database_url or f"sqlite:///{Path(tempfile.mkdtemp(prefix='cx-bench-')) / 'admin.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    with engine.connect() as conn:
        existing = conn.execute(select(func.count()).select_from(customers)).scalar_one()
    out: dict[str, Any] = {"database": url.split(":", 1)[0]}
    if not (args.reuse and existing):
        t0 = time.perf_counter()
        shop.load(engine, shop.generate(args.customers, args.touchpoints), args.customers)
        out["load_s"] = time.perf_counter() - t0
    if not db.is_sqlite(engine):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    engine.dispose()

    rt = runtime(url, shop.NOW)
    from cx_connector.scoring import kpis, painpoints
    from cx_connector.scoring import run as scoring

    with db.read(rt.engine) as conn:
        scored = conn.execute(select(func.count()).select_from(scores)).scalar_one()
    if not scored:
        t0 = time.perf_counter()
        scoring.run(rt, full=True)
        out["full_pass_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kpis.snapshot(rt, force=True)
    out["kpi_snapshot_s"] = time.perf_counter() - t0
    with db.read(rt.engine) as conn:
        t0 = time.perf_counter()
        painpoints.compute(conn, since=shop.NOW - timedelta(days=90), until=shop.NOW, s=rt.config.scoring)
        out["pain_points_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        painpoints.losses(conn, rt.config.scoring)
        out["pain_points_losses_s"] = time.perf_counter() - t0
    operations_data(rt)
    out["baseline_s"] = baseline(rt.engine)

    config = config_from_mapping({"database_url": url, "admin_token": TOKEN,
                                  "logging": {"level": "WARNING"}}, env={})
    app = create_app(rt=Runtime(config=config, engine=rt.engine, connectors=rt.connectors,
                                clock=lambda: shop.NOW), configure_logging=False)
    client = app.test_client()
    page = client.get("/admin/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/admin/login", data={"csrf_token": csrf, "token": TOKEN}).status_code == 303
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with db.read(rt.engine) as conn:
        some = conn.execute(select(customers.c.id).order_by(customers.c.id).offset(4321).limit(1)
                            ).scalar_one()
        deep = conn.execute(select(scores.c.customer_id).order_by(scores.c.customer_id).limit(1)
                            .offset(scored // 2 if scored else 0)).scalar()
    requests = [
        ("/healthz", None),
        ("/admin/", None), ("/admin/pain-points", None), ("/admin/operations", None),
        ("/admin/customers", None), ("/admin/customers?health=red", None),
        ("/admin/customers?health=green", None), ("/admin/customers?health=yellow", None),
        ("/admin/customers?health=none", None), (f"/admin/customers?health=red&before={deep}", None),
        ("/admin/customers?q=c4321", None), (f"/admin/customers/{some}", None),
        (f"/api/v1/customers/{some}", bearer), ("/api/v1/customers?health=red&limit=100", bearer),
        (f"/api/v1/customers?health=red&limit=100&cursor={deep}", bearer), ("/api/v1/kpis?days=30", bearer),
    ]
    out["requests"] = [timed(client, path, headers) for path, headers in requests]
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "sqlite": sqlite3.sqlite_version, "load_average": os.getloadavg()}
    out["customers"] = scored or args.customers
    rt.engine.dispose()
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return
    print(markdown(out))


def markdown(r: dict) -> str:
    b = r["baseline_s"] * 1000
    lines = [f"{r['customers']:,} customers, {r['database']}; {r['machine']['cpus']} CPUs, Python "
             f"{r['machine']['python']}, SQLite {r['machine']['sqlite']}, load average "
             f"{r['machine']['load_average'][0]:.1f}", "",
             "| request | median | first | ratio to baseline | CPU of this process |",
             "|---|---|---|---|---|",
             f"| baseline: scan of every customer's health | {b:.0f} ms | | 1.00 | |"]
    for q in r["requests"]:
        assert q["status"] in (200, 302), q
        lines.append(f"| `GET {q['path']}` | {q['median_ms']:.0f} ms | {q['first_ms']:.0f} ms | "
                     f"{q['median_ms'] / b:.2f} | {q['cpu_ms']:.0f} ms |")
    lines += ["", f"KPI snapshot (the kpis job) {r['kpi_snapshot_s']:.1f} s, of which pain points "
                  f"{r['pain_points_s']:.1f} s (CX points lost {r['pain_points_losses_s']:.1f} s)."]
    if "full_pass_s" in r:
        lines.append(f"Full scoring pass {r['full_pass_s']:.0f} s.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
