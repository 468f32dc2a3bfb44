"""Operations page with a full outbox: before and after migration 0006, in one run.

    python bench/admin_pages.py [--pending 100000] [--database-url URL] [--repeat 7] [--before REV]
    python bench/admin_pages.py --only enqueue [--pending 100000] [--repeat 6]

``page`` (the default): builds the state right after the first full scoring pass,
100,000 pending writes, plus a realistic rest (300,000 done writes of earlier passes,
300 retrying, 20 in flight, 500 dead; 60,000 webhook deliveries over two weeks with
200 failed and 5 privacy requests queued; a month of job runs, the ``privacy`` job's
every minute) at schema revision 0005, then requests ``/admin/operations`` (logged
in, through Flask's test client) and ``/metrics`` (which counts the same open writes)
``--repeat`` times and times each of the page's outbox queries on its own. Then it
runs ``cx-connector db upgrade`` to 0006 (timed: the migration builds the index on
the full table) and measures the same again with this checkout. Each measurement runs
in its own process; the first imports the cx_connector of the revision before migration
0006 was added (``--before REV``: another), so its queries are the old ones too.
SQLite by default (a temporary file); a PostgreSQL ``--database-url`` must name an
empty database (it is ANALYZEd after the load and after the upgrade). Prints
the query plans and a Markdown table whose ratios compare after with before.

``enqueue``: the write path. Two copies of one database of ``--pending`` customers,
each with one writable platform record, one at 0005 and one at 0006; each round
empties both outboxes and times ``outbox.enqueue_many`` of every customer's first
write (what the first full pass queues) on each, alternating which goes first, then
the same rows inserted alone (enqueue_many's INSERT, without its reads).

Run it under ``flock /tmp/cx-bench.lock`` (either mode takes a minute or two).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# (with --before, the "before" phase imports cx_connector from an export of that revision)
sys.path.insert(0, os.environ.get("CX_BENCH_CODE") or str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from cx_connector import db, sync
from cx_connector.app import create_app
from cx_connector.config import config_from_mapping
from cx_connector.connector import Connector
from cx_connector.models import customers, deliveries, identities, job_runs, outbox
from cx_connector.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token-0123456789"
BEFORE = "0005_scoring_contexts"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SOURCES = ("hubspot", "zendesk", "shopify")
#: a first write as the full pass queues it (every score field set)
FIRST_WRITE = {"cx_score": 71, "cx_health": "green", "cx_retention_probability": 64,
               "cx_churn_risk": "low", "cx_expected_purchases_90d": 1.3, "cx_clv_90d": 182.4,
               "cx_cross_sell_score": 38, "cx_next_best_product": "Kitchen", "cx_journey_stage": "repeat",
               "cx_scored_at": "2026-12-06T03:00:00Z"}


class BenchCRM(Connector):
    """A platform that takes writes, one record per customer (as bench/score.py's)."""

    name = "benchcrm"
    writes_back = True


def _chunks(rows: list[dict], size: int = 20_000) -> Any:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def load(engine: Any, pending: int) -> dict[str, int]:
    """The state right after a first full pass over ``pending`` customers, and its history."""
    previous = dict.fromkeys(FIRST_WRITE)
    counts: dict[str, int] = {}
    with db.write(engine) as conn:
        conn.execute(customers.insert(), [
            {"id": i, "created_at": NOW - timedelta(days=400), "updated_at": NOW,
             "email": f"c{i}@example.com", "profile_times": {}} for i in range(1, pending + 1)])

        def write(i: int, status: str, attempts: int = 0, error: str | None = None,
                  age: timedelta = timedelta(0)) -> dict:
            at = NOW - age
            cid = i % pending + 1
            return {"customer_id": cid, "source": SOURCES[i % 3], "external_id": str(cid),
                    "fields": FIRST_WRITE, "previous": previous, "status": status, "attempts": attempts,
                    "next_attempt_at": at, "last_error": error, "created_at": at, "updated_at": at,
                    "done_at": at if status == "done" else None}

        groups = {
            # earlier passes' writes, sent long ago: the bulk of the table
            "done": [write(i, "done", 1, age=timedelta(days=1 + i % 30)) for i in range(3 * pending)],
            "dead": [write(i, "dead", 8, "HTTP 400: property does not exist", timedelta(hours=2))
                     for i in range(500)],
            "retrying": [write(i, "pending", 1 + i % 5, "HTTP 503: Service Unavailable",
                               timedelta(minutes=-5)) for i in range(300)],
            "in_flight": [write(i, "in_flight", 0) for i in range(20)],
            # the first full pass's: one per customer, never tried
            "pending": [write(i, "pending") for i in range(pending)],
        }
        for name, rows in groups.items():
            for chunk in _chunks(rows):
                conn.execute(outbox.insert(), chunk)
            counts[f"outbox {name}"] = len(rows)
        rows = []
        for i in range(60_000):
            status = "failed" if i % 300 == 0 else "queued" if i < 5 else "processed"
            rows.append({"source": SOURCES[i % 3], "delivery_key": f"bench-{i}", "topic": "orders/paid",
                         "received_at": NOW - timedelta(seconds=20 * i), "headers": {},
                         "body": b'{"id": %d, "line_items": []}' % i, "status": status, "attempts": 1,
                         "error": "body is not valid JSON" if status == "failed" else None,
                         "processed_at": None if status == "queued" else NOW})
        for chunk in _chunks(rows):
            conn.execute(deliveries.insert(), chunk)
        counts["deliveries"] = len(rows)
        every = {"privacy": 1, "enrich": 5, "checkouts": 15, "score": 15, "alerts": 5, "kpis": 60, "sync": 5}
        rows = [{"job": job, "started_at": NOW - timedelta(minutes=m),
                 "finished_at": NOW - timedelta(minutes=m), "status": "ok", "duration_ms": 40 + m % 17,
                 "details": {}, "host": "bench"}
                for job, minutes in every.items() for m in range(0, 30 * 24 * 60, minutes)]
        for chunk in _chunks(rows):
            conn.execute(job_runs.insert(), chunk)
        counts["job runs"] = len(rows)
    return counts


def analyze(engine: Any) -> None:
    if not db.is_sqlite(engine):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))


