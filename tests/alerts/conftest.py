"""A runtime with alert rules, customers with chosen scores, and the webhooks' secrets."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from cx_connector import db, registry
from cx_connector.models import alert_deliveries, alert_states, audit_log, scores
from cx_connector.runtime import Runtime, build
from tests.conftest import NOW, TEST_CONNECTORS, make_config
from tests.scoring.shop import add, cid, tp

HOOK_URL = "https://hooks.example.test/cx/alerts-7f3a9c"
SLACK_URL = "https://hooks.slack.test/services/T0001/B0002/slackPathToken123"
SECRET = "alert-signing-secret-0123456789"

WEBHOOKS = {"ops": {"url": HOOK_URL, "secret": SECRET}, "slack": {"url": SLACK_URL, "format": "slack"}}


def alerts_section(rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"webhooks": WEBHOOKS, "rules": rules, **extra}


def make_rt(
    database_url: str, rules: dict[str, Any], connectors: dict[str, Any] | None = None, **extra: Any
) -> Runtime:
    """A runtime whose ``alerts`` section has these rules (``extra``: other alerts keys);
    ``connectors``: settings replacing those of the test connectors."""
    sections = {k: dict(v) for k, v in TEST_CONNECTORS.items() if k in registry.available()}
    sections.update(connectors or {})
    config = make_config(database_url, alerts=alerts_section(rules, **extra), connectors=sections)
    return build(config, clock=lambda: NOW)


@pytest.fixture
def make(database_url: str) -> Iterator[Any]:
    made: list[Runtime] = []

    def factory(rules: dict[str, Any], connectors: dict[str, Any] | None = None, **extra: Any) -> Runtime:
        rt = make_rt(database_url, rules, connectors, **extra)
        made.append(rt)
        return rt

    yield factory
    for rt in made:
        rt.engine.dispose()


def at(rt: Runtime, when: datetime) -> None:
    """Move the runtime's clock."""
    rt.clock = lambda: when


def later(rt: Runtime, **delta: float) -> datetime:
    when = rt.now() + timedelta(**delta)
    at(rt, when)
    return when


def customer(rt: Runtime, who: str, source: str = "crm") -> int:
    """A customer known on ``source`` as ``who`` (a contact_created touchpoint)."""
    add(rt, tp("contact_created", who, NOW - timedelta(days=100), source=source))
    return cid(rt, who, source)


def set_scores(rt: Runtime, customer_id: int, **values: Any) -> None:
    row = {
        "customer_id": customer_id,
        "scored_at": rt.now(),
        "explanation": {},
        "score_values": {
            "cx_score": 50,
            "cx_health": "yellow",
            "cx_churn_risk": "medium",
            "cx_retention_probability": 50,
            "cx_clv_90d": 100.0,
            **values,
        },
    }
    with db.write(rt.engine) as conn:
        conn.execute(
            db.upsert(conn, scores, ["customer_id"], ["scored_at", "score_values", "explanation"]), [row]
        )


def states(rt: Runtime) -> list[dict[str, Any]]:
    with db.read(rt.engine) as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(alert_states).order_by(alert_states.c.rule, alert_states.c.customer_id)
            ).mappings()
        ]


def deliveries(rt: Runtime) -> list[dict[str, Any]]:
    with db.read(rt.engine) as conn:
        return [
            dict(r) for r in conn.execute(select(alert_deliveries).order_by(alert_deliveries.c.id)).mappings()
        ]


def audits(rt: Runtime, prefix: str = "alert") -> list[dict[str, Any]]:
    with db.read(rt.engine) as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(audit_log).where(audit_log.c.action.like(f"{prefix}%")).order_by(audit_log.c.id)
            ).mappings()
        ]
