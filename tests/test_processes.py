"""The deployment as users run it: gunicorn with the shipped settings and two clock
processes (one too many, as during an overlapping deploy) on one database, a mock
HubSpot API in front of the write-back, signed webhooks arriving all along.

Checked: every webhook answered 200 and quickly, also while jobs run; no job runs in
both clocks at once; no write is sent twice; every record ends with its customer's
latest scores; nothing crashed and nothing logged a traceback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from cx_connector import db
from cx_connector.connector import CustomerRef
from cx_connector.identity import resolve
from cx_connector.models import job_runs, outbox, touchpoints, written_values
from tests.conftest import NOW
from tests.test_crash import free_port

SECRET = "generic-process-secret-0123456789"
CUSTOMERS = 60


class MockHubSpot:
    """HubSpot's batch update endpoint on a local port, recording what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.other: list[str] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/crm/v3/objects/contacts/batch/update":
                    with lock:
                        outer.other.append(self.path)
                    self._answer(404, {"status": "error", "message": "not mocked"})
                    return
                inputs = json.loads(body)["inputs"]
                time.sleep(0.03)  # a platform round trip
                with lock:
                    outer.sent += [(i["id"], i["properties"]) for i in inputs]
                self._answer(200, {"status": "COMPLETE",
                                   "results": [{"id": i["id"], "properties": {}} for i in inputs]})

            def _answer(self, status: int, payload: Any) -> None:
                out = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_config(tmp: Path, database_url: str, api_port: int, web_port: int) -> Path:
    path = tmp / "cx.yaml"
    path.write_text(f"""
database_url: {database_url}
logging: {{level: INFO}}  # the clock says "scheduler running" at INFO
schedule: {{score_every: 1s, sync_every: 1s, enrich_every: 1h}}
scoring: {{min_purchasers: 1000000}}
connectors:
  generic:
    secret: {SECRET}
  hubspot:
    client_secret: hubspot-process-secret
    access_token: hubspot-process-token
    webhook_url: http://localhost:{web_port}/webhooks/hubspot
    api_base_url: http://127.0.0.1:{api_port}
""")
    return path


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, *args], env={**os.environ, **env}, cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> int | None:
    """SIGTERM (a deploy's stop); returns the exit code, None if it had died before."""
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode if alive else None


def exit_code(proc: subprocess.Popen, seconds: float, log: Path, why: str) -> int:
    """The exit code of a process that must end within ``seconds``; one that does not is
    killed (SIGKILL) and fails the test with ``why`` and the end of its log."""
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        raise AssertionError(f"{why}: {log.read_text()[-3000:]}") from None


def signed(i: int) -> tuple[bytes, dict[str, str]]:
    c = i % CUSTOMERS
    body = json.dumps({"touchpoint_id": f"proc:{i}", "occurred_at": f"2026-05-{1 + i % 28:02d}T10:00:00Z",
                       "customer": {"source_id": f"g{c}", "email": f"c{c}@example.com"},
                       "kind": "order_placed", "value": f"{5 + i % 40}.00", "currency": "EUR"}).encode()
    sig = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    return body, {"X-CX-Signature": sig, "Content-Type": "application/json"}


def same(value: Any) -> Any:
    """A value as sent (HubSpot takes strings) and as stored compare equal: 7 == "7.0"."""
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return str(value)


def job_runs_rows(engine: Any) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(job_runs.c.job, job_runs.c.status, job_runs.c.started_at,
                                   job_runs.c.finished_at).order_by(job_runs.c.started_at)).all()