def outbox_queries(engine: Any) -> dict[str, Any]:
    """The page's outbox reads, each callable on its own."""
    return {
        "sync.counts (per platform and status)": lambda: sync.counts(engine),
        "retrying list (pending with attempts)":
            lambda: sync.list_writes(engine, status="retrying", limit=50),
        "dead list": lambda: sync.list_writes(engine, status="dead", limit=50),
    }


def plans(engine: Any) -> dict[str, list[str]]:
    """The database's plan of each outbox query the page makes, as the code sends it."""
    from sqlalchemy import event

    out = {}
    for name, call in outbox_queries(engine).items():
        seen: list[tuple[str, Any]] = []

        def remember(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool,
                     seen: list = seen) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                seen.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", remember)
        call()
        event.remove(engine, "before_cursor_execute", remember)
        with engine.connect() as conn:
            cur = conn.connection.dbapi_connection.cursor()
            lines = []
            for statement, parameters in seen:
                cur.execute(("EXPLAIN QUERY PLAN " if db.is_sqlite(engine) else "EXPLAIN ") + statement,
                            parameters)
                lines += [str(row[-1]).strip() for row in cur.fetchall()]
            cur.close()
        out[name] = lines
    return out


def timed(call: Any, repeat: int) -> dict[str, float]:
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"median_ms": statistics.median(wall) * 1000, "cpu_ms": statistics.median(cpu) * 1000}


def measure(engine: Any, url: str, repeat: int) -> dict[str, Any]:
    config = config_from_mapping({"database_url": url, "admin_token": TOKEN,
                                  "logging": {"level": "WARNING"}}, env={})
    app = create_app(rt=Runtime(config=config, engine=engine, connectors={}, clock=lambda: NOW),
                     configure_logging=False)
    client = app.test_client()
    page = client.get("/admin/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/admin/login", data={"csrf_token": csrf, "token": TOKEN}).status_code == 303

    def get(path: str, headers: dict | None = None) -> Any:
        def call() -> None:
            resp = client.get(path, headers=headers or {})
            assert resp.status_code == 200, (path, resp.status_code)
            resp.close()
        return call

    get("/admin/operations")()  # warm: templates compiled, connections open
    out = {"GET /admin/operations": timed(get("/admin/operations"), repeat),
           "GET /metrics": timed(get("/metrics", {"Authorization": f"Bearer {TOKEN}"}), repeat)}
    for name, call in outbox_queries(engine).items():
        out[name] = timed(call, repeat)
    out["plans"] = plans(engine)
    return out


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "load_average": round(os.getloadavg()[0], 1)}


