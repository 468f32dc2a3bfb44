"""What an alert says: the JSON body, the Slack message and the text of a platform
task or note, rendered when the alert is sent.

Rendering at send time (not when the alert fires) means the stored delivery never
holds personal data: the name and email come from the customer row as it is then,
so a person erased in between is alerted about as ``customer #12`` at most.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from cx_connector.connector import Connector
from cx_connector.models import customers, identities
from cx_connector.wording import counted

#: what happened, per condition, after the customer's name
HEADLINES = {
    "turned_red": "turned red",
    "detractor_nps": "gave a detractor NPS answer",
    "high_value_at_risk": "high-value customer at risk of churning",
    "ticket_reopened": "ticket reopened repeatedly",
}

VALUE_LABELS = {
    "cx_clv_90d": "expected value (90 days)",
    "lifetime_revenue": "lifetime revenue",
    "cx_expected_purchases_90d": "expected purchases (90 days)",
}


@dataclass(frozen=True)
class Record:
    source: str
    title: str
    id: str
    url: str | None


@dataclass(frozen=True)
class Customer:
    id: int | None
    name: str | None = None
    email: str | None = None
    records: tuple[Record, ...] = field(default_factory=tuple)

    def who(self, personal: bool = True) -> str:
        if personal and (self.name or self.email):
            return f"{self.name or self.email} (customer #{self.id})"
        return f"customer #{self.id}" if self.id is not None else "a customer no longer on record"


@dataclass(frozen=True)
class Alert:
    """One delivery's alert, with everything needed to render it."""

    key: str
    rule: str
    condition: str
    event: str  # fired | cleared
    fired_at: datetime
    details: Mapping[str, Any]
    customer: Customer
    cleared_at: datetime | None = None


def alert_key(rule: str, customer_id: int | None, fired_at: datetime) -> str:
    """Names one alert (one episode of one rule for one customer), the same for every
    action and attempt: receivers dedupe on it, platform tasks and notes carry it."""
    return f"cx-alert:{rule}:{customer_id}:{int(fired_at.timestamp() * 1000)}"


def load_customer(conn: Connection, customer_id: int | None, connectors: Mapping[str, Connector]) -> Customer:
    """The customer as it is now, with links to its records on the enabled platforms."""
    if customer_id is None:
        return Customer(None)
    row = conn.execute(
        select(customers.c.name, customers.c.email).where(customers.c.id == customer_id)
    ).first()
    records = []
    for source, value in conn.execute(
        select(identities.c.source, identities.c.value)
        .where(
            identities.c.customer_id == customer_id, identities.c.kind == "id", identities.c.gone_at.is_(None)
        )
        .order_by(identities.c.id)
    ):
        connector = connectors.get(source)
        if connector is not None and connector.writable_record(value):
            records.append(Record(source, connector.title or source, value, connector.record_url(value)))
    return Customer(customer_id, row.name if row else None, row.email if row else None, tuple(records))


def _number(value: Any, places: int = 0) -> str:
    if value is None:
        return "n/a"
    try:
        return f"{float(value):,.{places}f}"
    except (TypeError, ValueError):
        return str(value)


def _day(iso: Any) -> str:
    return str(iso or "")[:10] or "n/a"


def facts(a: Alert) -> list[tuple[str, str]]:
    """The numbers behind the alert, as (label, value) pairs."""
    d = a.details
    if a.condition == "detractor_nps":
        scale = d.get("scale_max")
        out = [("NPS answer", f"{d.get('nps')} of 10")]
        if scale not in (None, 10, 10.0):
            out.append(("As answered", f"{_number(d.get('score'), 1)} of {_number(scale)}"))
        return [*out, ("Answered", _day(d.get("answered_at"))), ("Source", str(d.get("source")))]
    if a.condition == "ticket_reopened":
        out = [
            ("Ticket", f"{d.get('ticket_id')} ({d.get('source')})"),
            ("Reopened", _times(d.get("reopens"))),
            ("Last reopened", _day(d.get("last_reopened_at"))),
        ]
        if (d.get("tickets_matching") or 1) > 1:
            out.append(("Tickets reopened repeatedly", str(d.get("tickets_matching"))))
        return out
    out = [
        ("CX score", _number(d.get("cx_score"))),
        ("Health", str(d.get("cx_health") or "n/a")),
        ("Churn risk", str(d.get("cx_churn_risk") or "n/a")),
        ("Retention probability", f"{_number(d.get('cx_retention_probability'))}%"),
    ]
    if a.condition == "high_value_at_risk":
        measure = str(d.get("value_measure"))
        out.append((VALUE_LABELS.get(measure, measure).capitalize(), _number(d.get("value"), 2)))
    elif d.get("cx_clv_90d") is not None:
        out.append(("Expected value (90 days)", _number(d.get("cx_clv_90d"), 2)))
    return out


