"""What the admin sees of alerts: active (and past) alerts with the state of each of
their deliveries, failed deliveries with their reasons, and re-queueing dead ones.

Used by ``cx-connector alerts`` and meant for the admin pages as well.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select, tuple_, update

from cx_connector import audit, db
from cx_connector.alerts.deliver import NAMING
from cx_connector.alerts.deliver import counts as delivery_counts
from cx_connector.models import alert_deliveries, alert_states

d = alert_deliveries.c
s = alert_states.c

_DELIVERY_COLUMNS = (*NAMING, d.external_id, d.status, d.attempts, d.next_attempt_at, d.uncertain,
                     d.last_error, d.result, d.created_at, d.updated_at, d.done_at)


def list_alerts(
    engine: Engine,
    *,
    include_cleared: bool = False,
    rule: str | None = None,
    customer_id: int | None = None,
    limit: int = 100,
    configured: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Alerts, newest first: active ones (and cleared ones with ``include_cleared``),
    each with ``deliveries`` (its actions' status, attempts and last error).

    ``configured``: the rule names in the configuration; an alert of another rule is
    flagged ``rule_configured: false`` (it stays until it clears or is acted on).
    """
    q = (
        select(s.customer_id, s.rule, s.fired_at, s.cleared_at, s.details)
        .order_by(s.fired_at.desc(), s.customer_id)
        .limit(limit)
    )
    if not include_cleared:
        q = q.where(s.cleared_at.is_(None))
    if rule:
        q = q.where(s.rule == rule)
    if customer_id is not None:
        q = q.where(s.customer_id == customer_id)
    names = set(configured) if configured is not None else None
    with db.read(engine) as conn:
        alerts = [dict(r) for r in conn.execute(q).mappings()]
        keys = [(a["customer_id"], a["rule"]) for a in alerts]
        by_alert: dict[tuple[int, str, Any], list[dict[str, Any]]] = {}
        for i in range(0, len(keys), 200):
            for row in conn.execute(
                select(*_DELIVERY_COLUMNS)
                .where(tuple_(d.customer_id, d.rule).in_(keys[i : i + 200]))
                .order_by(d.id)
            ).mappings():
                by_alert.setdefault((row["customer_id"], row["rule"], row["fired_at"]), []).append(dict(row))
    for a in alerts:
        details = dict(a["details"] or {})
        a["baseline"] = bool(details.pop("baseline", False))
        a["details"] = details
        a["status"] = "active" if a["cleared_at"] is None else "cleared"
        a["deliveries"] = by_alert.get((a["customer_id"], a["rule"], a["fired_at"]), [])
        if names is not None:
            a["rule_configured"] = a["rule"] in names
    return alerts


def list_deliveries(
    engine: Engine, *, statuses: Iterable[str] = ("pending", "in_flight", "dead"), limit: int = 100
) -> list[dict[str, Any]]:
    """Deliveries in these statuses, oldest first (default: the unfinished and the failed)."""
    with db.read(engine) as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(*_DELIVERY_COLUMNS).where(d.status.in_(list(statuses))).order_by(d.id).limit(limit)
            ).mappings()
        ]


def summary(engine: Engine) -> dict[str, Any]:
    """Active alerts per rule and deliveries per status."""
    with db.read(engine) as conn:
        active = dict(
            conn.execute(select(s.rule, func.count()).where(s.cleared_at.is_(None)).group_by(s.rule)).all()
        )
    return {"active": {k: int(v) for k, v in sorted(active.items())}, "deliveries": delivery_counts(engine)}


def requeue_dead(
    engine: Engine, *, now: datetime, ids: Iterable[int] | None = None, actor: str = "cli"
) -> list[int]:
    """Send dead deliveries again (after fixing their cause); returns their ids."""
    q = select(d.id, d.customer_id, d.rule, d.action, d.last_error).where(d.status == "dead").order_by(d.id)
    if ids is not None:
        q = q.where(d.id.in_(list(ids)))
    out = []
    with db.write(engine) as conn:
        for row in conn.execute(q).all():
            conn.execute(
                update(alert_deliveries)
                .where(d.id == row.id)
                .values(status="pending", attempts=0, next_attempt_at=now, updated_at=now, done_at=None)
            )
            audit.record(
                conn,
                actor=actor,
                action="alert_delivery_requeued",
                at=now,
                customer_id=row.customer_id,
                details={
                    "delivery_id": row.id,
                    "rule": row.rule,
                    "action": row.action,
                    "last_error": row.last_error,
                },
            )
            out.append(row.id)
    return out