def measured_by(url: str, repeat: int, code: Path | None) -> dict[str, Any]:
    """:func:`measure` in a fresh process, importing cx_connector from ``code`` (default:
    this checkout)."""
    env = dict(os.environ)
    env.pop("CX_BENCH_CODE", None)
    if code is not None:
        env["CX_BENCH_CODE"] = str(code)
    done = subprocess.run([sys.executable, __file__, "--only", "measure", "--database-url", url,
                           "--repeat", str(repeat)], env=env, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout)


def before_0006() -> str:
    """The revision before the one that added migration 0006 (its code, its queries)."""
    added = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h", "--diff-filter=A", "--",
                            "cx_connector/migrations/versions/0006_outbox_open_writes.py"],
                           check=True, capture_output=True, text=True).stdout.strip()
    if not added:
        raise SystemExit("migration 0006 is not committed yet: pass --before REV")
    return added + "^"


def run_page(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="cx-bench-"))
    url = args.database_url or f"sqlite:///{tmp / 'ops.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine, BEFORE)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"database": engine.dialect.name, "before_code": args.before or before_0006(),
                           "rows": load(engine, args.pending)}
    out["load_s"] = time.perf_counter() - t0
    analyze(engine)
    code = tmp / "before"  # that revision's package, as it was
    code.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", out["before_code"], "cx_connector"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    out["before"] = measured_by(url, args.repeat, code)
    t0 = time.perf_counter()
    db.upgrade(engine)
    out["upgrade_s"] = time.perf_counter() - t0
    analyze(engine)
    out["after"] = measured_by(url, args.repeat, None)
    out["machine"] = machine()
    engine.dispose()
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def run_enqueue(args: argparse.Namespace) -> dict[str, Any]:
    from cx_connector import outbox as queue
    from cx_connector.db import json_dumps

    tmp = Path(tempfile.mkdtemp(prefix="cx-bench-"))
    base = tmp / "base.db"
    engine = db.make_engine(f"sqlite:///{base}")
    db.upgrade(engine, BEFORE)
    n = args.pending
    with db.write(engine) as conn:
        conn.execute(customers.insert(), [{"id": i, "created_at": NOW, "updated_at": NOW, "profile_times": {}}
                                          for i in range(1, n + 1)])
        conn.execute(identities.insert(), [{"customer_id": i, "source": "benchcrm", "kind": "id",
                                            "value": str(i), "created_at": NOW} for i in range(1, n + 1)])
    engine.dispose()
    urls = {}
    for label in ("before", "after"):
        shutil.copy(base, tmp / f"{label}.db")
        urls[label] = f"sqlite:///{tmp / f'{label}.db'}"
    db.upgrade(db.make_engine(urls["after"]))
    connectors = {"benchcrm": BenchCRM(None)}
    items = [(i, FIRST_WRITE) for i in range(1, n + 1)]
    encoded = [json_dumps(FIRST_WRITE)] * n
    times: dict[str, list[float]] = {"before": [], "after": []}
    cpu: dict[str, list[float]] = {"before": [], "after": []}
    bare: dict[str, list[float]] = {"before": [], "after": []}
    at = NOW.replace(tzinfo=None).isoformat(" ", "microseconds")
    rows = [(i, "benchcrm", str(i), encoded[0], json_dumps(dict.fromkeys(FIRST_WRITE)), at, at, at)
            for i in range(1, n + 1)]
    engines = {label: db.make_engine(u) for label, u in urls.items()}
    for k in range(args.repeat):
        for label in (("before", "after") if k % 2 == 0 else ("after", "before")):
            with db.write(engines[label]) as conn:
                conn.execute(outbox.delete())
            t0, c0 = time.perf_counter(), time.process_time()
            with db.write(engines[label]) as conn:
                assert queue.enqueue_many(conn, connectors, items, now=NOW, canonical_input=True,
                                          encoded=encoded) == n
            times[label].append(time.perf_counter() - t0)
            cpu[label].append(time.process_time() - c0)
            # the INSERT alone, as enqueue_many sends it: what the index adds to
            with db.write(engines[label]) as conn:
                conn.execute(outbox.delete())
            c0 = time.process_time()
            with db.write(engines[label]) as conn:
                db.raw_many(conn, "INSERT INTO outbox (customer_id, source, external_id, fields, previous, "
                                  "status, attempts, next_attempt_at, created_at, updated_at) "
                                  "VALUES (?, ?, ?, ?j, ?j, 'pending', 0, ?, ?, ?)", rows)
            bare[label].append(time.process_time() - c0)
    for e in engines.values():
        e.dispose()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"writes": n, "before_s": times["before"], "after_s": times["after"],
            "before_cpu_s": cpu["before"], "after_cpu_s": cpu["after"],
            "before_insert_cpu_s": bare["before"], "after_insert_cpu_s": bare["after"], "machine": machine()}


