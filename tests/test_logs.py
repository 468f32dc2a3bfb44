"""Logs: one JSON object per line, with the request id, and never a configured secret."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import requests

from cx_connector import logs
from tests.test_crash import free_port


def test_json_lines_with_request_id_and_secrets_scrubbed(capsys):
    logs.configure("INFO", "json", ["s3cr3t-value-123"])
    try:
        token = logs.request_id.set("req-42")
        logging.getLogger("cx_connector.test").info("calling https://x/?token=%s", "s3cr3t-value-123",
                                                    extra={"detail": "header s3cr3t-value-123",
                                                           "report": {"url": "x?s3cr3t-value-123",
                                                                      "n": [1, 2]}})
        try:
            raise ValueError("boom s3cr3t-value-123")
        except ValueError:
            logging.getLogger("cx_connector.test").exception("failed")
        logs.request_id.reset(token)
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if h.get_name() != "cx-connector"]
    err = capsys.readouterr().err
    assert "s3cr3t-value-123" not in err
    lines = [json.loads(line) for line in err.strip().splitlines()]
    assert lines[0]["request_id"] == "req-42" and lines[0]["logger"] == "cx_connector.test"
    assert "[redacted]" in lines[0]["message"] and lines[0]["detail"] == "header [redacted]"
    assert lines[0]["report"] == {"url": "x?[redacted]", "n": [1, 2]}  # nested values too
    assert lines[1]["message"] == "failed"  # the traceback has its own key, scrubbed
    assert "ValueError: boom [redacted]" in lines[1]["exception"]


def test_request_id_is_echoed_and_generated(client):
    assert client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    generated = client.get("/healthz").headers["X-Request-Id"]
    assert len(generated) == 32


def test_serve_command_serves_webhooks_and_logs_no_secret(tmp_path, database_url):
    secret = "generic-secret-for-serve-test-987"
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\nconnectors:\n  generic:\n    secret: {secret}\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cx_connector", "--config", str(cfg), "serve",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(100):
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        r = requests.post(f"http://127.0.0.1:{port}/webhooks/generic", data=b"{}",
                          headers={"X-CX-Signature": "AAAA"}, timeout=5)
        assert r.status_code == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert "webhook signature rejected" in out
    assert secret not in out
