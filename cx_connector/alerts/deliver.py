"""Sending alerts: claim, send, mark; retried with backoff, parked when it keeps failing.

The deliveries :mod:`cx_connector.alerts.decide` queued are sent the way the outbox
sends score writes (:mod:`cx_connector.sync`), one delivery at a time:

1. **Recover** deliveries claimed by a run that died: ``in_flight`` for longer than
   ``alerts.claim_timeout`` goes back to ``pending``, marked ``uncertain`` (it may
   have been sent), with an ``alert_delivery_recovered`` audit entry.
2. **Claim** due deliveries (commit): ``pending`` -> ``in_flight`` with ``claimed_by``
   (``FOR UPDATE SKIP LOCKED`` on PostgreSQL: two runs never claim the same one).
3. **Send**: a signed POST to the webhook (``webhook:<name>``) or
   :meth:`~cx_connector.connector.Connector.post_alert` of the platform
   (``platform:<name>``, on the customer's oldest record there that is not gone),
   each target within its rate budget (the platform's :class:`RateBudget`, the
   webhook's ``max_per_minute``). A 429 pauses the target for ``Retry-After`` and the
   same delivery is sent again (up to ``alerts.max_wait``; longer, it waits for a later
   run without counting an attempt).
4. **Mark** (commit, with the audit entry): ``done`` (``alert_delivered``); a
   retryable failure (5xx, timeout, a refused token) back to ``pending`` with
   ``next_attempt_at`` (exponential backoff with full jitter; ``alert_delivery_retry``)
   until ``alerts.max_attempts``, then ``dead`` with its reason
   (``alert_delivery_failed``); a refusal (400/422) or a URL/record that does not
   exist is ``dead`` at once; ``skipped`` when the customer has no record on the
   platform (``alert_delivery_skipped``).

Claim, send and mark are separate commits, so a crash loses nothing. It can repeat
a send whose mark was lost; a repeat is then avoided where the target allows it:
the POST carries the same ``X-CX-Alert-Id`` and JSON ``id`` on every attempt for
receivers to dedupe, and a platform connector told ``maybe_sent`` looks for the
alert's reference on the record before creating another task or note.

Webhook URLs are secrets (Slack's carry their token): they never appear in a reason,
an audit entry or a log line; a failure names the webhook by its configured name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Engine, and_, func, select, update

from cx_connector import db, leases
from cx_connector.alerts import messages
from cx_connector.alerts.settings import AlertSettings, Webhook
from cx_connector.connector import Connector, RateBudget, RecordAlert
from cx_connector.errors import (
    PlatformAPIError,
    PlatformAuthError,
    PlatformRateLimited,
    PlatformRecordGone,
    PlatformUnavailable,
    PlatformValidationError,
)
from cx_connector.http import Session
from cx_connector.models import alert_deliveries, alert_states, audit_log
from cx_connector.runtime import Runtime
from cx_connector.throttle import Clock, Limiter
from cx_connector.wording import counted

log = logging.getLogger(__name__)

ACTOR = "scheduler"
#: deliveries claimed per transaction
CLAIM_BATCH = 50
#: consecutive 429s on one delivery before it waits for a later run
MAX_RATE_LIMITED = 5
SIGNATURE_HEADER = "X-CX-Signature"
TIMESTAMP_HEADER = "X-CX-Timestamp"
ALERT_ID_HEADER = "X-CX-Alert-Id"
EVENT_HEADER = "X-CX-Event"


def sign(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The signature headers of one POST: ``X-CX-Timestamp`` (Unix seconds) and
    ``X-CX-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + raw body>``.

    The timestamp is signed too, so a receiver that refuses old timestamps also
    refuses a captured request replayed later (README, "Alerts": verifying).
    """
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: f"sha256={mac}"}


@dataclass(frozen=True)
class Outcome:
    """What one send came to: ``done``, ``retry``, ``dead``, ``skipped`` or ``release``
    (not sent, no attempt counted: the target is paused for this run)."""

    status: str
    result: str | None = None
    reason: str = ""
    retry_after: float | None = None
    #: the request may have landed even though it failed (timeout, 5xx)
    uncertain: bool = False
    external_id: str | None = None
    source: str | None = None