@pytest.mark.slow
def test_web_workers_and_two_clocks_work_together(tmp_path, database_url, rt):
    api = MockHubSpot()
    port = free_port()
    config = write_config(tmp_path, database_url, api.port, port)
    env = {"CX_CONNECTOR_CONFIG": str(config), "PORT": str(port), "WEB_CONCURRENCY": "2",
           "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    records = {f"c{c}@example.com": str(800000000000 + c) for c in range(CUSTOMERS)}
    with db.write(rt.engine) as conn:  # the HubSpot contacts, known by email
        resolve(conn, "hubspot", [(CustomerRef(hid, email=email), NOW) for email, hid in records.items()],
                now=NOW)

    logs = {name: tmp_path / f"{name}.log" for name in ("web", "clock1", "clock2")}
    web = start(["-m", "gunicorn", "-c", "python:cx_connector.gunicorn_conf"], env, logs["web"], tmp_path)
    clocks = [start(["-m", "cx_connector", "scheduler"], env, logs[f"clock{k}"], tmp_path) for k in (1, 2)]
    procs = [web, *clocks]
    answered: list[tuple[float, int, float]] = []  # (wall time, status, seconds)
    try:
        deadline = time.time() + 30
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline, logs["web"].read_text()[-2000:]
            time.sleep(0.1)

        while not any(r.job == "score" and r.status == "ok" for r in job_runs_rows(rt.engine)):
            assert time.time() < deadline, "the clocks did not start"
            assert all(p.poll() is None for p in clocks), [p.args for p in clocks if p.poll() is not None]
            time.sleep(0.1)

        counter = itertools.count()
        lock = threading.Lock()
        until = time.time() + 4

        def sender() -> None:
            with requests.Session() as s:
                while time.time() < until:
                    with lock:
                        i = next(counter)
                    body, headers = signed(i)
                    t0 = time.perf_counter()
                    r = s.post(f"http://127.0.0.1:{port}/webhooks/generic", data=body, headers=headers,
                               timeout=10)
                    with lock:
                        answered.append((time.time(), r.status_code, time.perf_counter() - t0))
                    time.sleep(0.01)

        senders = [threading.Thread(target=sender) for _ in range(4)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(30)

        # the clocks catch up: every customer scored, every write sent
        deadline = time.time() + 40
        while True:
            with rt.engine.connect() as conn:
                open_writes = conn.execute(select(outbox.c.id).where(
                    outbox.c.status.in_(["pending", "in_flight"]))).first()
            runs = job_runs_rows(rt.engine)
            last_sent = max((r.started_at for r in runs if r.job == "sync" and r.status == "ok"),
                            default=None)
            last_webhook = datetime.fromtimestamp(max(t for t, _, _ in answered), UTC)
            if open_writes is None and last_sent is not None and last_sent > last_webhook:
                # one more full scoring + sync cycle after the last webhook has passed
                scored_after = [r for r in runs if r.job == "score" and r.status == "ok"
                                and r.started_at > last_webhook]
                synced_after = [r for r in runs if r.job == "sync" and r.status == "ok" and
                                scored_after and r.started_at > scored_after[0].finished_at]
                if synced_after:
                    break
            assert time.time() < deadline, ("the clocks did not catch up", open_writes, last_webhook,
                                            [(r.job, r.status, r.started_at, r.error) for r in runs[-12:]])
            time.sleep(0.5)
        for p in procs:
            assert p.poll() is None, f"a process died: {p.args}"
    finally:
        codes = [stop(p) for p in procs]
        api.close()

    # webhooks: all answered 200, quickly, while the jobs were running too
    statuses = {s for _, s, _ in answered}
    assert statuses == {200}, statuses
    seconds = sorted(d for _, _, d in answered)
    assert seconds[-1] < 3.0 and seconds[int(len(seconds) * 0.95)] < 1.0, seconds[-10:]
    runs = job_runs_rows(rt.engine)
    busy = [(r.started_at.timestamp(), r.finished_at.timestamp()) for r in runs
            if r.status == "ok" and r.job in ("score", "sync")]
    during = [t for t, _, _ in answered if any(a <= t <= b for a, b in busy)]
    assert during, "no webhook arrived while a scoring or sync run was working"
    with rt.engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(touchpoints)).scalar_one()
    assert stored == len(answered)  # every acknowledged event, once

    # the clocks: no job ran in both at once
    by_job: dict[str, list[Any]] = {}
    for r in runs:
        assert r.status != "failed", r
        if r.status == "ok":
            by_job.setdefault(r.job, []).append(r)
    for job, done in by_job.items():
        for a, b in itertools.pairwise(done):
            assert a.finished_at <= b.started_at, f"{job} ran in both clocks at once"
    for k in (1, 2):  # both clocks ran the whole time (which one got a job is chance)
        assert "scheduler running" in logs[f"clock{k}"].read_text()

    # write-back: never the same write twice, and each record holds its latest scores
    assert api.other == []
    per_record: dict[str, list[dict[str, Any]]] = {}
    for record, properties in api.sent:
        per_record.setdefault(record, []).append(properties)
    with rt.engine.connect() as conn:
        done = Counter(conn.execute(select(outbox.c.external_id).where(outbox.c.status == "done")).scalars())
    assert {r: len(s) for r, s in per_record.items()} == dict(done), "a write was sent more than once"
    for record, sends in per_record.items():
        for a, b in itertools.pairwise(sends):
            assert a != b, f"record {record} was sent the same values twice: {a}"
    final = {record: {k: v for s in sends for k, v in s.items()} for record, sends in per_record.items()}
    with rt.engine.connect() as conn:
        landed: dict[str, dict[str, Any]] = {}
        for ext, field, value in conn.execute(select(written_values.c.external_id, written_values.c.field,
                                                     written_values.c.value)):
            landed.setdefault(ext, {})[field] = value
    assert set(final) == set(landed) == set(records.values())
    for record, fields in landed.items():
        sent = dict(final[record])
        # HubSpot takes datetimes as epoch milliseconds
        at = datetime.fromisoformat(fields.pop("cx_scored_at").replace("Z", "+00:00"))
        assert int(sent.pop("cx_scored_at")) == int(at.timestamp() * 1000)
        assert {k: same(v) for k, v in fields.items()} == {k: same(v) for k, v in sent.items()}

    # shut down cleanly, and nothing logged a traceback
    assert codes == [0, 0, 0], (codes, {k: v.read_text()[-1500:] for k, v in logs.items()})
    for name, path in logs.items():
        text = path.read_text()
        assert "Traceback" not in text, f"{name}: {text[-3000:]}"
    for line in logs["web"].read_text().splitlines():
        json.loads(line)  # gunicorn's own lines come out as JSON too


def test_the_clock_stops_on_sigterm_at_any_moment(tmp_path, database_url):
    """A deploy's stop (SIGTERM) ends the clock with 0 within seconds, whatever it was doing.
    It once shut the scheduler down inside the signal handler, which could deadlock with a
    job finishing meanwhile (the clock then had to be killed); jobs every second and stops
    at random moments give that race its chances."""
    api = MockHubSpot()
    config = write_config(tmp_path, database_url, api.port, free_port())
    env = {"CX_CONNECTOR_CONFIG": str(config)}
    rng = random.Random(7)
    try:
        for k in range(4):
            log = tmp_path / f"clock{k}.log"
            clock = start(["-m", "cx_connector", "scheduler"], env, log, tmp_path)
            deadline = time.time() + 30
            while "scheduler running" not in log.read_text():
                assert clock.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.05)
            time.sleep(rng.uniform(0.5, 2.5))
            at = time.monotonic()
            os.killpg(clock.pid, signal.SIGTERM)
            code = exit_code(clock, 10, log, "no stop within 10 s")
            assert code == 0, log.read_text()[-2000:]
            assert time.monotonic() - at < 10
    finally:
        api.close()


