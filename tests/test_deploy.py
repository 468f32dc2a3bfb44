"""The deployment files as a Procfile host and gunicorn read them, and the
configuration a hosting platform hands over (``DATABASE_URL=postgres://...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import event

from cx_connector import db
from cx_connector.config import config_from_mapping

ROOT = Path(__file__).resolve().parent.parent


def test_procfile_has_the_release_web_and_clock_processes():
    lines = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert {k: v.strip() for k, v in lines.items()} == {
        "release": "cx-connector db upgrade",
        "web": "gunicorn --config gunicorn.conf.py",
        "clock": "cx-connector scheduler",
    }


@pytest.fixture(scope="module")
def app_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A configuration whose database is not there: gunicorn loads the app (preloaded), which
    starts anyway, as it does while the database is away."""
    path = tmp_path_factory.mktemp("deploy") / "cx.yaml"
    path.write_text("database_url: sqlite:////nonexistent-cx-dir/cx.db\nlogging: {level: ERROR}\n")
    return str(path)


def gunicorn_settings(app_config: str, *config: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """What gunicorn itself makes of a configuration (``--print-config``)."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PORT", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS", "GUNICORN_CMD_ARGS")}
    clean["CX_CONNECTOR_CONFIG"] = app_config
    out = subprocess.run([sys.executable, "-m", "gunicorn", "--print-config", *config],
                         env={**clean, **(env or {})}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in out.stdout.splitlines())
            if _}


def test_gunicorn_reads_the_shipped_settings_from_the_working_directory(app_config):
    """The Procfile's ``web`` (from the checkout) and ``-c python:cx_connector.gunicorn_conf``
    (pip-installed) are the same settings; PORT and WEB_CONCURRENCY drive them."""
    env = {"PORT": "5123", "WEB_CONCURRENCY": "7", "FORWARDED_ALLOW_IPS": "*"}
    from_file = gunicorn_settings(app_config, "--config", "gunicorn.conf.py", env=env)
    from_package = gunicorn_settings(app_config, "--config", "python:cx_connector.gunicorn_conf", env=env)
    assert {**from_file, "config": ""} == {**from_package, "config": ""}
    s = from_file
    assert s["bind"] == "['0.0.0.0:5123']" and s["workers"] == "7"
    assert s["wsgi_app"] == "cx_connector:create_app()"
    assert s["worker_class"] == "gthread" and s["threads"] == "4"
    assert s["preload_app"] == "True"
    # the platforms give a webhook 5 s: the workers are replaced long after no request is
    # useful, a deploy lets in-flight requests finish, and the proxy closes idle connections
    assert int(s["timeout"]) == 20 and int(s["graceful_timeout"]) == 10 and int(s["keepalive"]) == 75
    assert s["forwarded_allow_ips"] == "['*']"
    assert s["control_socket_disable"] == "True"
    for hook in ("when_ready", "post_fork", "post_worker_init", "child_exit"):
        assert s[hook] == f"<{hook}()>"


def test_without_a_platform_gunicorn_listens_on_loopback_with_a_worker_per_cpu_plus_one(app_config):
    s = gunicorn_settings(app_config, "--config", "python:cx_connector.gunicorn_conf")
    assert s["bind"] == "['127.0.0.1:8000']"
    assert s["workers"] == str(len(os.sched_getaffinity(0)) + 1)
    assert s["forwarded_allow_ips"] == "['127.0.0.1', '::1']"


def test_serve_runs_gunicorn_with_the_shipped_settings(tmp_path, database_url, monkeypatch):
    from gunicorn.app.base import BaseApplication

    from cx_connector.cli import main

    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\n")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(BaseApplication, "run", lambda self: seen.update(cfg=self.cfg, app=self.wsgi()))
    result = CliRunner().invoke(main, ["--config", str(cfg), "serve", "--port", "8123", "--workers", "2"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    c = seen["cfg"]
    assert c.bind == ["127.0.0.1:8123"] and c.workers == 2
    assert c.worker_class_str == "gthread" and c.preload_app and c.graceful_timeout == 10
    assert seen["app"].extensions["cx"].config.origin == str(cfg)
    seen["app"].extensions["cx"].engine.dispose()


def test_database_url_from_the_environment_as_heroku_and_dokku_give_it():
    env = {"DATABASE_URL": "postgres://u5er:p4ss-w0rd@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d8x?sslmode=require"}
    config = config_from_mapping({"database_url": "${DATABASE_URL}"}, env=env)
    assert config.database_url == ("postgresql+psycopg://u5er:p4ss-w0rd@ec2-1-2-3-4.compute-1.amazonaws.com"
                                   ":5432/d8x?sslmode=require")
    assert "p4ss-w0rd" in config.secrets()  # scrubbed from logs like any other secret


@pytest.mark.parametrize(("query", "expected"), [("", 3), ("?connect_timeout=11", "11")])
def test_postgres_connections_time_out_quickly_unless_the_url_says_otherwise(query, expected):
    """libpq would wait for the operating system (minutes) to give up on a host that does not
    answer; a webhook has 5 s. The URL's own parameters win."""
    engine = db.make_engine(f"postgresql+psycopg://nobody@127.0.0.1:1/none{query}")
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def capture(dialect, record, cargs, cparams):
        seen.update(cparams)

    with pytest.raises(Exception):
        engine.connect()
    engine.dispose()
    assert seen["connect_timeout"] == expected
    assert seen["keepalives"] == 1 and seen["tcp_user_timeout"] == 5000
