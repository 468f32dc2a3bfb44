"""Shared fixtures: a real, migrated database per test, a runtime, the app and a signer.

The database is SQLite by default (a migrated template file copied per test) and
PostgreSQL when ``CX_TEST_DATABASE_URL`` is set (migrated once, tables truncated
between tests). Nothing of our own is mocked; platform HTTP is mocked with
``responses`` in the tests that call out.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from cx_connector import db, inbox, registry
from cx_connector.app import create_app
from cx_connector.config import Config, config_from_mapping
from cx_connector.models import Base
from cx_connector.runtime import Runtime, build

FIXTURES = Path(__file__).parent / "fixtures"
PG_URL = os.environ.get("CX_TEST_DATABASE_URL")

#: a fixed "now" for tests that need a stable clock
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)

#: settings that enable every built-in connector in tests
TEST_CONNECTORS: dict[str, dict[str, Any]] = {
    "generic": {"secret": "generic-test-secret-0123456789"},
    "hubspot": {"client_secret": "hubspot-test-secret", "access_token": "hubspot-test-token",
                "webhook_url": "https://cx.example.com/webhooks/hubspot",
                "api_base_url": "https://api.hubapi.test"},
    "zendesk": {"subdomain": "acme", "email": "admin@acme.test", "api_token": "zendesk-test-token",
                "webhook_secret": "zendesk-test-secret", "api_base_url": "https://acme.zendesk.test"},
    "shopify": {"shop": "acme.myshopify.com", "access_token": "shpat_test_token",
                "client_secret": "shopify-test-secret", "api_base_url": "https://acme.myshopify.test"},
}


def fixture_bytes(*parts: str) -> bytes:
    return FIXTURES.joinpath(*parts).read_bytes()


def fixture_json(*parts: str) -> Any:
    return json.loads(fixture_bytes(*parts))



@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A command run in-process (CliRunner: the demo, `score`) configures the root logger
    as the real process would: its level (the demo's is ERROR) and a stderr handler. Put
    both back, or a later test's caplog misses the warnings it checks for."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    alembic = logging.getLogger("alembic").level
    yield
    root.setLevel(level)
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    logging.getLogger("alembic").setLevel(alembic)

@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    if PG_URL:
        engine = db.make_engine(PG_URL)
        with engine.begin() as conn:  # start clean: drop whatever an earlier run left
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        db.upgrade(engine)
        engine.dispose()
        return PG_URL
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    engine.dispose()
    return str(path)


@pytest.fixture
def database_url(_template_db: str, tmp_path: Path) -> Iterator[str]:
    if PG_URL:
        yield PG_URL
        engine = db.make_engine(PG_URL)
        names = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        engine.dispose()
        return
    path = tmp_path / "cx.db"
    shutil.copy(_template_db, path)
    yield f"sqlite:///{path}"


def make_config(database_url: str, **overrides: Any) -> Config:
    raw: dict[str, Any] = {
        "database_url": database_url,
        "admin_token": "test-admin-token-0123456789",
        "connectors": {k: dict(v) for k, v in TEST_CONNECTORS.items()
                       if k in registry.available()},
        "logging": {"level": "WARNING"},
    }
    for key, value in overrides.items():
        raw[key] = value
    return config_from_mapping(raw, env={})


@pytest.fixture
def config(database_url: str) -> Config:
    return make_config(database_url)


@pytest.fixture
def rt(config: Config) -> Iterator[Runtime]:
    runtime = build(config, clock=lambda: NOW)
    yield runtime
    runtime.engine.dispose()


@pytest.fixture
def engine(rt: Runtime) -> Engine:
    return rt.engine


@pytest.fixture
def app(rt: Runtime) -> Any:
    return create_app(rt=rt, configure_logging=False)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def post_signed(client: Any, rt: Runtime) -> Callable[..., Any]:
    """POST ``body`` to /webhooks/<source>, signed by the connector's own ``sign``.

    Signature *verification* has independent known-answer tests per connector;
    this helper is for tests about what happens after a valid signature.
    """

    def post(source: str, body: bytes | str | Any, headers: dict[str, str] | None = None) -> Any:
        if not isinstance(body, bytes | str):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        connector = rt.connectors[source]
        h = dict(headers or {})
        url = f"http://localhost/webhooks/{source}"
        h.update(connector.sign(body, h, method="POST", url=url, now=rt.now()))
        h.setdefault("Content-Type", "application/json")
        return client.post(f"/webhooks/{source}", data=body, headers=h)

    post.rt = rt  # type: ignore[attr-defined]  # for settle() in helpers that get only this
    return post


def count(engine: Engine, table: str, where: str = "") -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table} {where}")).scalar_one()


def plans_of(engine: Engine, call: Callable[[], Any]) -> list[tuple[str, str]]:
    """``(statement, plan)`` of every SELECT ``call()`` runs through SQLAlchemy on ``engine``.

    SQLite: ``EXPLAIN QUERY PLAN``. PostgreSQL: ``EXPLAIN`` with sequential scans off, so
    that the plan names the index a query can use even on a test's few rows (a real
    outbox has 100,000 of them).
    """
    seen: list[tuple[str, Any]] = []

    def remember(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", remember)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", remember)
    out = []
    with engine.connect() as conn:
        sqlite = db.is_sqlite(engine)
        cur = conn.connection.dbapi_connection.cursor()
        if not sqlite:
            cur.execute("SET LOCAL enable_seqscan = off")
            cur.execute("SET LOCAL enable_bitmapscan = off")
        for statement, parameters in seen:
            cur.execute(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + statement, parameters)
            out.append((statement, " / ".join(str(row[-1]) for row in cur.fetchall())))
        cur.close()
        conn.rollback()
    return out


def settle(rt: Runtime, answer: dict[str, Any]) -> dict[str, Any]:
    """A webhook's answer as the clock leaves it. A delivery answered ``queued`` (a privacy
    request) stays queued, nothing applied, until the clock's ``privacy`` job runs: run it,
    and return the delivery's status and error after that (``answered``: ``queued``)."""
    if answer.get("status") != "queued":
        return answer
    with rt.engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM deliveries WHERE id = :i"),
                            {"i": answer["delivery_id"]}).scalar_one() == "queued"
    inbox.privacy_job(rt)
    with rt.engine.connect() as conn:
        status, error = conn.execute(text("SELECT status, error FROM deliveries WHERE id = :i"),
                                     {"i": answer["delivery_id"]}).one()
    out = {**answer, "status": status, "answered": "queued"}
    out.pop("error", None)
    return {**out, "error": error} if error is not None else out