def summary(a: Alert, personal: bool = True) -> str:
    """One sentence saying what happened."""
    who = a.customer.who(personal)
    d = a.details
    if a.event == "cleared":
        return (
            f"{who} no longer matches alert rule {a.rule} ({HEADLINES[a.condition]}); "
            f"it fired {a.fired_at:%Y-%m-%d %H:%M} UTC."
        )
    if a.condition == "turned_red":
        return (
            f"{who} turned red: CX score {_number(d.get('cx_score'))}, churn risk "
            f"{d.get('cx_churn_risk') or 'n/a'}, retention probability "
            f"{_number(d.get('cx_retention_probability'))}%."
        )
    if a.condition == "detractor_nps":
        return (
            f"{who} answered NPS {d.get('nps')} of 10 (a detractor: {d.get('detractor_max')} or less) on "
            f"{_day(d.get('answered_at'))}, via {d.get('source')}."
        )
    if a.condition == "high_value_at_risk":
        measure = str(d.get("value_measure"))
        return (
            f"{who}, {VALUE_LABELS.get(measure, measure)} {_number(d.get('value'), 2)}, has a retention "
            f"probability of {_number(d.get('cx_retention_probability'))}%, below "
            f"{_number(d.get('retention_below'))}%."
        )
    more = (d.get("tickets_matching") or 1) - 1
    return (
        f"{who}: ticket {d.get('ticket_id')} ({d.get('source')}) was reopened {_times(d.get('reopens'))}, "
        f"last on {_day(d.get('last_reopened_at'))}"
        + (f"; {more} more of their tickets too." if more else ".")
    )


def title(a: Alert, personal: bool = True) -> str:
    head = f"{a.customer.who(personal)}: {HEADLINES[a.condition]}"
    return f"Resolved: {head}" if a.event == "cleared" else f"CX alert: {head}"


def _iso(when: datetime | None) -> str | None:
    return when.isoformat().replace("+00:00", "Z") if when else None


def json_body(a: Alert, *, personal: bool, sent_at: datetime, attempt: int) -> dict[str, Any]:
    """The ``format: json`` body (see the README's "Alerts" section)."""
    c = a.customer
    customer: dict[str, Any] = {"id": c.id}
    if personal:
        customer.update(name=c.name, email=c.email)
    customer["records"] = [{"source": r.source, "id": r.id, "url": r.url} for r in c.records]
    return {
        "type": f"alert.{a.event}",
        "id": f"{a.key}:{a.event}",
        "alert_key": a.key,
        "rule": a.rule,
        "condition": a.condition,
        "fired_at": _iso(a.fired_at),
        "cleared_at": _iso(a.cleared_at),
        "title": title(a, personal),
        "summary": summary(a, personal),
        "details": dict(a.details),
        "customer": customer,
        "sent_at": _iso(sent_at),
        "attempt": attempt,
    }


def _mrkdwn(text: str) -> str:
    """Slack's three control characters (https://api.slack.com/reference/surfaces/formatting#escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(a: Alert, *, personal: bool) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (notifications, fallback) and ``blocks``
    (https://api.slack.com/messaging/webhooks; header text at most 150 characters,
    at most 10 fields a section)."""
    head = title(a, personal)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": head[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(summary(a, personal))}},
    ]
    if a.event == "fired":
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{_mrkdwn(label)}*\n{_mrkdwn(value)}"}
                    for label, value in facts(a)[:10]
                ],
            }
        )
    links = [f"<{r.url}|{_mrkdwn(r.title)} record>" for r in a.customer.records if r.url]
    context = [f"rule `{_mrkdwn(a.rule)}`", f"fired {a.fired_at:%Y-%m-%d %H:%M} UTC", *links]
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]})
    return {"text": head, "blocks": blocks}


def record_lines(a: Alert) -> tuple[str, ...]:
    """The body of a platform task or note (plain text; the connector formats it)."""
    return (
        summary(a),
        "",
        *(f"{label}: {value}" for label, value in facts(a)),
        "",
        f"Alert rule {a.rule} ({HEADLINES[a.condition]}), fired {a.fired_at:%Y-%m-%d %H:%M} UTC.",
        f"Reference: {a.key}",
    )


def _times(n: Any) -> str:
    """"1 time", "3 times"; "repeatedly" when the details lack the count."""
    return counted(n, "time") if isinstance(n, int) else "repeatedly"