d = alert_deliveries.c
#: the columns that name a delivery, in :class:`Claimed`'s order
NAMING = (d.id, d.customer_id, d.rule, d.condition, d.event, d.fired_at, d.action)


def naming(row: Any) -> dict[str, Any]:
    """What every audit entry about a delivery says of it."""
    return {"delivery_id": row.id, "rule": row.rule, "condition": row.condition, "event": row.event,
            "action": row.action, "fired_at": row.fired_at}


@dataclass
class Claimed:
    id: int
    customer_id: int | None
    rule: str
    condition: str
    event: str
    fired_at: datetime
    action: str
    details: dict[str, Any]
    attempts: int
    uncertain: bool


@dataclass
class Stats:
    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    skipped: int = 0
    released: int = 0
    recovered: int = 0
    rate_limited: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def backoff(rng: random.Random, attempt: int, base: timedelta, cap: timedelta) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2^(attempt-1)))."""
    return rng.uniform(0, min(cap.total_seconds(), base.total_seconds() * 2 ** max(0, attempt - 1)))


def deliver(
    rt: Runtime, *, clock: Clock | None = None, rng: random.Random | None = None, worker: str | None = None
) -> dict[str, Any]:
    """Send every due delivery (see the module docstring); returns the run's counts."""
    return (
        Run(
            rt,
            clock=clock or Clock(rt.now()),
            rng=rng or random.Random(),
            worker=worker or leases.holder_id(),
        )
        .run()
        .as_dict()
    )


