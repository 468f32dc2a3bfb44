"""Metrics benchmark: what counting costs the webhook path, and what a scrape costs.

1. **Ingest A/B.** Two gunicorn servers (2 sync workers each, loopback), one running the
   code *without* metrics (``--base``, default ``main``, exported with ``git archive``),
   one *with* them (this checkout, multiprocess mode with the gunicorn hooks, as in
   production), both up at once; short batches of the same signed generic webhooks
   (bench/ingest.py's client) alternate between them, so that both see the same machine
   load. Reported: the CPU time the server processes (master and workers, from /proc)
   spent per request, and events/s; the ratios with/without, and the spread of the
   per-pair CPU ratio.
2. **Per-request cost.** In one process in multiprocess mode: the time of the counting a
   webhook request does (delivery, touchpoints, request counter, latency histogram),
   against the time of handling one signed webhook in-process (Flask test client, SQLite).
3. **Scrape cost.** ``GET /metrics`` against a small and a large database side by side
   (history, i.e. processed deliveries and done outbox writes, x 100; the open backlog
   and failed deliveries the same), with ``GET /healthz`` as the baseline, requests
   alternating: the scrape must not grow with history.

    python bench/metrics.py                       # all three, SQLite
    python bench/metrics.py --only scrape --database-url postgresql+psycopg://postgres@127.0.0.1/cx_bench
    python bench/metrics.py --write               # also update BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from ingest import SECRET, Gunicorn, build_requests, closed_loop, free_port  # noqa: E402

GUNICORN_CONF = textwrap.dedent('''
    # what production's gunicorn.conf.py does for metrics (see cx_connector.metrics)
    from cx_connector.metrics import child_exit, on_exit, on_starting  # noqa: F401
''')


# --- 1. ingest A/B -------------------------------------------------------------------------------


def server_cpu(master: int) -> float:
    """CPU seconds (user + system) used so far by gunicorn's master and its live workers."""
    pids = [master]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def ab(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cx-bench-metrics-"))
    base = tmp / "base"
    base.mkdir()
    subprocess.run(f"git -C {ROOT} archive {args.base} | tar -x -C {base}", shell=True, check=True)
    variants = {"without": {"code": base, "conf": False}, "with": {"code": ROOT, "conf": True}}
    servers = {}
    try:
        for name, v in variants.items():
            cwd = tmp / name
            cwd.mkdir()
            (cwd / "cx.yaml").write_text(f"database_url: sqlite:///{cwd / 'bench.db'}\n"
                                         f"logging: {{level: ERROR}}\n"
                                         f"connectors:\n  generic:\n    secret: {SECRET}\n")
            if v["conf"]:  # gunicorn reads ./gunicorn.conf.py
                (cwd / "gunicorn.conf.py").write_text(GUNICORN_CONF)
            env = {"CX_CONNECTOR_CONFIG": str(cwd / "cx.yaml"), "PYTHONPATH": str(v["code"])}
            subprocess.run([sys.executable, "-m", "cx_connector", "db", "upgrade"], check=True, cwd=cwd,
                           env={**os.environ, **env}, stdout=subprocess.DEVNULL)
            port = free_port()
            servers[name] = (Gunicorn("cx_connector:create_app()", port, env, cwd, args.workers), port)
            asyncio.run(closed_loop(port, build_requests(200, port, f"warm-{name}"), 8))
            v.update(cpu=0.0, seconds=0.0, pairs=[], rates=[])
        # both servers are up; short batches alternate between them, so that both see the
        # same machine load, and the order flips every pair
        for k in range(args.batches):
            order = ["without", "with"] if k % 2 == 0 else ["with", "without"]
            got = {}
            for name in order:
                server, port = servers[name]
                reqs = build_requests(args.events, port, f"{name}-{k}")
                cpu = server_cpu(server.proc.pid)
                r = asyncio.run(closed_loop(port, reqs, args.concurrency))
                cpu = server_cpu(server.proc.pid) - cpu
                assert r["status"] == {"200": args.events}, r["status"]
                variants[name]["cpu"] += cpu
                variants[name]["seconds"] += r["elapsed_s"]
                variants[name]["rates"].append(r["rate"])
                got[name] = cpu
            if got["without"] > 0:
                variants["with"]["pairs"].append(got["with"] / got["without"])
            print(f"batch {k + 1}: " + ", ".join(f"{n} {got[n] * 1000 / args.events:.3f} ms CPU/request"
                                                 for n in ("without", "with")), file=sys.stderr)
    finally:
        for server, _ in servers.values():
            server.stop()
    n = args.batches * args.events
    out: dict = {}
    for name, v in variants.items():
        out[name] = {"cpu_ms": round(v["cpu"] * 1000 / n, 3), "rate": round(n / v["seconds"], 1)}
    pairs = sorted(variants["with"]["pairs"])
    q = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else [pairs[0]] * 3
    out["cpu_ratio"] = round(out["with"]["cpu_ms"] / out["without"]["cpu_ms"], 3)
    out["rate_ratio"] = round(out["with"]["rate"] / out["without"]["rate"], 3)
    out["pair_ratio_median"], out["pair_ratio_iqr"] = round(q[1], 3), [round(q[0], 3), round(q[2], 3)]
    out["batches"], out["events"], out["base"] = args.batches, args.events, args.base
    return out


# --- 2. per-request cost -------------------------------------------------------------------------

MICRO = textwrap.dedent('''
    import json, os, sys, tempfile, time, base64, hashlib, hmac
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
    from types import SimpleNamespace
    from cx_connector.metrics import web
    sources = ["generic", "hubspot", "shopify", "zendesk"]
    req = SimpleNamespace(url_rule=SimpleNamespace(rule="/webhooks/<source>"), method="POST",
                          endpoint="webhooks.receive", view_args={"source": "generic"})
    def count():
        web.delivered(sources, "generic", "processed", 1, False)
        web.observe(sources, req, 200, 0.004)
    assert web.web(sources).multiprocess
    n = int(sys.argv[1])
    for _ in range(1000):
        count()
    t = time.perf_counter()
    for _ in range(n):
        count()
    per_count = (time.perf_counter() - t) / n

    from cx_connector import db
    from cx_connector.app import create_app
    from cx_connector.config import config_from_mapping
    secret = "bench-secret-0123456789abcdef"
    path = os.path.join(tempfile.mkdtemp(), "x.db")
    config = config_from_mapping({"database_url": f"sqlite:///{path}", "logging": {"level": "ERROR"},
                                  "connectors": {"generic": {"secret": secret}}}, env={})
    from cx_connector.runtime import build
    rt = build(config)
    db.upgrade(rt.engine)
    client = create_app(rt=rt, configure_logging=False).test_client()
    def post(i):
        body = json.dumps({"touchpoint_id": f"m:{i}", "occurred_at": "2026-05-01T10:00:00Z",
                           "customer": {"source_id": f"c{i % 500}"}, "kind": "order_placed"}).encode()
        sig = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
        assert client.post("/webhooks/generic", data=body, headers={"X-CX-Signature": sig}).status_code == 200
    for i in range(200):
        post(-i - 1)
    m = int(sys.argv[2])
    t = time.perf_counter()
    for i in range(m):
        post(i)
    per_request = (time.perf_counter() - t) / m
    print(json.dumps({"count_us": per_count * 1e6, "request_us": per_request * 1e6}))
''')


def micro(args: argparse.Namespace) -> dict:
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", MICRO, "50000", "2000"], check=True,
                             capture_output=True, text=True, cwd=ROOT)
        runs.append(json.loads(out.stdout))
    count_us = statistics.median(r["count_us"] for r in runs)
    request_us = statistics.median(r["request_us"] for r in runs)
    return {"count_us": round(count_us, 2), "request_us": round(request_us, 1),
            "share": round(count_us / request_us, 4)}


