"""Logs: one JSON object per line, with the request id, and never a configured secret."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import requests
from sqlalchemy import create_engine, text

from cx_connector import logs
from tests.metrics.test_multiprocess import _healthy, wait_for
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


def test_text_lines_carry_the_fields_of_the_json_lines_scrubbed(capsys):
    """logging.format text: the context's fields (job, job_run_id) and the call's extra come
    after the message as key=value, secrets redacted in both, one line per record."""
    logs.configure("INFO", "text", ["s3cr3t-value-123"])
    try:
        log = logging.getLogger("cx_connector.test")
        with logs.fields(job="score", job_run_id=7, origin="url?s3cr3t-value-123"):
            log.info("job finished", extra={"status": "ok", "duration_ms": 120})
            log.warning("odd", extra={"detail": "two words\nand s3cr3t-value-123", "report": {"n": [1, 2]},
                                      "none": None, "job": "override"})
        log.info("plain")
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if h.get_name() != "cx-connector"]
    err = capsys.readouterr().err
    assert "s3cr3t-value-123" not in err
    first, second, third = err.splitlines()
    assert first.endswith(" INFO cx_connector.test: job finished job=score job_run_id=7 "
                          'origin=url?[redacted] status=ok duration_ms=120')
    assert second.endswith(' WARNING cx_connector.test: odd job=override job_run_id=7 '
                           'origin=url?[redacted] detail="two words\\nand [redacted]" '
                           'report={"n":[1,2]} none=null')
    assert third.endswith(" INFO cx_connector.test: plain")


def test_the_json_line_scrubs_the_context_fields_too(capsys):
    logs.configure("INFO", "json", ["s3cr3t-value-123"])
    try:
        with logs.fields(job="sync", origin="url?s3cr3t-value-123"):
            logging.getLogger("cx_connector.test").info("hello")
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if h.get_name() != "cx-connector"]
    line = json.loads(capsys.readouterr().err)
    assert line["job"] == "sync" and line["origin"] == "url?[redacted]"


def test_the_clock_in_text_format_says_which_job_finished_how_and_in_how_long(tmp_path, database_url):
    secret = "generic-secret-for-text-clock-654"
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\nlogging: {{format: text}}\n"
                   f"connectors:\n  generic:\n    secret: {secret}\n")
    done = subprocess.run([sys.executable, "-m", "cx_connector", "--config", str(cfg), "scheduler", "--once",
                           "--job", "kpis"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stderr.splitlines() if "job finished" in x]
    assert re.search(r" INFO cx_connector\.scheduler: job finished job=kpis job_run_id=\d+ status=ok "
                     r"duration_ms=\d+$", line), line
    assert secret not in done.stderr


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


def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    out = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= set(entry), line
        out.append(entry)
    return out


def test_a_line_logged_after_a_request_does_not_carry_its_request_id(client, capsys):
    logs.configure("INFO", "json", [])
    try:
        client.get("/healthz", headers={"X-Request-Id": "req-after"})
        logging.getLogger("cx_connector.test").warning("between requests")
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if h.get_name() != "cx-connector"]
    entry = next(e for e in _json_lines(capsys.readouterr().err) if e["message"] == "between requests")
    assert "request_id" not in entry


def test_a_webhook_is_one_line_with_the_request_and_what_became_of_the_delivery(post_signed, capsys):
    logs.configure("INFO", "json", [])
    try:
        r = post_signed("generic", {"touchpoint_id": "log:1", "occurred_at": "2026-05-01T10:00:00Z",
                                    "customer": {"source_id": "c1"}, "kind": "order_placed"},
                        headers={"X-Request-Id": "req-webhook-1"})
        assert r.status_code == 200
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if h.get_name() != "cx-connector"]
    lines = [e for e in _json_lines(capsys.readouterr().err) if e.get("request_id") == "req-webhook-1"]
    assert len(lines) == 1, lines
    (line,) = lines
    assert line["message"] == "webhook received" and line["logger"] == "cx_connector.http"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/webhooks/generic", 200)
    assert line["source"] == "generic" and line["delivery"] == "processed"
    assert line["touchpoints"] == 1 and line["delivery_id"] == r.get_json()["delivery_id"]
    assert line["ms"] >= 0


def test_the_clock_process_logs_json_lines_with_the_job_of_each_line(tmp_path, database_url, post_signed):
    assert post_signed("generic", {"touchpoint_id": "clock:1", "occurred_at": "2026-05-01T10:00:00Z",
                                   "customer": {"source_id": "c1", "email": "c1@example.com"},
                                   "kind": "order_placed", "value": "9.99",
                                   "currency": "EUR"}).status_code == 200  # something to score
    secret = "generic-secret-for-clock-test-456"
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\nadmin_token: clock-admin-token-0123456789\n"
                   f"connectors:\n  generic:\n    secret: {secret}\n")
    proc = subprocess.Popen([sys.executable, "-m", "cx_connector", "--config", str(cfg), "scheduler"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # every job runs once at start-up
            time.sleep(0.5)
            engine = create_engine(database_url)
            with engine.connect() as conn:
                done = set(conn.execute(text("SELECT DISTINCT job FROM job_runs WHERE status = 'ok'"))
                           .scalars())
            engine.dispose()
            if done >= {"enrich", "checkouts", "score", "kpis", "sync"}:
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    entries = _json_lines(err.decode())
    assert out.decode() == ""
    assert any(e["message"] == "scheduler running" and "sync" in e["jobs"] for e in entries)
    finished = [e for e in entries if e["message"] == "job finished"]
    assert {e["job"] for e in finished} >= {"enrich", "checkouts", "score", "kpis", "sync"}
    assert all(isinstance(e["job_run_id"], int) for e in finished)
    scoring = [e for e in entries if e["logger"] == "cx_connector.scoring.run"]
    assert scoring and all(e["job"] == "score" for e in scoring)  # the job's own lines say which job
    assert secret not in err.decode() and "clock-admin-token-0123456789" not in err.decode()


def test_an_unexpected_error_in_a_command_is_a_scrubbed_json_line_and_exit_1(tmp_path, database_url,
                                                                                monkeypatch):
    from click.testing import CliRunner

    from cx_connector import db
    from cx_connector.cli import main

    secret = "generic-secret-for-cli-test-789"
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\nconnectors:\n  generic:\n    secret: {secret}\n")

    def broken(engine):  # a bug that happens to echo a secret
        raise RuntimeError(f"unexpected state while reading with {secret}")

    monkeypatch.setattr(db, "read", broken)
    try:
        result = CliRunner().invoke(main, ["--config", str(cfg), "events", "list"])
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if h.get_name() != "cx-connector"]
    assert result.exit_code == 1
    entries = _json_lines(result.stderr)
    assert entries[-1]["message"] == "command failed" and entries[-1]["level"] == "error"
    assert entries[-1]["command"] == "events"
    assert "RuntimeError: unexpected state while reading with [redacted]" in entries[-1]["exception"]
    assert secret not in result.output + result.stderr


def test_gunicorn_logger_class_writes_json_error_and_access_lines(tmp_path, database_url):
    secret = "generic-secret-for-gunicorn-test-321"
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\nconnectors:\n  generic:\n    secret: {secret}\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}",
         "--logger-class", "cx_connector.logs.GunicornLogger", "--access-logfile", "-",
         "cx_connector:create_app()"],
        env={**os.environ, "CX_CONNECTOR_CONFIG": str(cfg)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        cwd=tmp_path)  # plain gunicorn: not the repository's gunicorn.conf.py
    try:
        wait_for(lambda: _healthy(port), "gunicorn")
        r = requests.get(f"http://127.0.0.1:{port}/healthz?token={secret}", timeout=5,
                         headers={"User-Agent": f"probe {secret}", "X-Request-Id": "gunicorn-1"})
        assert r.status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    entries = _json_lines(out)
    assert any(e["logger"] == "gunicorn.error" and "Booting worker" in e["message"] for e in entries)
    access = [e for e in entries if e["logger"] == "gunicorn.access" and e["request_id"] == "gunicorn-1"]
    assert len(access) == 1
    assert (access[0]["method"], access[0]["path"], access[0]["status"]) == ("GET", "/healthz", "200")
    assert access[0]["user_agent"] == "probe [redacted]"
    assert secret not in out


def test_generated_request_ids_are_version_4_uuids():
    import uuid

    from cx_connector.app import new_request_id

    ids = {new_request_id() for _ in range(200)}
    assert len(ids) == 200
    for rid in ids:
        u = uuid.UUID(hex=rid)
        assert u.hex == rid and u.version == 4 and u.variant == uuid.RFC_4122