class Run:
    def __init__(self, rt: Runtime, *, clock: Clock, rng: random.Random, worker: str) -> None:
        self.rt = rt
        self.engine: Engine = rt.engine
        self.opts: AlertSettings = rt.config.alerts
        self.clock = clock
        self.rng = rng
        self.worker = worker
        self.stats = Stats()
        self.limiters: dict[str, Limiter] = {}
        #: targets (actions) not sent to again in this run: (reason, seconds until they may be)
        self.stopped: dict[str, tuple[str, float]] = {}
        timeout = self.opts.timeout.total_seconds()
        self.session = Session("alerts", "", timeout=(timeout, timeout))

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> Stats:
        self.stats.recovered = recover_expired(self.engine, self.opts.claim_timeout, now=self.clock.now())
        # never hold a claim long enough for another run to take it over
        deadline = self.clock.monotonic() + self.opts.claim_timeout.total_seconds() / 2
        last_id = 0
        while self.clock.monotonic() < deadline:
            # in id order, each delivery at most once a run (a retry waits for a later run)
            rows = claim(
                self.engine,
                self.worker,
                limit=CLAIM_BATCH,
                now=self.clock.now(),
                skip_actions=list(self.stopped),
                after_id=last_id,
            )
            if not rows:
                break
            last_id = rows[-1].id
            self.stats.claimed += len(rows)
            for row in rows:
                outcome = (
                    self.send(row)
                    if self.clock.monotonic() < deadline
                    else Outcome("release", reason="the run ended before it was sent")
                )
                self.mark(row, outcome)
        if self.stopped:
            self.stats.errors += sorted({reason for reason, _ in self.stopped.values()})
        self.session.close()
        return self.stats

    def limiter(self, action: str, budget: RateBudget) -> Limiter:
        if action not in self.limiters:
            self.limiters[action] = Limiter(budget, self.clock)
        return self.limiters[action]

    # -- sending ---------------------------------------------------------------------------

    def send(self, row: Claimed) -> Outcome:
        if row.action in self.stopped:
            reason, wait = self.stopped[row.action]
            return Outcome("release", reason=reason, retry_after=wait)
        kind, _, name = row.action.partition(":")
        if kind == "webhook":
            hook = self.opts.webhooks.get(name)
            if hook is None:
                return Outcome("dead", reason=f"webhook {name} is no longer configured under alerts.webhooks")
            target: Any = hook
            budget = RateBudget(
                "window", hook.max_per_minute, 60.0, describe=f"{hook.max_per_minute} / minute"
            )
        elif kind == "platform":
            connector = self.rt.connectors.get(name)
            if connector is None or not connector.alert_target:
                return Outcome("dead", reason=f"connector {name} is not enabled (or cannot take alerts)")
            target = connector
            budget = connector.rate_budget()
        else:
            return Outcome("dead", reason=f"unknown action {row.action}")
        throttle = self.limiter(row.action, budget)
        with db.read(self.engine) as conn:
            alert = _alert(conn, row, self.rt.connectors)
        throttled = 0
        while True:
            try:
                if isinstance(target, Webhook):
                    return self._post(target, alert, row, throttle)
                return self._post_to_platform(target, alert, row, throttle)
            except PlatformRateLimited as exc:
                throttled += 1
                self.stats.rate_limited += 1
                wait = (
                    exc.retry_after
                    if exc.retry_after is not None
                    else backoff(self.rng, throttled, self.opts.backoff_base, self.opts.backoff_max)
                )
                throttle.pause(wait)
                if throttled >= MAX_RATE_LIMITED or wait > self.opts.max_wait.total_seconds():
                    reason = f"{exc.message} (waiting {wait:.0f}s, until a later run)"
                    self.stopped[row.action] = (reason, wait)
                    return Outcome("release", reason=reason, retry_after=wait)
            except PlatformAuthError as exc:  # no use sending more with this token in this run
                self.stopped[row.action] = (exc.message, 0.0)
                return Outcome("retry", reason=exc.message)
            except (PlatformValidationError, PlatformRecordGone) as exc:
                return Outcome("dead", reason=exc.message)
            except PlatformUnavailable as exc:
                return Outcome("retry", reason=exc.message, uncertain=True)
            except PlatformAPIError as exc:
                return Outcome("retry", reason=exc.message)
            except Exception as exc:  # a bug must not lose the alert: retried, then dead
                log.exception("alert delivery %s failed", row.id)
                reason = f"internal error: {type(exc).__name__}: {exc}"
                if isinstance(target, Webhook):  # an exception's text may quote the URL
                    reason = _without_url(reason, target)
                return Outcome("retry", reason=reason)

    def _post(self, hook: Webhook, alert: messages.Alert, row: Claimed, throttle: Limiter) -> Outcome:
        now = self.clock.now()
        if hook.format == "slack":
            payload = messages.slack_body(alert, personal=hook.personal_data)
        else:
            payload = messages.json_body(
                alert, personal=hook.personal_data, sent_at=now, attempt=row.attempts + 1
            )
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode()
        headers = {
            "Content-Type": "application/json",
            ALERT_ID_HEADER: f"{alert.key}:{alert.event}",
            EVENT_HEADER: f"alert.{alert.event}",
        }
        if hook.secret:
            headers.update(sign(hook.secret, body, int(now.timestamp())))
        throttle.wait()
        try:
            resp = self.session.call("POST", hook.url, data=body, headers=headers, allow_redirects=False)
        except PlatformAPIError as exc:
            raise _webhook_error(exc, hook) from None
        return Outcome("done", result=f"HTTP {resp.status_code}")

    def _post_to_platform(
        self, connector: Connector, alert: messages.Alert, row: Claimed, throttle: Limiter
    ) -> Outcome:
        record = next((r for r in alert.customer.records if r.source == connector.name), None)
        if record is None:
            return Outcome(
                "skipped",
                reason=f"the customer has no {connector.title or connector.name} record "
                f"to put a {connector.alert_target} on",
                source=connector.name,
            )
        result = connector.post_alert(
            RecordAlert(
                key=alert.key,
                external_id=record.id,
                title=messages.title(alert),
                lines=messages.record_lines(alert),
                at=alert.fired_at,
                maybe_sent=row.uncertain,
            ),
            throttle,
        )
        return Outcome(
            "done",
            result=f"{connector.alert_target}: {result}"[:255],
            external_id=record.id,
            source=connector.name,
        )

    # -- marking ---------------------------------------------------------------------------

    def mark(self, row: Claimed, outcome: Outcome) -> None:
        now = self.clock.now()
        source = outcome.source or (
            row.action.partition(":")[2] if row.action.startswith("platform:") else None
        )
        with db.write(self.engine) as conn:
            cur = conn.execute(
                select(alert_deliveries.c.status, alert_deliveries.c.claimed_by)
                .where(alert_deliveries.c.id == row.id)
                .with_for_update()
            ).first()
            details = naming(row)
            if cur is None or cur.status != "in_flight" or cur.claimed_by != self.worker:
                # our claim expired and another run took the delivery over: its result is theirs
                _audit(
                    conn,
                    "alert_delivery_claim_lost",
                    now,
                    row,
                    source,
                    outcome.external_id,
                    {
                        **details,
                        "result": outcome.status,
                        "reason": "claim expired before the result came back",
                    },
                )
                return
            values: dict[str, Any] = {"updated_at": now, "claimed_at": None, "claimed_by": None}
            if outcome.external_id:
                values["external_id"] = outcome.external_id
            attempts = row.attempts + (0 if outcome.status in ("release", "skipped") else 1)
            values["attempts"] = attempts
            action = None
            if outcome.status == "done":
                values.update(
                    status="done", done_at=now, result=outcome.result, last_error=None, uncertain=False
                )
                action = "alert_delivered"
                details.update(attempt=attempts, result=outcome.result)
                self.stats.delivered += 1
            elif outcome.status == "skipped":
                values.update(status="skipped", done_at=now, last_error=outcome.reason)
                action = "alert_delivery_skipped"
                details.update(reason=outcome.reason)
                self.stats.skipped += 1
            elif outcome.status == "release":
                values.update(
                    status="pending",
                    last_error=outcome.reason,
                    next_attempt_at=now + timedelta(seconds=outcome.retry_after or 0),
                )
                self.stats.released += 1
            elif outcome.status == "retry" and attempts < self.opts.max_attempts:
                wait = max(
                    outcome.retry_after or 0.0,
                    backoff(self.rng, attempts, self.opts.backoff_base, self.opts.backoff_max),
                )
                values.update(
                    status="pending",
                    last_error=outcome.reason,
                    next_attempt_at=now + timedelta(seconds=wait),
                    uncertain=row.uncertain or outcome.uncertain,
                )
                action = "alert_delivery_retry"
                details.update(
                    attempt=attempts, reason=outcome.reason, next_attempt_at=values["next_attempt_at"]
                )
                self.stats.retried += 1
            else:  # dead: refused for good, or retried max_attempts times
                reason = outcome.reason or "refused"
                if outcome.status == "retry":
                    reason = f"gave up after {counted(attempts, 'attempt')}: {reason}"
                values.update(status="dead", last_error=reason, uncertain=row.uncertain or outcome.uncertain)
                action = "alert_delivery_failed"
                details.update(attempt=attempts, reason=reason)
                self.stats.dead += 1
                log.warning(
                    "alert delivery failed",
                    extra={"delivery_id": row.id, "rule": row.rule, "action": row.action, "reason": reason},
                )
            conn.execute(update(alert_deliveries).where(alert_deliveries.c.id == row.id).values(**values))
            if action:
                _audit(conn, action, now, row, source, outcome.external_id, details)


