"""Deciding which alerts fire and which clear: once per customer per rule until it clears.

Per rule, one run reads the customers the condition matches now
(:func:`cx_connector.alerts.conditions.matches`, in a read transaction, so webhooks
are not held up) and compares them with the rule's active alerts (``alert_states``
rows without ``cleared_at``), then writes, in one transaction:

* **fired**: a match without an active alert. Its ``alert_states`` row starts a new
  episode (``fired_at`` = now, ``cleared_at`` = NULL), one ``alert_deliveries`` row
  per action is queued, and an ``alert_fired`` audit entry is written. The deliveries
  are committed with the decision, so a crash before they are sent loses nothing
  (:mod:`cx_connector.alerts.deliver` sends them).
* **cleared**: an active alert whose customer no longer matches gets ``cleared_at``
  and an ``alert_cleared`` entry; with ``notify_on_clear`` the rule's webhooks are told.
  The next match fires again.
* **moved**: an active alert of a customer that was merged into another continues on
  the survivor when the survivor matches (no second alert for the same person).
* **baseline**: on a rule's first evaluation (or after its condition changed) the
  customers who already match are recorded as active without sending anything,
  unless ``notify_existing``; an ``alert_baseline`` entry each. Enabling a rule thus
  alerts about changes from then on, not about every customer who was red before.

Only the clock process runs this (the ``alerts`` job, under its lease), never a
webhook request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from cx_connector import db
from cx_connector.alerts import conditions
from cx_connector.alerts.settings import Rule
from cx_connector.models import alert_deliveries, alert_rules, alert_states, audit_log, customers

log = logging.getLogger(__name__)

ACTOR = "scheduler"


@dataclass
class RuleReport:
    rule: str
    condition: str
    matching: int = 0
    active_before: int = 0
    fired: list[int] = field(default_factory=list)
    cleared: list[int] = field(default_factory=list)
    moved: list[tuple[int, int]] = field(default_factory=list)
    baseline: list[int] = field(default_factory=list)
    deliveries: int = 0
    first_evaluation: bool = False
    #: customers of ``cleared`` that were merged into another (customer -> survivor)
    merged_into: dict[int, int] = field(default_factory=dict)

    def as_dict(self, *, ids: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule,
            "condition": self.condition,
            "matching": self.matching,
            "active_before": self.active_before,
            "fired": len(self.fired),
            "cleared": len(self.cleared),
            "moved": len(self.moved),
            "baseline": len(self.baseline),
            "deliveries_queued": self.deliveries,
        }
        if self.first_evaluation:
            out["first_evaluation"] = True
        if ids:
            out.update(
                fired_ids=self.fired,
                cleared_ids=self.cleared,
                baseline_ids=self.baseline,
                moved_ids=[list(m) for m in self.moved],
            )
        return out


def evaluate(engine: Engine, rules: list[Rule], *, now: datetime, dry_run: bool = False) -> list[RuleReport]:
    """Evaluate every rule; with ``dry_run`` only report what would fire and clear."""
    return [evaluate_rule(engine, rule, now=now, dry_run=dry_run) for rule in rules]


def evaluate_rule(engine: Engine, rule: Rule, *, now: datetime, dry_run: bool = False) -> RuleReport:
    # read and plan outside the write transaction (SQLite: webhooks wait for none of it);
    # only this job writes alert states, under its lease, so the plan stays true
    with db.read(engine) as conn:
        found = conditions.matches(conn, rule, now)
        report = _plan(conn, rule, found, now)
    if dry_run:
        return report
    with db.write(engine) as conn:
        _apply(conn, rule, report, found, now)
    if report.fired or report.cleared or report.baseline:
        log.info(
            "alerts evaluated",
            extra={
                "rule": rule.name,
                "fired": len(report.fired),
                "cleared": len(report.cleared),
                "baseline": len(report.baseline),
            },
        )
    return report


def _plan(conn: Connection, rule: Rule, found: conditions.Matches, now: datetime) -> RuleReport:
    seen = conn.execute(select(alert_rules.c.condition).where(alert_rules.c.name == rule.name)).first()
    first = seen is None or seen.condition != rule.condition
    report = RuleReport(rule.name, rule.condition, matching=len(found), first_evaluation=first)
    active = set(
        conn.execute(
            select(alert_states.c.customer_id).where(
                alert_states.c.rule == rule.name, alert_states.c.cleared_at.is_(None)
            )
        ).scalars()
    )
    report.active_before = len(active)
    new = [cid for cid in found if cid not in active]
    gone = sorted(active - set(found))
    survivors = _survivors(conn, gone)
    report.merged_into = survivors
    moved_to: set[int] = set()
    for cid in gone:
        into = survivors.get(cid)
        if into is not None and into in found and into not in active and into not in moved_to:
            report.moved.append((cid, into))
            moved_to.add(into)
        else:
            report.cleared.append(cid)
    new = sorted(c for c in new if c not in moved_to)
    if first and not rule.notify_existing:
        report.baseline = new
    else:
        report.fired = new
    return report


def _survivors(conn: Connection, ids: list[int]) -> dict[int, int]:
    """The customer each of ``ids`` was merged into (merges point straight at the survivor)."""
    out: dict[int, int] = {}
    for i in range(0, len(ids), 500):
        out.update(
            conn.execute(
                select(customers.c.id, customers.c.merged_into_id).where(
                    customers.c.id.in_(ids[i : i + 500]), customers.c.merged_into_id.is_not(None)
                )
            ).all()
        )
    return out


def _apply(
    conn: Connection, rule: Rule, report: RuleReport, found: conditions.Matches, now: datetime
) -> None:
    common = {"rule": rule.name, "condition": rule.condition}
    states: list[dict[str, Any]] = []
    audits: list[dict[str, Any]] = []
    queued: list[dict[str, Any]] = []

    def entry(action: str, cid: int, details: dict[str, Any]) -> None:
        audits.append(
            {
                "at": now,
                "actor": ACTOR,
                "action": action,
                "customer_id": cid,
                "source": None,
                "external_id": None,
                "details": {**common, **details},
            }
        )

    for cid in report.baseline:
        states.append(
            {
                "customer_id": cid,
                "rule": rule.name,
                "fired_at": now,
                "cleared_at": None,
                "details": {**found[cid], "baseline": True},
            }
        )
        entry(
            "alert_baseline",
            cid,
            {
                "details": found[cid],
                "reason": "matched when the rule was first evaluated: not sent "
                "(set notify_existing to alert about these too)",
            },
        )
    for cid in report.fired:
        states.append(
            {
                "customer_id": cid,
                "rule": rule.name,
                "fired_at": now,
                "cleared_at": None,
                "details": found[cid],
            }
        )
        queued += [_delivery(rule, cid, "fired", now, action, found[cid], now) for action in rule.actions]
        entry("alert_fired", cid, {"fired_at": now, "details": found[cid], "actions": list(rule.actions)})
    if states:
        conn.execute(
            db.upsert(conn, alert_states, ["customer_id", "rule"], ["fired_at", "cleared_at", "details"]),
            states,
        )

    old: dict[int, Any] = {}
    leaving = report.cleared + [m[0] for m in report.moved]
    for i in range(0, len(leaving), 500):
        for row in conn.execute(
            select(alert_states.c.customer_id, alert_states.c.fired_at, alert_states.c.details).where(
                alert_states.c.rule == rule.name, alert_states.c.customer_id.in_(leaving[i : i + 500])
            )
        ):
            old[row.customer_id] = row
    for cid, into in report.moved:
        conn.execute(
            db.upsert(conn, alert_states, ["customer_id", "rule"], ["fired_at", "cleared_at", "details"]),
            [
                {
                    "customer_id": into,
                    "rule": rule.name,
                    "fired_at": old[cid].fired_at,
                    "cleared_at": None,
                    "details": {**(old[cid].details or {}), "moved_from": cid},
                }
            ],
        )
        entry(
            "alert_moved",
            into,
            {
                "from_customer": cid,
                "fired_at": old[cid].fired_at,
                "reason": f"customer #{cid} was merged into #{into}: the alert continues here",
            },
        )
    webhooks = [a for a in rule.actions if a.startswith("webhook:")]
    for cid in leaving:
        conn.execute(
            update(alert_states)
            .where(alert_states.c.customer_id == cid, alert_states.c.rule == rule.name)
            .values(cleared_at=now)
        )
    for cid in report.cleared:
        state = old[cid]
        into = report.merged_into.get(cid)
        entry(
            "alert_cleared",
            cid,
            {
                "fired_at": state.fired_at,
                "reason": f"merged into customer #{into}"
                if into is not None
                else "the condition no longer holds",
            },
        )
        if rule.notify_on_clear and into is None and not (state.details or {}).get("baseline"):
            queued += [
                _delivery(rule, cid, "cleared", state.fired_at, action, state.details or {}, now)
                for action in webhooks
            ]
    for cid, into in report.moved:
        entry(
            "alert_cleared",
            cid,
            {
                "fired_at": old[cid].fired_at,
                "reason": f"merged into customer #{into}: the alert continues there",
            },
        )
    if queued:
        conn.execute(alert_deliveries.insert(), queued)
    if audits:
        conn.execute(audit_log.insert(), audits)
    report.deliveries = len(queued)
    conn.execute(
        db.upsert(
            conn,
            alert_rules,
            ["name"],
            ["condition", "first_evaluated_at", "last_evaluated_at"]
            if report.first_evaluation
            else ["last_evaluated_at"],
        ),
        [
            {
                "name": rule.name,
                "condition": rule.condition,
                "first_evaluated_at": now,
                "last_evaluated_at": now,
            }
        ],
    )


def _delivery(
    rule: Rule, cid: int, event: str, fired_at: datetime, action: str, details: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return {
        "customer_id": cid,
        "rule": rule.name,
        "condition": rule.condition,
        "event": event,
        "fired_at": fired_at,
        "action": action,
        "external_id": None,
        "details": details,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "uncertain": False,
        "claimed_at": None,
        "claimed_by": None,
        "last_error": None,
        "result": None,
        "created_at": now,
        "updated_at": now,
        "done_at": None,
    }