# --- 3. scrape cost ------------------------------------------------------------------------------


def scrape(args: argparse.Namespace, database_url: str | None) -> dict:
    """A small and a large database side by side (PostgreSQL: two schemas of the scratch
    database), scraped in alternation so that both see the same machine load."""
    from sqlalchemy import text

    from cx_connector import db, scheduler
    from cx_connector.app import create_app
    from cx_connector.config import config_from_mapping
    from cx_connector.models import deliveries, outbox
    from cx_connector.runtime import build

    token = "bench-admin-token-0123456789"
    tmp = Path(tempfile.mkdtemp(prefix="cx-bench-scrape-"))
    now = datetime.now(UTC)
    auth = {"Authorization": f"Bearer {token}"}
    sizes = {"small": args.small, "large": args.small * 100}
    sites: dict = {}
    for size, rows in sizes.items():
        url = database_url or f"sqlite:///{tmp / f'{size}.db'}"
        config = config_from_mapping({"database_url": url, "admin_token": token,
                                      "logging": {"level": "ERROR"},
                                      "connectors": {"generic": {"secret": SECRET},
                                                     "hubspot": {"client_secret": "x" * 16,
                                                                 "access_token": "y" * 16,
                                                                 "webhook_url": "https://x.test/w"}}},
                                     env={})
        engine = None
        if database_url:
            admin = db.make_engine(database_url)
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS bench_{size} CASCADE"))
                conn.execute(text(f"CREATE SCHEMA bench_{size}"))
            admin.dispose()
            engine = db.make_engine(database_url, connect_args={"options": f"-csearch_path=bench_{size}"})
        rt = build(config, engine=engine)
        db.upgrade(rt.engine)
        for job in ("enrich", "checkouts", "score", "kpis", "sync"):  # a few hundred metric rows
            for _ in range(5):
                scheduler.run_job(rt, job, lambda _rt: {"dry_run": False, "platforms": {"hubspot": {
                    "requests": 3, "landed": 250, "retried": 2, "failures": {"unavailable": 2},
                    "waits": 4, "waited_seconds": 1.5, "rate_limited": 1}}, "mode": "incremental",
                    "customers_scored": 10, "duration_ms": 1200})
        with db.write(rt.engine) as conn:
            # the open backlog and the failed deliveries are the same at both sizes: what grows
            # is history (processed deliveries, done writes), which a scrape must not read
            conn.execute(outbox.insert(), [{
                "source": "hubspot", "external_id": f"open{i}", "fields": {"cx_score": 1}, "previous": {},
                "status": "dead" if i % 10 == 0 else "pending", "attempts": i % 3,
                "next_attempt_at": now + timedelta(seconds=i), "created_at": now, "updated_at": now}
                for i in range(args.backlog)])
            for lo in range(0, rows, 5000):
                conn.execute(deliveries.insert(), [{
                    "source": "generic", "delivery_key": f"k{i}", "topic": "", "received_at": now,
                    "headers": {}, "body": b"{}", "status": "failed" if i < args.failed else "processed",
                    "attempts": 1, "processed_at": now} for i in range(lo, min(lo + 5000, rows))])
                conn.execute(outbox.insert(), [{
                    "source": "hubspot", "external_id": f"r{i}", "fields": {"cx_score": 1}, "previous": {},
                    "status": "done", "attempts": 1, "next_attempt_at": now, "created_at": now,
                    "updated_at": now, "done_at": now} for i in range(lo, min(lo + 5000, rows))])
        if database_url:
            with rt.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
        else:
            with rt.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
        client = create_app(rt=rt, configure_logging=False).test_client()
        sites[size] = {"rt": rt, "client": client, "healthz": [], "metrics": []}
    for _ in range(args.scrapes):
        for site in sites.values():
            for path, headers, key in (("/healthz", {}, "healthz"), ("/metrics", auth, "metrics")):
                t = time.perf_counter()
                assert site["client"].get(path, headers=headers).status_code == 200
                site[key].append(time.perf_counter() - t)
    out: dict = {"database": "PostgreSQL" if database_url else "SQLite", "backlog": args.backlog,
                 "failed": args.failed, "scrapes": args.scrapes}
    for size, site in sites.items():
        out[size] = {"rows": sizes[size],
                     "healthz_ms": round(statistics.median(site["healthz"]) * 1000, 2),
                     "metrics_ms": round(statistics.median(site["metrics"]) * 1000, 2)}
        site["rt"].engine.dispose()
    out["growth"] = round(out["large"]["metrics_ms"] / out["small"]["metrics_ms"], 2)
    if database_url:
        admin = db.make_engine(database_url)
        with admin.begin() as conn:
            for size in sizes:
                conn.execute(text(f"DROP SCHEMA IF EXISTS bench_{size} CASCADE"))
        admin.dispose()
    return out