def _audit(
    conn: Connection,
    action: str,
    at: datetime,
    row: Claimed,
    source: str | None,
    external_id: str | None,
    details: dict[str, Any],
) -> None:
    conn.execute(
        audit_log.insert().values(
            at=at,
            actor=ACTOR,
            action=action,
            customer_id=row.customer_id,
            source=source,
            external_id=external_id,
            details=details,
        )
    )


def _without_url(text: str, hook: Webhook) -> str:
    for part in (hook.url, urlsplit(hook.url).path):
        if len(part) > 1:
            text = text.replace(part, f"[webhook {hook.name}]")
    return text


def _webhook_error(exc: PlatformAPIError, hook: Webhook) -> PlatformAPIError:
    """The same kind of error, with a message that names the webhook and never its URL."""
    what, status = f"webhook {hook.name}", exc.status
    body = _without_url((exc.body or "").strip(), hook)[:200]
    if status is not None and 300 <= status < 400:  # never followed: the signed body would go elsewhere
        return PlatformValidationError(
            f"{what}: HTTP {status}: the URL redirects; configure the final URL in "
            f"alerts.webhooks.{hook.name}.url",
            platform="alerts",
            status=status,
        )
    if status is None:
        cause = "timed out" if "timed out" in exc.message else "could not connect"
        message = f"{what}: no answer ({cause}); will retry"
    elif status in (401, 403):
        message = (
            f"{what}: HTTP {status}: the receiver refused the request; check "
            f"alerts.webhooks.{hook.name} (URL and secret)"
        )
    elif status in (404, 410):
        message = (
            f"{what}: HTTP {status}: the URL does not exist (any more): check "
            f"alerts.webhooks.{hook.name}.url" + (f" ({body})" if body else "")
        )
    elif status == 429:
        message = f"{what}: HTTP 429: rate limited; backing off"
    elif status >= 500 or status in (408, 425):
        message = f"{what}: HTTP {status}: receiver error; will retry"
    else:
        message = f"{what}: HTTP {status}: refused" + (f": {body}" if body else "")
    exc.message = message
    exc.args = (message,)
    exc.body = body
    return exc


