"""The enrichment job: look up platform ids that were seen without contact details.

HubSpot and Zendesk webhooks carry record ids but rarely an email, and a HubSpot
deal, ticket or chat thread names no contact at all. Webhook handling never calls a
platform (it must answer within seconds and must not depend on the platform's
API), so this job does it afterwards, from the scheduler (every
``schedule.enrich_every``) and from ``cx-connector enrich``:

1. find identities (``kind='id'``) of connectors that can look records up
   (``lookup_batch_size > 0``) that were never looked up and still need details:
   the customer has no email, or the id is a secondary record (``deal:123``, one
   the connector does not write scores to). Ids whose customer still has no email are
   looked up again after :data:`RETRY_AFTER` (a contact gets an email, a deal gets
   its contact). Forgotten (redacted) customers are never looked up again;
2. call :meth:`Connector.lookup` in batches of the connector's size;
3. apply each found :class:`~cx_connector.connector.Link` (which links, and merges,
   customers), mark missing ids ``gone_at`` (never written to again), set
   ``enriched_at``, and commit: every batch done stays done;
4. on a rate limit or outage stop cleanly and report what is left; the next run
   carries on. Any other platform error (a refused token) stops that connector and
   fails the run, after the other connectors had their turn.

Each connector's report says why it stopped early: ``stopped`` in words, ``stopped_by``
as ``time_budget``, ``rate_limited``, ``unavailable`` or ``failed`` (``None`` when every
candidate was looked up), so that the command line can tell a clean run from one a
platform cut short (:data:`PLATFORM_STOPS`).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, or_, select, update

from cx_connector import db, identity
from cx_connector.connector import Connector
from cx_connector.errors import PlatformAPIError, PlatformRateLimited, PlatformUnavailable
from cx_connector.models import customers, identities
from cx_connector.runtime import Runtime

log = logging.getLogger(__name__)

#: ids still without an email are looked up again after this long
RETRY_AFTER = timedelta(days=1)
#: a run stops starting new batches after this long (the job's lease lasts 5 minutes)
TIME_BUDGET = timedelta(minutes=4)
#: the stops where the platform, not this service, cut the run short
PLATFORM_STOPS = ("rate_limited", "unavailable", "failed")


def enrich(rt: Runtime, *, source: str | None = None, limit: int | None = None,
           budget: timedelta = TIME_BUDGET) -> dict[str, Any]:
    """Run one enrichment pass; returns a report per connector (see module docstring).

    ``limit`` caps how many ids each connector looks up in this run.
    """
    chosen = [rt.connector(source)] if source else [rt.connectors[n] for n in sorted(rt.connectors)]
    deadline = time.monotonic() + budget.total_seconds()
    report: dict[str, Any] = {}
    failures: list[PlatformAPIError] = []
    for connector in chosen:
        if not can_look_up(connector):
            continue
        result, failure = _enrich_source(rt, connector, limit=limit, deadline=deadline)
        report[connector.name] = result
        if failure is not None:
            failures.append(failure)
    if failures:
        log.error("enrichment stopped", extra={"report": report})
        raise failures[0]
    return report


def can_look_up(connector: Connector | type[Connector]) -> bool:
    """Whether a connector (instance or class) can look records up on its platform."""
    return connector.lookup_batch_size > 0


def candidates(rt: Runtime, connector: Connector, now: datetime) -> list[tuple[int, str]]:
    """``(identity id, external id)`` still needing a lookup, never-looked-up first."""
    retry_before = now - RETRY_AFTER
    secondary = identities.c.value.contains(":")
    q = (select(identities.c.id, identities.c.value, customers.c.email)
         .join(customers, customers.c.id == identities.c.customer_id)
         .where(identities.c.kind == "id", identities.c.source == connector.name,
                identities.c.gone_at.is_(None), customers.c.redacted_at.is_(None),
                or_(and_(identities.c.enriched_at.is_(None),
                         or_(customers.c.email.is_(None), secondary)),
                    and_(identities.c.enriched_at < retry_before, customers.c.email.is_(None))))
         .order_by(case((identities.c.enriched_at.is_(None), 0), else_=1), identities.c.id))
    with db.read(rt.engine) as conn:
        rows = conn.execute(q).all()
    return [(row.id, row.value) for row in rows
            if row.email is None or not connector.writable_record(row.value)]


def _enrich_source(rt: Runtime, connector: Connector, *, limit: int | None,
                   deadline: float) -> tuple[dict[str, Any], PlatformAPIError | None]:
    now = rt.now()
    everything = candidates(rt, connector, now)
    todo = everything if limit is None else everything[:max(0, limit)]
    result: dict[str, Any] = {"candidates": len(everything), "looked_up": 0, "linked": 0, "gone": 0,
                              "left": len(everything), "stopped": None, "stopped_by": None}
    failure = None
    size = connector.lookup_batch_size
    for start in range(0, len(todo), size):
        if time.monotonic() > deadline:
            result["stopped"] = "time budget used up; the next run continues"
            result["stopped_by"] = "time_budget"
            break
        batch = todo[start:start + size]
        try:
            found = connector.lookup([value for _, value in batch], now=now)
        except PlatformRateLimited as exc:
            result["stopped"] = f"rate limited: {exc.message}"
            result["stopped_by"] = "rate_limited"
            result["retry_after"] = exc.retry_after
            break
        except PlatformUnavailable as exc:
            result["stopped"] = f"platform unavailable: {exc.message}"
            result["stopped_by"] = "unavailable"
            break
        except PlatformAPIError as exc:
            result["stopped"] = f"failed: {exc.message}"
            result["stopped_by"] = "failed"
            failure = exc
            break
        with db.write(rt.engine) as conn:
            for link in found.found:
                if link.source != connector.name:
                    raise ValueError(f"{connector.name}.lookup returned a link for {link.source}")
                identity.apply_link(conn, link, now=now, actor="enrich")
            if found.missing:
                conn.execute(update(identities).where(
                    identities.c.kind == "id", identities.c.source == connector.name,
                    identities.c.value.in_(list(found.missing)),
                    identities.c.gone_at.is_(None)).values(gone_at=now))
            conn.execute(update(identities).where(identities.c.id.in_([i for i, _ in batch]))
                         .values(enriched_at=now))
        result["looked_up"] += len(batch)
        result["linked"] += len(found.found)
        result["gone"] += len(found.missing)
        result["left"] -= len(batch)
    log.info("enrichment", extra={"source": connector.name, **result})
    return result, failure
