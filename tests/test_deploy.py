"""The deployment files as a Procfile host and gunicorn read them, and the
configuration a hosting platform hands over (``DATABASE_URL=postgres://...``)."""

from __future__ import annotations

import os
import runpy
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


def gunicorn_settings(config: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """What gunicorn makes of a configuration file or module, read as gunicorn reads it
    (every module-level name that is a setting), under the given environment."""
    from gunicorn.config import Config

    for name in ("PORT", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delitem(sys.modules, "cx_connector.gunicorn_conf", raising=False)  # read env again
    if config.startswith("python:"):
        names = runpy.run_module(config.removeprefix("python:"))
    else:
        names = runpy.run_path(str(ROOT / config))
    cfg = Config()
    for key, value in names.items():
        if key in cfg.settings:
            cfg.set(key.lower(), value)
    return cfg


def test_gunicorn_reads_the_shipped_settings_from_the_working_directory(monkeypatch):
    """The Procfile's ``web`` (the checkout's gunicorn.conf.py) and ``-c
    python:cx_connector.gunicorn_conf`` (pip-installed) are the same settings; PORT and
    WEB_CONCURRENCY drive them. (The real-process tests run gunicorn with them.)"""
    env = {"PORT": "5123", "WEB_CONCURRENCY": "7", "FORWARDED_ALLOW_IPS": "*"}
    from_file = gunicorn_settings("gunicorn.conf.py", monkeypatch, **env)
    from_package = gunicorn_settings("python:cx_connector.gunicorn_conf", monkeypatch, **env)
    for c in (from_file, from_package):
        assert c.bind == ["0.0.0.0:5123"] and c.workers == 7
        assert c.wsgi_app == "cx_connector:create_app()"
        assert c.worker_class_str == "gthread" and c.threads == 4
        assert c.preload_app
        # the platforms give a webhook 5 s: the workers are replaced long after no request is
        # useful, a deploy lets in-flight requests finish, and the proxy closes idle connections
        assert (c.timeout, c.graceful_timeout, c.keepalive) == (20, 10, 75)
        assert c.forwarded_allow_ips == ["*"]
        assert c.control_socket_disable
        assert c.logconfig_dict["root"]["handlers"] == ["cx-connector"]
        for hook in _HOOKS:
            assert c.settings[hook].get().__module__ == "cx_connector.gunicorn_conf"
    assert {k: v.get() for k, v in from_file.settings.items() if k not in _HOOKS} == \
        {k: v.get() for k, v in from_package.settings.items() if k not in _HOOKS}


_HOOKS = {"when_ready", "post_fork", "post_worker_init", "child_exit", "on_starting", "on_exit"}


def test_without_a_platform_gunicorn_listens_on_loopback_with_a_worker_per_cpu_plus_one(monkeypatch):
    c = gunicorn_settings("python:cx_connector.gunicorn_conf", monkeypatch)
    assert c.bind == ["127.0.0.1:8000"]
    assert c.workers == len(os.sched_getaffinity(0)) + 1
    assert c.forwarded_allow_ips == ["127.0.0.1", "::1"]


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


def test_the_master_freezes_what_start_up_allocated_before_forking_workers():
    """The workers' garbage collections must not walk (and dirty the shared pages of) the
    loaded app's objects: when_ready freezes them."""
    import gc
    from types import SimpleNamespace

    from cx_connector import gunicorn_conf

    server = SimpleNamespace(cfg=SimpleNamespace(preload_app=False), app=None)
    gc.unfreeze()
    try:
        gunicorn_conf.when_ready(server)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_no_access_line_is_built_while_gunicorn_access_is_off(monkeypatch):
    """gunicorn builds a request's access-log atoms whenever ``logconfig_dict`` is set,
    even though the shipped ``gunicorn.access`` level drops the line: the shipped logger
    class skips that work, and builds and logs the line once the level is INFO."""
    import logging
    import logging.config
    from types import SimpleNamespace

    for config in ("gunicorn.conf.py", "python:cx_connector.gunicorn_conf"):
        c = gunicorn_settings(config, monkeypatch)
        assert c.logger_class.__module__ == "cx_connector.gunicorn_conf"
    logger_class = c.logger_class
    built: list[int] = []
    monkeypatch.setattr(logger_class, "atoms", lambda self, *a: built.append(1) or {"s": "200"})
    access = logging.getLogger("gunicorn.access")
    before = access.level
    monkeypatch.setattr(logging.config, "dictConfig", lambda conf: None)  # leave the test's logging alone
    log = logger_class(c)
    req = SimpleNamespace(headers=[], method="POST", path="/webhooks/generic")
    try:
        access.setLevel(logging.WARNING)  # as shipped
        log.access(SimpleNamespace(status="200 OK"), req, {}, None)
        assert built == []
        access.setLevel(logging.INFO)
        seen: list[logging.LogRecord] = []
        monkeypatch.setattr(access, "handle", seen.append)
        log.access(SimpleNamespace(status="200 OK"), req, {}, None)
        assert built == [1] and len(seen) == 1
    finally:
        access.setLevel(before)
