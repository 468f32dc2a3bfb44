"""Crash safety: gunicorn killed with SIGKILL in the middle of a burst loses no event it
acknowledged with 200, and the platforms' retries then fill in the rest exactly once."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

SECRET = "generic-test-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body_for(i: int) -> bytes:
    return json.dumps({"touchpoint_id": f"crash:{i}", "occurred_at": "2026-05-01T10:00:00Z",
                       "customer": {"source_id": f"c{i % 50}", "email": f"c{i % 50}@example.com"},
                       "kind": "order_placed", "value": "9.99", "currency": "EUR"}).encode()


def post(port: int, i: int, session: requests.Session) -> int:
    body = body_for(i)
    sig = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    try:
        r = session.post(f"http://127.0.0.1:{port}/webhooks/generic", data=body, timeout=10,
                         headers={"X-CX-Signature": sig, "X-CX-Delivery-Id": f"d{i}",
                                  "Content-Type": "application/json"})
        return r.status_code
    except requests.RequestException:
        return 0


class Server:
    def __init__(self, config: Path, port: int) -> None:
        env = {**os.environ, "CX_CONNECTOR_CONFIG": str(config)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
             "--graceful-timeout", "1", "cx_connector:create_app()"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.port = port
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError("gunicorn did not start")

    def kill(self) -> None:
        """SIGKILL master and workers at once: no graceful shutdown, no flush."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.mark.slow
def test_sigkill_during_a_burst_loses_no_acknowledged_event(tmp_path, database_url):
    config = tmp_path / "cx.yaml"
    config.write_text(f"database_url: {database_url}\nlogging: {{level: ERROR}}\n"
                      f"connectors:\n  generic:\n    secret: {SECRET}\n")
    port = free_port()
    server = Server(config, port)
    total, acked, lock = 400, set(), threading.Lock()
    stop = threading.Event()

    def sender(start: int) -> None:
        with requests.Session() as s:
            for i in range(start, total, 8):
                if stop.is_set():
                    return
                if post(port, i, s) == 200:
                    with lock:
                        acked.add(i)

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    while len(acked) < 100:  # kill mid-burst
        time.sleep(0.005)
    server.kill()
    stop.set()
    for t in threads:
        t.join(20)

    engine = create_engine(database_url)
    with engine.connect() as conn:
        stored = {int(r[0].split(":")[1]) for r in conn.execute(
            text("SELECT touchpoint_id FROM touchpoints WHERE source = 'generic'"))}
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged events lost: {sorted(missing)[:10]}"
    assert 100 <= len(acked) < total

    # the platforms retry what was not acknowledged (and some that were): all land exactly once
    server = Server(config, port)
    codes: list[int] = []

    def resend(start: int) -> None:
        with requests.Session() as s:
            for i in range(start, total, 8):
                code = post(port, i, s)
                with lock:
                    codes.append(code)

    try:
        threads = [threading.Thread(target=resend, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(codes) == total and set(codes) == {200}
    finally:
        server.kill()
    with engine.connect() as conn:
        n_tp = conn.execute(text("SELECT count(*) FROM touchpoints")).scalar_one()
        n_del = conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one()
        n_distinct = conn.execute(text("SELECT count(DISTINCT touchpoint_id) FROM touchpoints")).scalar_one()
    engine.dispose()
    assert n_tp == n_distinct == total
    assert n_del == total