# --- report ----------------------------------------------------------------------------------------


def markdown(r: dict) -> str:
    lines = ["## Metrics (`bench/metrics.py`)", "",
             f"Machine: {os.cpu_count()} cores shared with other work; "
             f"measured {time.strftime('%Y-%m-%d')}.", ""]
    if "ab" in r:
        a = r["ab"]
        lines += [
            f"`python bench/metrics.py --only ab`: two gunicorn servers (2 sync workers each, SQLite), "
            f"one running `{a['base']}` (no metrics), one this code (multiprocess mode, the gunicorn "
            f"hooks); {a['batches']} batches of {a['events']} signed generic webhooks, 16 in flight, "
            "alternating between the two (the order flips every pair), so that both see the same "
            "machine load. CPU is the servers' (master and workers, from /proc).", "",
            "| code | server CPU ms per request | events/s |", "|---|---|---|",
        ]
        for name in ("without", "with"):
            lines.append(f"| {name} metrics | {a[name]['cpu_ms']} | {a[name]['rate']} |")
        lines += ["", f"With / without: server CPU per request **{a['cpu_ratio']}** (per pair of batches: "
                  f"median {a['pair_ratio_median']}, quartiles {a['pair_ratio_iqr'][0]} to "
                  f"{a['pair_ratio_iqr'][1]}), events/s **{a['rate_ratio']}**.", ""]
    if "micro" in r:
        m = r["micro"]
        lines += [f"`python bench/metrics.py --only micro`: the counting one webhook request does "
                  f"(multiprocess mode) takes **{m['count_us']} µs**; handling one signed webhook "
                  f"in-process (Flask test client, SQLite) takes {m['request_us']} µs: counting is "
                  f"**{m['share'] * 100:.2f}%** of a request.", ""]
    for key in ("scrape", "scrape_pg"):
        if key in r:
            s = r[key]
            lines += [f"`python bench/metrics.py --only scrape` ({s['database']}): two databases "
                      f"side by side, each with {s['backlog']:,} open outbox writes and "
                      f"{s['failed']:,} failed deliveries, a few hundred metric rows, and history "
                      "(processed deliveries, done writes) of the size below; median of "
                      f"{s['scrapes']} requests each, alternating:",
                      "",
                      "| deliveries, done outbox writes | GET /healthz ms | GET /metrics ms |",
                      "|---|---|---|"]
            for size in ("small", "large"):
                x = s[size]
                lines.append(f"| {x['rows']:,} each | {x['healthz_ms']} | {x['metrics_ms']} |")
            lines += ["", f"/metrics at 100 x the rows / at 1 x: **{s['growth']}**.", ""]
    return "\n".join(lines)