#: the clock, with a SIGTERM sent to itself while it submits its third job run (from
#: within concurrent.futures' ThreadPoolExecutor.submit, which APScheduler calls)
SIGTERM_DURING_SUBMIT = """
import concurrent.futures, os, signal
submit, calls = concurrent.futures.ThreadPoolExecutor.submit, []
def submitting(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return submit(self, *args, **kwargs)
concurrent.futures.ThreadPoolExecutor.submit = submitting
from cx_connector.cli import main
main(prog_name="cx-connector", args=["scheduler"])
"""


def test_a_sigterm_while_the_clock_submits_a_job_stops_it(tmp_path, database_url):
    """The SIGTERM handler used to raise SystemExit in the main thread, which ran
    APScheduler's loop; landing in its job submission (which catches BaseException), it
    was logged as "Error submitting job" and lost, and the clock ran on until killed."""
    api = MockHubSpot()
    config = write_config(tmp_path, database_url, api.port, free_port())
    log = tmp_path / "clock.log"
    try:
        clock = start(["-c", SIGTERM_DURING_SUBMIT], {"CX_CONNECTOR_CONFIG": str(config)}, log, tmp_path)
        code = exit_code(clock, 20, log, "SIGTERM lost")
        text = log.read_text()
        assert code == 0, text[-3000:]
        assert "scheduler running" in text and "Error submitting job" not in text, text[-3000:]
    finally:
        api.close()
