"""Test data for write-back: platform records with pending score writes, and a fake clock."""

from __future__ import annotations

import json
import random
from datetime import datetime
from typing import Any

from sqlalchemy import select

from cx_connector import db, outbox, sync
from cx_connector.connector import CustomerRef
from cx_connector.identity import resolve
from cx_connector.models import outbox as outbox_t
from cx_connector.models import written_values
from cx_connector.throttle import FakeClock
from tests.conftest import NOW

VALUES = {"cx_score": 87, "cx_health": "green"}


def seed(rt: Any, source: str, ids: list[str], values: dict[str, Any] | None = None,
         now: datetime = NOW) -> dict[str, int]:
    """Customers with one record each on ``source`` and a pending write of ``values``."""
    with db.write(rt.engine) as conn:
        cids = resolve(conn, source, [(CustomerRef(i), now) for i in ids], now=now)
        for i in ids:
            outbox.enqueue(conn, rt.connectors, cids[i], values or VALUES, now=now)
    return cids


def run(rt: Any, clock: FakeClock | None = None, **kw: Any) -> dict[str, Any]:
    clock = clock or FakeClock(NOW)
    return sync.sync(rt, clock=clock, rng=random.Random(7), worker="test-worker", **kw)


def rows(engine: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(outbox_t).order_by(outbox_t.c.id)).mappings()]


def written(engine: Any) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    with engine.connect() as conn:
        for r in conn.execute(select(written_values)).mappings():
            out.setdefault((r["source"], r["external_id"]), {})[r["field"]] = r["value"]
    return out


def body(call: Any) -> Any:
    return json.loads(call.request.body)