def _alert(conn: Connection, row: Claimed, connectors: dict[str, Connector]) -> messages.Alert:
    cleared_at = None
    if row.event == "cleared" and row.customer_id is not None:
        cleared_at = conn.execute(
            select(alert_states.c.cleared_at).where(
                alert_states.c.customer_id == row.customer_id,
                alert_states.c.rule == row.rule,
                alert_states.c.fired_at == row.fired_at,
            )
        ).scalar()
    return messages.Alert(
        key=messages.alert_key(row.rule, row.customer_id, row.fired_at),
        rule=row.rule,
        condition=row.condition,
        event=row.event,
        fired_at=row.fired_at,
        details=row.details or {},
        customer=messages.load_customer(conn, row.customer_id, connectors),
        cleared_at=cleared_at,
    )


# --- claiming and recovery ------------------------------------------------------------------


def claim(
    engine: Engine,
    worker: str,
    *,
    limit: int,
    now: datetime,
    skip_actions: list[str] | None = None,
    after_id: int = 0,
) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries with ids above ``after_id``, oldest first
    (committed), except those of ``skip_actions`` (targets a run has stopped sending to)."""
    q = (
        select(*NAMING, d.details, d.attempts, d.uncertain)
        .where(d.status == "pending", d.next_attempt_at <= now, d.id > after_id)
        .order_by(d.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if skip_actions:
        q = q.where(d.action.not_in(skip_actions))
    with db.write(engine) as conn:
        rows = conn.execute(q).all()
        if not rows:
            return []
        conn.execute(
            update(alert_deliveries)
            .where(d.id.in_([r.id for r in rows]))
            .values(status="in_flight", claimed_at=now, claimed_by=worker, updated_at=now)
        )
    return [Claimed(*r[: len(NAMING)], dict(r.details or {}), r.attempts, bool(r.uncertain)) for r in rows]


def recover_expired(engine: Engine, timeout: timedelta, *, now: datetime) -> int:
    """Deliveries claimed longer than ``timeout`` ago (their run died) go back to pending,
    marked uncertain: they may have been sent."""
    with db.write(engine) as conn:
        rows = conn.execute(
            select(*NAMING, d.claimed_by, d.attempts)
            .where(and_(d.status == "in_flight", d.claimed_at < now - timeout))
            .with_for_update(skip_locked=True)
        ).all()
        for r in rows:
            conn.execute(
                update(alert_deliveries)
                .where(d.id == r.id)
                .values(
                    status="pending",
                    next_attempt_at=now,
                    claimed_at=None,
                    claimed_by=None,
                    uncertain=True,
                    attempts=r.attempts + 1,
                    updated_at=now,
                    last_error=f"claimed by {r.claimed_by}, which did not finish within {timeout}; "
                    "sending again (it may have been sent: receivers dedupe on the alert id)",
                )
            )
            conn.execute(
                audit_log.insert().values(
                    at=now,
                    actor=ACTOR,
                    action="alert_delivery_recovered",
                    customer_id=r.customer_id,
                    details={**naming(r), "claimed_by": r.claimed_by},
                )
            )
    return len(rows)


def counts(engine: Engine) -> dict[str, int]:
    """Deliveries per status (``retrying``: pending after a failed attempt)."""
    out: dict[str, int] = {}
    with db.read(engine) as conn:
        for status, attempts, n in conn.execute(
            select(d.status, d.attempts, func.count()).group_by(d.status, d.attempts)
        ):
            key = "retrying" if status == "pending" and attempts else status
            out[key] = out.get(key, 0) + n
    return out
