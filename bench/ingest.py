"""Ingest benchmark: signed generic webhooks into cx-connector vs a bare Flask endpoint.

Both run under the same gunicorn set-up on loopback, started side by side: the shipped
settings (``cx_connector/gunicorn_conf.py``: gthread workers with 4 threads each, preload),
2 workers; the bare app only reads the body and answers 200. cx-connector logs at its
default level (INFO: one line per request). One asyncio client (raw sockets,
no HTTP library, so the client is not the bottleneck) sends N distinct signed events
with C in flight to each in turn, for several rounds (alternating which goes first, so
that a change in the machine's load hits both alike), then a paced run at a fixed rate
measures latency. Reported: events/s per round, the median of the per-round ratios of
cx-connector's rate to the bare endpoint's, p50/p99 latency, the load average, and a
check that every event acknowledged with 200 is in the database.

    python bench/ingest.py                      # SQLite (the embedded default)
    python bench/ingest.py --database-url postgresql+psycopg://postgres@127.0.0.1/cx_bench
    python bench/ingest.py --write              # also update BENCHMARKS.md

Targets (issue: foundation): >= 0.5 of the bare endpoint's rate on SQLite; p99 < 50 ms at
200 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef"

BARE_APP = textwrap.dedent('''
    from flask import Flask, request

    def create_app():
        app = Flask("bare")

        @app.post("/webhooks/generic")
        def receive():
            request.get_data()
            return {"status": "ok"}, 200

        @app.get("/healthz")
        def health():
            return {"status": "ok"}

        return app
''')


#: --diagnose: the same app with a webhook's database work skipped (it answers as if the
#: delivery was stored), to tell the database's share of the cost from the rest's
NODB_APP = textwrap.dedent('''
    from cx_connector import create_app as _create_app, db, inbox

    def create_app():
        db.write_grouped = lambda engine, work: inbox.Receipt("processed", 0, 1)
        return _create_app()
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_requests(n: int, port: int, run: str) -> list[bytes]:
    out = []
    for i in range(n):
        body = json.dumps({
            "touchpoint_id": f"bench:{run}:{i}", "occurred_at": "2026-05-01T10:00:00Z",
            "customer": {"source_id": f"c{i % 5000}", "email": f"c{i % 5000}@example.com"},
            "kind": "order_placed" if i % 3 else "ticket_opened", "value": "19.90", "currency": "EUR",
            "products": [{"id": f"p{i % 40}", "category": f"cat{i % 7}", "quantity": 1, "price": "19.90"}],
        }).encode()
        sig = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
        head = (f"POST /webhooks/generic HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"X-CX-Signature: {sig}\r\nConnection: close\r\n\r\n").encode()
        out.append(head + body)
    return out


async def one(port: int, raw: bytes) -> tuple[int, float]:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data[9:12]) if data.startswith(b"HTTP/1.") else 0
    return status, time.perf_counter() - t0


async def closed_loop(port: int, reqs: list[bytes], concurrency: int) -> dict:
    queue = list(reversed(reqs))
    lat: list[float] = []
    codes: dict[int, int] = {}

    async def worker() -> None:
        while queue:
            raw = queue.pop()
            status, dt = await one(port, raw)
            lat.append(dt)
            codes[status] = codes.get(status, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return summarise(lat, codes, elapsed)


async def paced(port: int, reqs: list[bytes], rate: float) -> dict:
    lat: list[float] = []
    codes: dict[int, int] = {}
    t0 = time.perf_counter()

    async def fire(raw: bytes) -> None:
        status, dt = await one(port, raw)
        lat.append(dt)
        codes[status] = codes.get(status, 0) + 1

    tasks = []
    for i, raw in enumerate(reqs):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(raw)))
    await asyncio.gather(*tasks)
    return summarise(lat, codes, time.perf_counter() - t0)


def summarise(lat: list[float], codes: dict[int, int], elapsed: float) -> dict:
    lat_ms = sorted(x * 1000 for x in lat)
    q = statistics.quantiles(lat_ms, n=100) if len(lat_ms) > 1 else [0.0] * 99
    return {"requests": len(lat), "elapsed_s": round(elapsed, 2),
            "rate": round(len(lat) / elapsed, 1), "p50_ms": round(q[49], 2),
            "p99_ms": round(q[98], 2), "status": {str(k): v for k, v in sorted(codes.items())}}


class Gunicorn:
    """One gunicorn server with the shipped settings (``cx_connector/gunicorn_conf.py``:
    gthread workers, ``THREADS`` threads each, preload, the metrics hooks), ``workers``
    worker processes, on loopback."""

    def __init__(self, app: str, port: int, env: dict, cwd: Path, workers: int, threads: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:cx_connector.gunicorn_conf",
             "-w", str(workers), "--threads", str(threads), "-b", f"127.0.0.1:{port}",
             "--log-level", "warning", app],
            env={**os.environ, **env}, cwd=cwd, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    time.sleep(0.5)
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn {app} did not start")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the master and its workers so far, from /proc."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(entry), int(fields[1])
            if pid == self.proc.pid or ppid == self.proc.pid:
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(15)


def stored_touchpoints(db_url: str) -> int:
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import func, select

    from cx_connector import db
    from cx_connector.models import touchpoints

    engine = db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(touchpoints)).scalar_one()
    finally:
        engine.dispose()


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cx-bench-"))
    db_url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    (tmp / "cx.yaml").write_text(f"database_url: {db_url}\nlogging: {{level: {args.log_level}}}\n"
                                 f"connectors:\n  generic:\n    secret: {SECRET}\n")
    (tmp / "bare_app.py").write_text(BARE_APP)
    env = {"CX_CONNECTOR_CONFIG": str(tmp / "cx.yaml"), "PYTHONPATH": f"{tmp}:{ROOT}"}
    subprocess.run([sys.executable, "-m", "cx_connector", "--config", str(tmp / "cx.yaml"),
                    "db", "upgrade"], check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    results: dict = {"database": "PostgreSQL" if "postgres" in db_url else "SQLite",
                     "events": args.events, "rounds": args.rounds, "concurrency": args.concurrency,
                     "workers": args.workers, "threads": args.threads, "log_level": args.log_level,
                     "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    apps = {"bare": "bare_app:create_app()", "cx": "cx_connector:create_app()"}
    if args.diagnose:
        (tmp / "nodb_app.py").write_text(NODB_APP)
        apps["nodb"] = "nodb_app:create_app()"
    envs = {name: env for name in apps}
    if args.baseline_tree:  # the same app from another source tree, e.g. `git archive main`
        apps["baseline"] = "cx_connector:create_app()"
        envs["baseline"] = {**env, "PYTHONPATH": f"{tmp}:{Path(args.baseline_tree).resolve()}"}
    storing = {"cx", "baseline"}  # the servers whose acknowledged events must be in the database
    ports = {name: free_port() for name in apps}
    servers = {}
    acked = 0
    try:
        for name, app in apps.items():
            servers[name] = Gunicorn(app, ports[name], envs[name], tmp, args.workers, args.threads)
        for name, port in ports.items():  # warm-up
            warm = asyncio.run(closed_loop(port, build_requests(200, port, f"warm-{name}"), 8))
            acked += warm["status"].get("200", 0) if name in storing else 0
        rounds: dict[str, list[dict]] = {name: [] for name in apps}
        for r in range(args.rounds):
            for name in (list(apps) if r % 2 == 0 else list(apps)[::-1]):
                port = ports[name]
                reqs = build_requests(args.events, port, f"load{r}-{name}")
                cpu0, client0 = servers[name].cpu_seconds(), time.process_time()
                res = asyncio.run(closed_loop(port, reqs, args.concurrency))
                res["server_cpu_ms"] = round((servers[name].cpu_seconds() - cpu0) * 1000 / len(reqs), 3)
                res["client_cpu_ms"] = round((time.process_time() - client0) * 1000 / len(reqs), 3)
                rounds[name].append(res)
                acked += res["status"].get("200", 0) if name in storing else 0
        for name in ("bare", "cx"):
            port = ports[name]
            res = asyncio.run(paced(
                port, build_requests(int(args.rate * args.paced_seconds), port, f"paced-{name}"), args.rate))
            results[name + "_paced"] = res
            acked += res["status"].get("200", 0) if name in storing else 0
    finally:
        for server in servers.values():
            server.stop()
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    ratios = [c["rate"] / b["rate"] for b, c in zip(rounds["bare"], rounds["cx"], strict=True)]
    results["rounds_detail"] = {"bare": [x["rate"] for x in rounds["bare"]],
                                "cx": [x["rate"] for x in rounds["cx"]],
                                **{f"{v}_ratio": [round(n["rate"] / b["rate"], 2) for b, n
                                                  in zip(rounds["bare"], rounds[v], strict=True)]
                                   for v in ("nodb", "baseline") if v in rounds},
                                **{v: [x["rate"] for x in rounds[v]] for v in ("nodb", "baseline")
                                   if v in rounds},
                                "ratio": [round(x, 2) for x in ratios],
                                "server_cpu_ms": {n: [x["server_cpu_ms"] for x in rounds[n]] for n in rounds},
                                "client_cpu_ms": {n: [x["client_cpu_ms"] for x in rounds[n]] for n in rounds}}
    for name in rounds:  # the round with the median rate, for its latencies
        by_rate = sorted(rounds[name], key=lambda x: x["rate"])
        results[name] = by_rate[len(by_rate) // 2]
    results["ratio"] = round(statistics.median(ratios), 2)
    results["paced_rate"] = args.rate
    results["acknowledged"] = acked
    results["stored"] = stored_touchpoints(db_url)
    return results


def markdown(r: dict, command: str) -> str:
    cpu = platform.processor() or platform.machine()
    d = r["rounds_detail"]
    lines = [
        f"## Ingest ({r['database']})",
        "",
        f"`{command}`: {r['rounds']} rounds of {r['events']} signed generic webhooks to each endpoint "
        f"(alternating which goes first), {r['concurrency']} in flight, gunicorn with the shipped "
        f"settings, {r['workers']} gthread workers x {r['threads']} threads, on loopback; logging "
        f"at {r['log_level']}; {os.cpu_count()} cores ({cpu}) shared with other "
        f"work: load average {r['load_average_before'][0]} before, {r['load_average_after'][0]} after; "
        f"measured {time.strftime('%Y-%m-%d')}.",
        "",
        f"Per round, events/s: bare {d['bare']}, cx-connector {d['cx']}; ratio {d['ratio']}. "
        f"Server CPU per request (master and workers, from /proc), ms: bare {d['server_cpu_ms']['bare']}, "
        f"cx-connector {d['server_cpu_ms']['cx']}; the client's own, ms: bare "
        f"{d['client_cpu_ms']['bare']}, cx-connector {d['client_cpu_ms']['cx']}.",
        "",
        *([f"Diagnostic (`--diagnose`): cx-connector with a webhook's database work skipped "
           f"(answers as if stored), events/s {d['nodb']}, ratio to bare {d['nodb_ratio']}; server "
           f"CPU per request, ms: {d['server_cpu_ms']['nodb']}.", ""] if "nodb" in d else []),
        *([f"Baseline (`--baseline-tree`): the same app from another source tree, events/s "
           f"{d['baseline']}, ratio to bare {d['baseline_ratio']}; server CPU per request, ms: "
           f"{d['server_cpu_ms']['baseline']}.", ""] if "baseline" in d else []),
        "| endpoint | events/s | p50 ms | p99 ms | p50 / p99 ms at "
        f"{r['paced_rate']:.0f} req/s | statuses |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("bare", "bare Flask (reads body, 200)"), ("cx", "cx-connector /webhooks/generic")):
        x, p = r[name], r[name + "_paced"]
        lines.append(f"| {label} | {x['rate']} | {x['p50_ms']} | {x['p99_ms']} | "
                     f"{p['p50_ms']} / {p['p99_ms']} | {x['status']} |")
    lines += ["", f"Ratio cx-connector / bare (median of the rounds): **{r['ratio']}** (target >= 0.5 on "
              f"SQLite); p99 at {r['paced_rate']:.0f} req/s: **{r['cx_paced']['p99_ms']} ms** "
              "(target < 50 ms). "
              f"Acknowledged with 200: {r['acknowledged']}; touchpoints in the database: {r['stored']}.", ""]
    return "\n".join(lines)


def write_section(md: str, database: str) -> None:
    """Put the figures into BENCHMARKS.md: between this database's markers when the
    section has them (the hand-written analysis around them stays), else a new section."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- bench/ingest.py {database}: begin -->", f"<!-- bench/ingest.py {database}: end -->"
    body = md.split("\n", 2)[2].strip("\n")  # without the "## Ingest (...)" heading
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Ingest ({database})\n\n{begin}\n{body}\n{end}\n"
    path.write_text(text if text.endswith("\n") else text + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=2000, help="events per endpoint per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4,
                   help="gthread threads per worker (the shipped setting is 4)")
    p.add_argument("--log-level", default="INFO",
                   help="cx-connector's logging.level (INFO, the default, logs every request)")
    p.add_argument("--rate", type=float, default=200.0, help="paced-run request rate")
    p.add_argument("--paced-seconds", type=float, default=15.0)
    p.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    p.add_argument("--baseline-tree", default=None, metavar="DIR",
                   help="also measure the app from this source tree (e.g. an export of main), "
                        "in the same rotation")
    p.add_argument("--diagnose", action="store_true",
                   help="also measure cx-connector with a webhook's database work skipped")
    args = p.parse_args()
    r = run(args)
    command = "python bench/ingest.py" + ("" if not args.database_url else
                                          " --database-url postgresql+psycopg://…")
    md = markdown(r, command)
    print(json.dumps(r, indent=2))
    print(md)
    if args.write:
        write_section(md, r["database"])


if __name__ == "__main__":
    main()
