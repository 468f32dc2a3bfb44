"""Metrics benchmark: what counting costs the webhook path, and what a scrape costs.

1. **Ingest A/B.** The same signed generic webhooks (bench/ingest.py's client) against
   gunicorn (2 sync workers, loopback) running the code *without* metrics (``--base``,
   default ``main``, exported with ``git archive``) and *with* them (this checkout, in
   multiprocess mode with the gunicorn hooks, as in production), in alternating rounds
   so that both see the same machine load. Reported: the CPU time the server processes
   (master and workers, from /proc) spent per request, which other load on the machine
   hardly moves, and events/s, which it does; medians of the rounds, and the ratios
   with/without.
2. **Per-request cost.** In one process in multiprocess mode: the time of the counting a
   webhook request does (delivery, touchpoints, request counter, latency histogram),
   against the time of handling one signed webhook in-process (Flask test client, SQLite).
3. **Scrape cost.** ``GET /metrics`` against a small and a large database (deliveries and
   done outbox writes x 100; the open backlog the same), against ``GET /healthz`` measured
   in the same run: the scrape must not grow with the big tables.

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
    for name, v in variants.items():
        cwd = tmp / name
        cwd.mkdir()
        (cwd / "cx.yaml").write_text(f"database_url: sqlite:///{cwd / 'bench.db'}\n"
                                     f"logging: {{level: ERROR}}\n"
                                     f"connectors:\n  generic:\n    secret: {SECRET}\n")
        if v["conf"]:
            (cwd / "gunicorn.conf.py").write_text(GUNICORN_CONF)  # gunicorn reads ./gunicorn.conf.py
        v["cwd"] = cwd
        v["env"] = {"CX_CONNECTOR_CONFIG": str(cwd / "cx.yaml"), "PYTHONPATH": str(v["code"])}
        subprocess.run([sys.executable, "-m", "cx_connector", "db", "upgrade"], check=True, cwd=cwd,
                       env={**os.environ, **v["env"]}, stdout=subprocess.DEVNULL)
        v["rates"], v["p50"], v["p99"], v["cpu_ms"] = [], [], [], []
    for rnd in range(args.rounds):
        order = ["without", "with"] if rnd % 2 == 0 else ["with", "without"]
        for name in order:
            v = variants[name]
            port = free_port()
            server = Gunicorn("cx_connector:create_app()", port, v["env"], v["cwd"], args.workers)
            try:
                asyncio.run(closed_loop(port, build_requests(200, port, f"warm-{name}-{rnd}"), 8))
                reqs = build_requests(args.events, port, f"{name}-{rnd}")
                cpu = server_cpu(server.proc.pid)
                r = asyncio.run(closed_loop(port, reqs, args.concurrency))
                cpu = server_cpu(server.proc.pid) - cpu
            finally:
                server.stop()
            assert r["status"] == {"200": args.events}, r["status"]
            v["rates"].append(r["rate"])
            v["p50"].append(r["p50_ms"])
            v["p99"].append(r["p99_ms"])
            v["cpu_ms"].append(round(cpu * 1000 / args.events, 3))
            print(f"round {rnd + 1} {name}: {r['rate']} events/s, {v['cpu_ms'][-1]} ms CPU per request",
                  file=sys.stderr)
    out = {name: {"rates": v["rates"], "median_rate": statistics.median(v["rates"]),
                  "cpu_ms": v["cpu_ms"], "median_cpu_ms": statistics.median(v["cpu_ms"]),
                  "median_p50_ms": statistics.median(v["p50"]),
                  "median_p99_ms": statistics.median(v["p99"])} for name, v in variants.items()}
    out["ratio"] = round(out["with"]["median_rate"] / out["without"]["median_rate"], 3)
    out["cpu_ratio"] = round(out["with"]["median_cpu_ms"] / out["without"]["median_cpu_ms"], 3)
    out["rounds"], out["events"], out["base"] = args.rounds, args.events, args.base
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


def scrape(args: argparse.Namespace) -> dict:
    from sqlalchemy import text

    from cx_connector import db, scheduler
    from cx_connector.app import create_app
    from cx_connector.config import config_from_mapping
    from cx_connector.models import Base, deliveries, outbox
    from cx_connector.runtime import build

    token = "bench-admin-token-0123456789"
    tmp = Path(tempfile.mkdtemp(prefix="cx-bench-scrape-"))
    url = args.database_url or f"sqlite:///{tmp / 'scrape.db'}"
    config = config_from_mapping({"database_url": url, "admin_token": token,
                                  "logging": {"level": "ERROR"},
                                  "connectors": {"generic": {"secret": SECRET},
                                                 "hubspot": {"client_secret": "x" * 16,
                                                             "access_token": "y" * 16,
                                                             "webhook_url": "https://x.test/w"}}},
                                 env={})
    rt = build(config)
    if rt.engine.dialect.name == "postgresql":
        with rt.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    db.upgrade(rt.engine)
    client = create_app(rt=rt, configure_logging=False).test_client()
    auth = {"Authorization": f"Bearer {token}"}
    now = datetime.now(UTC)
    for job in ("enrich", "checkouts", "score", "kpis", "sync"):  # a few hundred metric rows
        for _ in range(5):
            scheduler.run_job(rt, job, lambda _rt: {"dry_run": False, "platforms": {"hubspot": {
                "requests": 3, "landed": 250, "retried": 2, "failures": {"unavailable": 2}, "waits": 4,
                "waited_seconds": 1.5, "rate_limited": 1}}, "mode": "incremental",
                "customers_scored": 10, "duration_ms": 1200})

    def fill(n_deliveries: int, n_done: int, start: int) -> None:
        with db.write(rt.engine) as conn:
            for lo in range(start, start + n_deliveries, 5000):
                conn.execute(deliveries.insert(), [{
                    "source": "generic", "delivery_key": f"k{i}", "topic": "", "received_at": now,
                    "headers": {}, "body": b"{}", "status": "failed" if i % 100 == 0 else "processed",
                    "attempts": 1, "processed_at": now}
                    for i in range(lo, min(lo + 5000, start + n_deliveries))])
            for lo in range(start, start + n_done, 5000):
                conn.execute(outbox.insert(), [{
                    "source": "hubspot", "external_id": f"r{i}", "fields": {"cx_score": 1}, "previous": {},
                    "status": "done", "attempts": 1, "next_attempt_at": now, "created_at": now,
                    "updated_at": now, "done_at": now} for i in range(lo, min(lo + 5000, start + n_done))])
        if rt.engine.dialect.name == "postgresql":
            with rt.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
        else:
            with rt.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")

    def timed(path: str, headers: dict, n: int = 30) -> float:
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            assert client.get(path, headers=headers).status_code == 200
            samples.append(time.perf_counter() - t)
        return statistics.median(samples) * 1000

    with db.write(rt.engine) as conn:  # the open backlog, the same at both sizes
        conn.execute(outbox.insert(), [{
            "source": "hubspot", "external_id": f"open{i}", "fields": {"cx_score": 1}, "previous": {},
            "status": "dead" if i % 10 == 0 else "pending", "attempts": i % 3,
            "next_attempt_at": now + timedelta(seconds=i), "created_at": now, "updated_at": now}
            for i in range(args.backlog)])
    small, large = args.small, args.small * 100
    out: dict = {"database": rt.engine.dialect.name, "backlog": args.backlog}
    fill(small, small, 0)
    out["small"] = {"rows": small, "healthz_ms": round(timed("/healthz", {}), 2),
                    "metrics_ms": round(timed("/metrics", auth), 2)}
    fill(large - small, large - small, small)
    out["large"] = {"rows": large, "healthz_ms": round(timed("/healthz", {}), 2),
                    "metrics_ms": round(timed("/metrics", auth), 2)}
    out["growth"] = round(out["large"]["metrics_ms"] / out["small"]["metrics_ms"], 2)
    if rt.engine.dialect.name == "postgresql":
        with rt.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    rt.engine.dispose()
    del Base
    return out


# --- report ----------------------------------------------------------------------------------------


def markdown(r: dict) -> str:
    lines = ["## Metrics (`bench/metrics.py`)", "",
             f"Machine: {os.cpu_count()} cores shared with other work; "
             f"measured {time.strftime('%Y-%m-%d')}.", ""]
    if "ab" in r:
        a = r["ab"]
        lines += [
            f"`python bench/metrics.py --only ab`: {a['events']} signed generic webhooks per round, "
            f"16 in flight, gunicorn 2 sync workers, SQLite; {a['rounds']} alternating rounds of the code "
            f"without metrics (`{a['base']}`) and with them (multiprocess mode, gunicorn hooks).", "",
            "| code | server CPU ms per request, per round | median | events/s per round | median "
            "| median p50 / p99 ms |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("without", "with"):
            x = a[name]
            lines.append(f"| {name} metrics | {', '.join(str(v) for v in x['cpu_ms'])} | "
                         f"{x['median_cpu_ms']} | {', '.join(str(v) for v in x['rates'])} | "
                         f"{x['median_rate']} | {x['median_p50_ms']} / {x['median_p99_ms']} |")
        lines += ["", f"With / without: server CPU per request **{a['cpu_ratio']}**, events/s "
                  f"**{a['ratio']}**.", ""]
    if "micro" in r:
        m = r["micro"]
        lines += [f"`python bench/metrics.py --only micro`: the counting one webhook request does "
                  f"(multiprocess mode) takes **{m['count_us']} µs**; handling one signed webhook "
                  f"in-process (Flask test client, SQLite) takes {m['request_us']} µs: counting is "
                  f"**{m['share'] * 100:.2f}%** of a request.", ""]
    for key in ("scrape", "scrape_pg"):
        if key in r:
            s = r[key]
            lines += [f"Scrape cost ({s['database']}), open backlog {s['backlog']} writes, median of 30:", "",
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
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--small", type=int, default=2000, help="rows of the small database (x100: large)")
    p.add_argument("--backlog", type=int, default=5000, help="open outbox writes")
    p.add_argument("--database-url", default=None, help="scrape: PostgreSQL scratch database")
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = p.parse_args()
    parts = args.only or ["ab", "micro", "scrape"]
    r: dict = {}
    if "micro" in parts:
        r["micro"] = micro(args)
    if "scrape" in parts:
        r["scrape_pg" if args.database_url else "scrape"] = scrape(args)
    if "ab" in parts:
        r["ab"] = ab(args)
    print(json.dumps(r, indent=2))
    md = markdown(r)
    print(md)
    if args.write:
        write_section(md)


if __name__ == "__main__":
    main()