def page_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"before: {r['before_code']} at revision {BEFORE}; after: this checkout at head", "",
             f"{r['database']}; {m['cpus']} CPUs, Python {m['python']}, SQLite {m['sqlite']}, load average "
             f"{m['load_average']}; rows: " + ", ".join(f"{k} {v:,}" for k, v in r["rows"].items()), "",
             "| request or query | before: median | CPU | after: median | CPU | after / before: wall | CPU |",
             "|---|---|---|---|---|---|---|"]
    for name, b in r["before"].items():
        if name == "plans":
            continue
        a = r["after"][name]
        lines.append(f"| {name} | {b['median_ms']:.1f} ms | {b['cpu_ms']:.1f} ms | {a['median_ms']:.1f} ms "
                     f"| {a['cpu_ms']:.1f} ms | {a['median_ms'] / b['median_ms']:.2f} "
                     f"| {a['cpu_ms'] / b['cpu_ms']:.2f} |")
    lines += ["", f"Migration 0006 (index built on the full outbox): {r['upgrade_s']:.2f} s.", ""]
    for phase in ("before", "after"):
        lines.append(f"Plans {phase}:")
        for name, plan in r[phase]["plans"].items():
            lines.append(f"  {name}: " + " / ".join(plan))
    return "\n".join(lines)


def enqueue_markdown(r: dict[str, Any]) -> str:
    def runs(key: str) -> str:
        return ", ".join(f"{x:.2f}" for x in r[key])

    lines = [f"enqueue_many of {r['writes']:,} first writes, SQLite, load average "
             f"{r['machine']['load_average']}", "",
             "| | before (0005) | after (0006) | after / before |", "|---|---|---|---|"]
    for label, key in (("enqueue_many, wall, median", "s"), ("enqueue_many, CPU, median", "cpu_s"),
                       ("the INSERT alone, CPU, median", "insert_cpu_s")):
        b, a = statistics.median(r[f"before_{key}"]), statistics.median(r[f"after_{key}"])
        lines.append(f"| {label} | {b:.2f} s | {a:.2f} s | {a / b:.2f} |")
    lines.append(f"| enqueue_many, wall, each run | {runs('before_s')} | {runs('after_s')} | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("page", "enqueue", "measure"), default="page")
    ap.add_argument("--before", default=None, metavar="REV",
                    help="page: measure 'before' with the cx_connector of this git revision "
                         "(default: the parent of the commit that added migration 0006)")
    ap.add_argument("--pending", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--database-url", default=None, help="page only; default: a temporary SQLite file")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.only == "measure":  # one phase of page, in its own process (see measured_by)
        engine = db.make_engine(args.database_url)
        print(json.dumps(measure(engine, args.database_url, args.repeat), default=str))
        return
    if args.only == "page":
        args.repeat = args.repeat or 7
        result = run_page(args)
        print(json.dumps(result, indent=2, default=str) if args.json else page_markdown(result))
    else:
        args.repeat = args.repeat or 6
        result = run_enqueue(args)
        print(json.dumps(result, indent=2, default=str) if args.json else enqueue_markdown(result))


if __name__ == "__main__":
    main()