def write_section(md: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    head = "## Metrics (`bench/metrics.py`)"
    pattern = re.compile(rf"{re.escape(head)}\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _m: md.rstrip("\n"), text) if head in text else text.rstrip("\n") + "\n\n" + md
    path.write_text(text if text.endswith("\n") else text + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["ab", "micro", "scrape"], action="append")
    p.add_argument("--base", default="main", help="git ref of the code without metrics")
    p.add_argument("--batches", type=int, default=20, help="A/B: batches per server")
    p.add_argument("--events", type=int, default=300, help="A/B: webhooks per batch")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--small", type=int, default=2000, help="rows of the small database (x100: large)")
    p.add_argument("--backlog", type=int, default=5000, help="open outbox writes")
    p.add_argument("--failed", type=int, default=500, help="failed deliveries")
    p.add_argument("--scrapes", type=int, default=40, help="requests per endpoint and database")
    p.add_argument("--database-url", default=None,
                   help="scrape: also on this PostgreSQL scratch database (its tables are dropped)")
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = p.parse_args()
    parts = args.only or ["ab", "micro", "scrape"]
    r: dict = {}
    if "micro" in parts:
        r["micro"] = micro(args)
    if "scrape" in parts:
        r["scrape"] = scrape(args, None)
        if args.database_url:
            r["scrape_pg"] = scrape(args, args.database_url)
    if "ab" in parts:
        r["ab"] = ab(args)
    print(json.dumps(r, indent=2))
    md = markdown(r)
    print(md)
    if args.write:
        write_section(md)


if __name__ == "__main__":
    main()
