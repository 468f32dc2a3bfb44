"""Write-back benchmark: 10,000 changed customers against a local mock of the three platforms.

    python bench/writeback.py [--customers 10000] [--failures 0.05] [--database-url URL]

A mock platform (an HTTP server in a child process, on 127.0.0.1 only) enforces
the documented limits: HubSpot batch/update <= 100 inputs, Zendesk update_many
<= 100 users plus job statuses, Shopify metafieldsSet <= 25 metafields; request
budgets as rolling windows (429) and Shopify's cost-point leaky bucket (THROTTLED
with throttleStatus). So that a 10,000-customer run is bound by the limit within
seconds, the windows are scaled down: HubSpot 10 requests / 1 s, Zendesk 20
requests / 1 s, Shopify Plus's real 1,000 points/s with a 1,000-point bucket.

Phase 1 (clean): requests made vs the minimum the batch limits allow (must be
equal) and elapsed time vs the least time the rate limit allows (target: within
10 %). Phase 2: the same with a share of write requests failing (500), repeated
sync runs as the scheduler would make them; every value must land (zero lost).

Two references for the elapsed time, per platform and phase: the least time the
limit allows in theory (every request the instant the budget permits, zero latency),
and a *bare client* measured in the same run, just before the sync: the same
connector, limiter, packing and concurrency sending the same requests to a fresh
mock, without the database (no claim, no marking, no audit). The theory is the
target; the bare client shows what this machine's load and the mock's latency leave
of it, so the gap between the bare client and the sync is our own bookkeeping.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from concurrent.futures import ThreadPoolExecutor

from connectors.hubspot import HubSpotConnector
from connectors.zendesk import ZendeskConnector
from connectors.zendesk import writer as zendesk_writer
from cx_connector import db, sync
from cx_connector.config import config_from_mapping
from cx_connector.connector import RateBudget
from cx_connector.errors import PlatformAPIError
from cx_connector.models import customers, identities, outbox
from cx_connector.runtime import build
from cx_connector.throttle import Clock, Limiter

HUBSPOT_WINDOW = (10, 1.0)   # requests, seconds
ZENDESK_WINDOW = (20, 1.0)
SHOPIFY_BUCKET = (1000.0, 1000.0)  # points, points per second
MUTATION_COST = 10.0
FIELDS = ("cx_score", "cx_health", "cx_churn_risk")


# --- the mock platform --------------------------------------------------------------------


class Window:
    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds, self.sent = limit, seconds, deque()

    def take(self) -> float:
        """0 when allowed (and counted), else seconds until allowed."""
        now = time.monotonic()
        while self.sent and self.sent[0] <= now - self.seconds:
            self.sent.popleft()
        if len(self.sent) >= self.limit:
            return self.sent[0] + self.seconds - now
        self.sent.append(now)
        return 0.0


class Bucket:
    def __init__(self, size: float, rate: float) -> None:
        self.size, self.rate, self.level, self.at = size, rate, size, time.monotonic()

    def take(self, cost: float) -> bool:
        now = time.monotonic()
        self.level = min(self.size, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level < cost:
            return False
        self.level -= cost
        return True


class Mock:
    def __init__(self, failures: float, seed: int) -> None:
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.failures = failures
        self.hubspot = Window(*HUBSPOT_WINDOW)
        self.zendesk = Window(*ZENDESK_WINDOW)
        self.shopify = Bucket(*SHOPIFY_BUCKET)
        self.landed: dict[str, dict[str, dict[str, Any]]] = {"hubspot": {}, "zendesk": {}, "shopify": {}}
        self.jobs: dict[str, list[dict[str, Any]]] = {}
        self.counts = {"hubspot": 0, "zendesk": 0, "shopify": 0, "rejected_429": 0, "injected_500": 0,
                       "oversized": 0}

    def fail(self) -> bool:
        if self.failures and self.rng.random() < self.failures:
            self.counts["injected_500"] += 1
            return True
        return False


def handler(mock: Mock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()  # headers and body are two writes: no Nagle delay between them
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self) -> None:
            if self.path == "/_state":
                with mock.lock:
                    return self.reply(200, {"landed": mock.landed, "counts": mock.counts})
            if self.path.startswith("/api/v2/job_statuses/"):
                with mock.lock:
                    mock.counts["zendesk"] += 1
                    wait = mock.zendesk.take()
                    if wait:
                        mock.counts["rejected_429"] += 1
                        return self.reply(429, {"error": "TooManyRequests"}, {"Retry-After": f"{wait:.3f}"})
                    jid = self.path.rsplit("/", 1)[1].removesuffix(".json")
                    return self.reply(200, {"job_status": {"id": jid, "status": "completed",
                                                           "results": mock.jobs.pop(jid, [])}})
            self.reply(404, {})

        def do_POST(self) -> None:
            data = self.body()
            if self.path == "/crm/v3/objects/contacts/batch/update":
                with mock.lock:
                    mock.counts["hubspot"] += 1
                    if mock.hubspot.take():
                        mock.counts["rejected_429"] += 1  # HubSpot does not always send Retry-After
                        return self.reply(429, {"status": "error", "policyName": "TEN_SECONDLY_ROLLING"})
                    if len(data["inputs"]) > 100:
                        mock.counts["oversized"] += 1
                        return self.reply(400, {"status": "error", "message": "too many inputs"})
                    if mock.fail():
                        return self.reply(500, {"status": "error"})
                    for i in data["inputs"]:
                        mock.landed["hubspot"].setdefault(i["id"], {}).update(i["properties"])
                    return self.reply(200, {"status": "COMPLETE",
                                            "results": [{"id": i["id"]} for i in data["inputs"]]})
            if self.path.endswith("/graphql.json"):
                with mock.lock:
                    mock.counts["shopify"] += 1
                    status = {"maximumAvailable": mock.shopify.size, "restoreRate": mock.shopify.rate}
                    if not mock.shopify.take(MUTATION_COST):
                        mock.counts["rejected_429"] += 1
                        status["currentlyAvailable"] = mock.shopify.level
                        return self.reply(200, {"errors": [{"message": "Throttled",
                                                            "extensions": {"code": "THROTTLED"}}],
                                                "extensions": {"cost": {"requestedQueryCost": MUTATION_COST,
                                                                        "throttleStatus": status}}})
                    status["currentlyAvailable"] = mock.shopify.level
                    metafields = data["variables"].get("metafields", [])
                    if len(metafields) > 25:
                        mock.counts["oversized"] += 1
                        return self.reply(200, {"errors": [{"message": "too many metafields"}]})
                    if mock.fail():
                        return self.reply(500, {"errors": "Internal error"})
                    for m in metafields:
                        cid = m["ownerId"].rsplit("/", 1)[1]
                        mock.landed["shopify"].setdefault(cid, {})[m["key"]] = m["value"]
                    return self.reply(200, {"data": {"metafieldsSet": {"metafields": metafields,
                                                                       "userErrors": []}},
                                            "extensions": {"cost": {"actualQueryCost": MUTATION_COST,
                                                                    "throttleStatus": status}}})
            self.reply(404, {})

        def do_PUT(self) -> None:
            data = self.body()
            if self.path == "/api/v2/users/update_many.json":
                with mock.lock:
                    mock.counts["zendesk"] += 1
                    wait = mock.zendesk.take()
                    if wait:
                        mock.counts["rejected_429"] += 1
                        return self.reply(429, {"error": "TooManyRequests"}, {"Retry-After": f"{wait:.3f}"})
                    if len(data["users"]) > 100:
                        mock.counts["oversized"] += 1
                        return self.reply(400, {"error": "too many users"})
                    if mock.fail():
                        return self.reply(500, {"error": "InternalError"})
                    jid = f"J{len(mock.jobs)}-{mock.rng.random():.12f}"
                    mock.jobs[jid] = [{"id": u["id"], "status": "Updated"} for u in data["users"]]
                    for u in data["users"]:
                        mock.landed["zendesk"].setdefault(str(u["id"]), {}).update(u["user_fields"])
                    return self.reply(200, {"job_status": {"id": jid, "status": "queued"}})
            self.reply(404, {})

    return Handler


def serve(port_out: Any, failures: float, seed: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(Mock(failures, seed)))
    server.daemon_threads = True
    port_out.put(server.server_address[1])
    server.serve_forever()


# --- the client side ------------------------------------------------------------------------


class BenchHubSpot(HubSpotConnector):
    def rate_budget(self) -> RateBudget:
        return RateBudget("window", HUBSPOT_WINDOW[0], HUBSPOT_WINDOW[1], describe="10 requests / 1 s")


class BenchZendesk(ZendeskConnector):
    def rate_budget(self) -> RateBudget:
        return RateBudget("window", ZENDESK_WINDOW[0], ZENDESK_WINDOW[1], describe="20 requests / 1 s")


def runtime(database_url: str, base: str, *, migrate: bool = True) -> Any:
    config = config_from_mapping({
        "database_url": database_url,
        "logging": {"level": "ERROR"},
        "writeback": {"backoff_base": 1, "max_wait": 60, "max_run_time": 600, "max_attempts": 10},
        "connectors": {
            "hubspot": {"client_secret": "x", "access_token": "bench", "webhook_url": "http://localhost/",
                        "api_base_url": base},
            "zendesk": {"subdomain": "bench", "email": "bench@example.com", "api_token": "bench",
                        "webhook_secret": "x", "api_base_url": base},
            "shopify": {"shop": "bench.myshopify.com", "access_token": "bench", "client_secret": "x",
                        "api_base_url": base, "graphql_points_per_second": int(SHOPIFY_BUCKET[1]),
                        "graphql_bucket_size": int(SHOPIFY_BUCKET[0])},
        }}, env={}, origin="<bench>")
    rt = build(config)
    rt.connectors["hubspot"] = BenchHubSpot(config.connectors["hubspot"])
    rt.connectors["zendesk"] = BenchZendesk(config.connectors["zendesk"])
    if migrate:
        db.upgrade(rt.engine)
    return rt


def expected_value(i: int) -> dict[str, Any]:
    return {"cx_score": i % 101, "cx_health": ("green", "yellow", "red")[i % 3],
            "cx_churn_risk": ("low", "medium", "high")[(i // 3) % 3]}


def seed_outbox(rt: Any, n: int) -> None:
    now = datetime.now(UTC)
    with db.write(rt.engine) as conn:
        conn.execute(customers.insert(), [{"id": i + 1, "created_at": now, "updated_at": now,
                                           "profile_times": {}} for i in range(n)])
        idents, writes = [], []
        for i in range(n):
            for source, ext in (("hubspot", str(500000000000 + i)), ("zendesk", str(8400000000000 + i)),
                                ("shopify", str(7300000000000000 + i))):
                idents.append({"customer_id": i + 1, "kind": "id", "source": source, "value": ext,
                               "created_at": now})
                writes.append({"customer_id": i + 1, "source": source, "external_id": ext,
                               "fields": expected_value(i), "previous": {f: None for f in FIELDS},
                               "status": "pending", "attempts": 0, "next_attempt_at": now,
                               "created_at": now, "updated_at": now})
        conn.execute(identities.insert(), idents)
        conn.execute(outbox.insert(), writes)


def lost_updates(state: dict[str, Any], n: int) -> dict[str, int]:
    lost = {"hubspot": 0, "zendesk": 0, "shopify": 0}
    for i in range(n):
        want = expected_value(i)
        hub = state["hubspot"].get(str(500000000000 + i), {})
        if hub != {k: str(v) for k, v in want.items()}:
            lost["hubspot"] += 1
        zen = state["zendesk"].get(str(8400000000000 + i), {})
        if zen.get("cx_score") != want["cx_score"] or \
                zen.get("cx_health") != f"cx_health_{want['cx_health']}":
            lost["zendesk"] += 1
        shop = state["shopify"].get(str(7300000000000000 + i), {})
        if shop != {"score": str(want["cx_score"]), "health": want["cx_health"],
                    "churn_risk": want["cx_churn_risk"]}:
            lost["shopify"] += 1
    return lost


def start_mock(failures: float, seed: int) -> tuple[Any, str]:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    server = ctx.Process(target=serve, args=(q, failures, seed), daemon=True)
    server.start()
    return server, f"http://127.0.0.1:{q.get(timeout=30)}"


def stop_mock(server: Any) -> None:
    server.terminate()
    server.join(10)


def bare_client(name: str, n: int, failures: float, seed: int) -> dict[str, Any]:
    """The same requests through the same connector, limiter and concurrency, against a
    fresh mock, without the database: what the limit and this machine allow right now.
    A failed request (injected 500) is sent again at once."""
    server, base = start_mock(failures, seed)
    try:
        with tempfile.TemporaryDirectory(prefix="cx-bench-bare-") as tmp:
            rt = runtime(f"sqlite:///{Path(tmp) / 'unused.db'}", base, migrate=False)
            connector = rt.connectors[name]
            first = {"hubspot": 500000000000, "zendesk": 8400000000000, "shopify": 7300000000000000}[name]
            packer = sync.Packer(connector)
            packer.add(sync.Claimed(i, None, name, str(first + i), expected_value(i), {}, 0)
                       for i in range(n))
            batches = packer.flush()
            limiter = Limiter(connector.rate_budget(), Clock())

            def send(batch: list[sync.Item]) -> None:
                while True:
                    try:
                        connector.write_batch(sync.record_writes(batch), limiter)
                        return
                    except PlatformAPIError:
                        continue

            t0 = time.perf_counter()
            with ThreadPoolExecutor(max(1, connector.write_concurrency)) as pool:
                list(pool.map(send, batches))
            elapsed = time.perf_counter() - t0
            rt.engine.dispose()
        return {"elapsed_s": round(elapsed, 2), "requests": limiter.requests}
    finally:
        stop_mock(server)


def phase(n: int, failures: float, database_url: str | None, seed: int) -> dict[str, Any]:
    server, base = start_mock(failures, seed)
    try:
        with tempfile.TemporaryDirectory(prefix="cx-bench-") as tmp:
            rt = runtime(database_url or f"sqlite:///{Path(tmp) / 'bench.db'}", base)
            seed_outbox(rt, n)
            zendesk_writer.FIRST_POLL = 0.02  # the mock finishes jobs at once
            out: dict[str, Any] = {"platforms": {}}
            for name in ("hubspot", "zendesk", "shopify"):
                bare = bare_client(name, n, failures, seed)
                t0 = time.perf_counter()
                runs, stats = 0, []
                while runs < 5:  # the scheduler's runs; a clean phase needs one
                    runs += 1
                    stats.append(sync.sync(rt, sources=[name])["platforms"][name])
                    if not sync.counts(rt.engine).get(name, {}).get("pending") and \
                            not sync.counts(rt.engine).get(name, {}).get("retrying"):
                        break
                elapsed = time.perf_counter() - t0
                connector = rt.connectors[name]
                units = n * (len(FIELDS) if name == "shopify" else 1)
                minimum = math.ceil(units / connector.write_batch_size())
                if name == "zendesk":
                    minimum *= 2  # every update job needs one job-status request
                cost = MUTATION_COST if name == "shopify" else 1.0
                made = sum(s["requests"] for s in stats)
                limit = Limiter(connector.rate_budget(), Clock())
                allowed = limit.minimum_seconds([cost] * minimum)
                allowed_made = limit.minimum_seconds([cost] * made)
                out["platforms"][name] = {
                    "requests": made, "minimum_requests": minimum, "elapsed_s": round(elapsed, 2),
                    "rate_limit_allows_s": round(allowed, 2),
                    "elapsed_vs_allowed": round(elapsed / allowed, 3) if allowed else None,
                    "rate_limit_allows_requests_made_s": round(allowed_made, 2),
                    "elapsed_vs_allowed_requests_made":
                        round(elapsed / allowed_made, 3) if allowed_made else None,
                    "bare_client_s": bare["elapsed_s"], "bare_client_requests": bare["requests"],
                    "elapsed_vs_bare_client": round(elapsed / bare["elapsed_s"], 3),
                    "runs": runs, "dead": sum(s["dead"] for s in stats),
                    "retried": sum(s["retried"] for s in stats),
                    "rate_limited": sum(s["rate_limited"] for s in stats)}
            import urllib.request
            with urllib.request.urlopen(base + "/_state", timeout=30) as resp:  # loopback only
                state = json.loads(resp.read())
            out["server"] = state["counts"]
            out["lost_updates"] = lost_updates(state["landed"], n)
            rt.engine.dispose()
        return out
    finally:
        stop_mock(server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--failures", type=float, default=0.05)
    ap.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    report = {"customers": args.customers, "load_average_before": list(os.getloadavg()),
              "clean": phase(args.customers, 0.0, args.database_url, args.seed),
              "with_failures": {"share": args.failures,
                                **phase(args.customers, args.failures, args.database_url, args.seed)},
              "load_average_after": list(os.getloadavg())}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
