"""Several worker processes count, any one scrape reports their sum, a dead worker's counts stay."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict

from cx_connector.metrics import web
from tests.metrics.scraping import ADMIN, parse, series, value
from tests.test_crash import free_port

SECRET = "generic-test-secret-0123456789"

WRITER = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from cx_connector.metrics import web
n = int(sys.argv[2])
for _ in range(n):
    web.delivered(["generic"], "generic", "processed", 2, False)
web.web(["generic"]).http_duration.labels("/webhooks/<source>").observe(0.2)
web.web(["generic"]).http_duration.labels("/webhooks/<source>").observe(3.0)
print(os.getpid())
"""


def write_from_a_process(path: Path, n: int) -> int:
    out = subprocess.run([sys.executable, "-c", WRITER, str(path), str(n)], check=True,
                         capture_output=True, text=True)
    return int(out.stdout.strip())


def collected(path: Path, *, counters_only: bool = False) -> dict:
    samples = {}
    for family in web._Multiprocess(str(path)).collect():
        if counters_only and family.type == "gauge":
            continue
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def test_two_processes_write_one_scrape_reads_their_sum_and_exits_fold_into_an_archive(tmp_path):
    path = tmp_path / "prom"
    web.prepare(str(path))
    a = write_from_a_process(path, 3)
    b = write_from_a_process(path, 5)
    assert a != b
    m = collected(path)
    assert value(m, "cx_webhook_deliveries_total", source="generic", status="processed") == 8
    assert value(m, "cx_touchpoints_stored_total", source="generic") == 16
    assert value(m, "cx_http_request_duration_seconds_count", route="/webhooks/<source>") == 4
    assert value(m, "cx_http_request_duration_seconds_bucket", route="/webhooks/<source>", le="0.25") == 2
    assert sorted(web.live_pids(str(path))) == sorted([a, b])
    assert value(m, "cx_web_workers") == 2
    counts = collected(path, counters_only=True)

    web.worker_exited(str(path), a)
    assert collected(path, counters_only=True) == counts  # nothing lost, nothing counted twice
    assert not (path / f"counter_{a}.db").exists() and (path / "counter_archive.db").exists()
    assert web.live_pids(str(path)) == [b]
    assert value(collected(path), "cx_web_workers") == 1
    web.worker_exited(str(path), b)
    assert collected(path, counters_only=True) == counts
    assert sorted(p.name for p in path.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]

    c = write_from_a_process(path, 1)  # a new worker after both exited: adds to the archive
    assert value(collected(path), "cx_webhook_deliveries_total", source="generic",
                 status="processed") == 9
    web.worker_exited(str(path), c)
    assert value(collected(path), "cx_webhook_deliveries_total", source="generic",
                 status="processed") == 9

    web.prepare(str(path))  # a new start: an empty directory
    assert not list(path.glob("*.db"))


# --- the real thing: gunicorn with two workers, one of them killed -------------------------------


def signed_post(port: int, i: int) -> int:
    body = json.dumps({"touchpoint_id": f"mp:{i}", "occurred_at": "2026-05-01T10:00:00Z",
                       "customer": {"source_id": f"c{i}", "email": f"c{i}@example.com"},
                       "kind": "order_placed", "value": "9.99", "currency": "EUR"}).encode()
    sig = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    return requests.post(f"http://127.0.0.1:{port}/webhooks/generic", data=body, timeout=30,
                         headers={"X-CX-Signature": sig, "Content-Type": "application/json",
                                  "Connection": "close"}).status_code


def per_worker(path: Path) -> dict[int, float]:
    """Processed webhooks counted in each live worker's own file."""
    out = {}
    for f in path.glob("counter_*.db"):
        pid = f.name[len("counter_"):-3]
        if not pid.isdigit():
            continue
        out[int(pid)] = sum(v for key, v, _, _ in MmapedDict.read_all_values_from_file(str(f))
                            if json.loads(key)[1] == "cx_webhook_deliveries_total")
    return out


def wait_for(check, what: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_gunicorn_workers_are_summed_and_a_killed_workers_counts_survive(tmp_path, database_url):
    prom = tmp_path / "prom"
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\nadmin_token: {ADMIN}\n"
                   f"connectors:\n  generic:\n    secret: {SECRET}\n")
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    proc = subprocess.Popen([sys.executable, "-m", "cx_connector", "--config", str(cfg), "serve",
                             "--port", str(port), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def scrape() -> dict:
        r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10,
                         headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200
        return parse(r.text)

    try:
        wait_for(lambda: _healthy(port), "the server")
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            # until both workers have served some (a sync worker takes one request at a time)
            for _ in range(20):
                assert set(pool.map(lambda i: signed_post(port, i), range(sent, sent + 40))) == {200}
                sent += 40
                if len([n for n in per_worker(prom).values() if n]) >= 2:
                    break
        counts = per_worker(prom)
        assert len([n for n in counts.values() if n]) == 2 and sum(counts.values()) == sent
        m = scrape()
        assert value(m, "cx_webhook_deliveries_total", source="generic", status="processed") == sent
        assert value(m, "cx_touchpoints_stored_total", source="generic") == sent
        assert value(m, "cx_web_workers") == 2
        assert {dict(k)["pid"] for k in series(m, "process_resident_memory_bytes")} == \
            {str(p) for p in counts}

        victim = max(counts, key=counts.get)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in web.live_pids(str(prom)), "the master to see the worker exit")
        assert not (prom / f"counter_{victim}.db").exists()  # folded into the archive
        wait_for(lambda: _healthy(port) and len(web.live_pids(str(prom))) == 2, "the new worker")
        for _ in range(3):  # whichever worker answers
            m = scrape()
            assert value(m, "cx_webhook_deliveries_total", source="generic", status="processed") == sent
            assert value(m, "cx_web_workers") == 2
        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(lambda i: signed_post(port, i), range(sent, sent + 10))) == {200}
        assert value(scrape(), "cx_webhook_deliveries_total", source="generic",
                     status="processed") == sent + 10
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, "gunicorn logged nothing"
    for line in lines:  # gunicorn's master and workers, and the app: every line is JSON
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry), line
    loggers = {json.loads(line)["logger"] for line in lines}
    assert "gunicorn.error" in loggers
    assert any("SIGKILL" in json.loads(line)["message"] for line in lines)
    assert SECRET not in out and ADMIN not in out
    assert not prom.exists() or not list(prom.glob("*.tmp"))


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
