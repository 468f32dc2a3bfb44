"""Privacy requests: erase or export one person's data (GDPR; Shopify's mandatory
compliance topics; platform deletions such as HubSpot ``contact.deletion``).

Connectors ask for it with :class:`~cx_connector.connector.Forget`,
:class:`~cx_connector.connector.ForgetAll` and :class:`~cx_connector.connector.Export`
actions, carried out by :func:`apply`: not in the webhook (an erasure searches every
stored body, past the webhook's deadline in a large inbox) but by the clock's
``privacy`` job within a minute (:func:`cx_connector.inbox.privacy_job`; Shopify allows
30 days); ``cx-connector forget`` and ``cx-connector export`` act at once.

**The person** is every customer reached from the request: the platform record
(``source`` + ``source_id``), the email, the phone or our customer id, followed to
the surviving customer of any merge, plus the customers merged into it (merged-away
rows keep their old profile, so they are part of the person).

**Erasure** (:func:`forget`) removes personal data and keeps anonymous aggregates:

* customers: ``email``, ``phone``, ``name`` and ``profile_times`` cleared, ``redacted_at``
  set; the rows stay, so their touchpoints still count in KPIs;
* identities: every email, phone and live platform-id identity deleted (a later
  event from such a record starts a new, unlinked customer: the person still exists
  there, e.g. after ``cx-connector forget``). Ids of records the platform no longer
  holds are kept as tombstones (``gone_at`` set), on the redacted customer: the record
  a connector's :class:`~cx_connector.connector.Forget` names (HubSpot
  ``contact.deletion``, Shopify ``customers/redact``), dated by the deletion, and any
  id already gone (merged away, deleted). A fact about a tombstoned record that arrives
  after the erasure (it happened before: platforms deliver out of order and retry for
  hours) is filed under the anonymous customer without contact details
  (:mod:`cx_connector.identity`) and erased at once like the others
  (:func:`forget_late`), so it brings nothing back; the platform restoring the record
  (:class:`~cx_connector.connector.Restore`) lifts the tombstone;
* touchpoints: kind, stage, channel, time, value, currency, products, rating and
  scores are kept; personal fields in ``attributes`` are removed (keys naming an
  email, phone, name, address, note, message, ...) and the person's email, phone and
  name are replaced by ``[redacted]`` anywhere else in them. ``touchpoint_id`` and
  ``customer_source_id`` keep the platform's record ids: they are what makes a
  redelivery of an erased fact a no-op instead of a re-import;
* raw deliveries: body set to NULL, headers emptied, ``redacted_at`` set, for every
  delivery that carried one of their touchpoints *and* every stored delivery
  (failed and ignored ones included) whose body mentions one of their email
  addresses or, within the same source, one of their record ids (whole token,
  6+ characters: shorter ids are too ambiguous to match in free JSON);
* write-back: their outbox rows and ``written_values`` deleted;
* alerts: their alert deliveries deleted (nothing more is sent about them);
* score explanations and alert details: the same value scrub as attributes;
* one ``privacy_forget`` audit entry with counts and ids, never the personal data.

**ForgetAll** (:func:`forget_all`, Shopify ``shop/redact``) deletes everything that
came from the source: its touchpoints, record identities, catalogue, outbox,
written values and backfill state, and empties its raw deliveries (an error message is
replaced by a note that it was erased); customers left
with nothing from another source are then erased as above and lose their scores.
Customers still known to another platform keep their email/phone identities.

**Export** (:func:`export`) writes one JSON file (mode 0600) with everything held
about the person (profile, identities, touchpoints, scores and history, alerts,
write-back rows, audit entries, raw deliveries) into ``privacy.export_dir``, and
audit-logs its file name. The admin hands it over (Shopify: to the store owner).
For a connector's request the directory comes from the engine's ``cx_export_dir`` execution
option, set by :func:`cx_connector.runtime.build` from the configuration.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Text, case, cast, delete, func, or_, select, tuple_, update

from cx_connector import audit, identity
from cx_connector.connector import CustomerRef, Export, Forget, ForgetAll, Restore
from cx_connector.db import json_dumps
from cx_connector.models import (
    alert_deliveries,
    alert_states,
    audit_log,
    backfill_state,
    customers,
    deliveries,
    identities,
    outbox,
    products,
    score_snapshots,
    scores,
    touchpoints,
    written_values,
)
from cx_connector.touchpoint import normalise_email, normalise_phone

#: engine execution option carrying ``privacy.export_dir`` into webhook transactions
EXPORT_DIR_OPTION = "cx_export_dir"
DEFAULT_EXPORT_DIR = "exports"
REDACTED = "[redacted]"
#: record ids shorter than this are not searched for in raw bodies (too ambiguous)
MIN_ID_TOKEN = 6

#: words in an attribute key that mark its value as personal data
PERSONAL_KEY_WORDS = frozenset({
    "email", "mail", "phone", "mobile", "fax", "name", "firstname", "lastname", "fullname",
    "address", "address1", "address2", "street", "zip", "postcode", "postal", "city",
    "birthday", "birthdate", "dob", "ip", "note", "notes", "comment", "body", "message",
    "subject", "description", "text", "signature", "ssn",
})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_PHONE_RUN = re.compile(r"\+?\d[\d\s().-]{5,}\d")
_CHUNK = 400


# --- who a request is about ---------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a request names: a platform record, an email, a phone or our customer id."""

    source: str | None = None
    source_id: str | None = None
    email: str | None = None
    phone: str | None = None
    customer_id: int | None = None

    def describe(self) -> dict[str, Any]:
        """For the audit log: which kinds of key were given, never an email or phone."""
        out: dict[str, Any] = {}
        if self.source and self.source_id:
            out["record"] = f"{self.source}:{self.source_id}"
        if self.customer_id is not None:
            out["customer_id"] = self.customer_id
        if self.email:
            out["by_email"] = True
        if self.phone:
            out["by_phone"] = True
        return out


def target_from_ref(ref: str) -> Target:
    """What an admin types: a customer id, an email, ``SOURCE:ID`` or a phone number."""
    ref = ref.strip()
    if ref.isdigit():
        return Target(customer_id=int(ref))
    if "@" in ref:
        return Target(email=normalise_email(ref) or ref.lower())
    source, sep, value = ref.partition(":")
    if sep and re.match(r"^[a-z][a-z0-9_]{0,31}$", source) and value:
        return Target(source=source, source_id=value)
    return Target(phone=normalise_phone(ref) or ref)


@dataclass
class Person:
    """Everything that identifies one person in the database."""

    survivors: set[int] = field(default_factory=set)
    #: survivors and the customers merged into them
    rows: set[int] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    #: (source, record id) of their platform records
    records: set[tuple[str, str]] = field(default_factory=set)


def _chunks(values: Iterable[Any]) -> Iterable[list[Any]]:
    items = list(values)
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def find(conn: Connection, target: Target) -> Person:
    """The customers a request is about, and every identifying value they hold."""
    keys: list[identity.Key] = []
    if target.source and target.source_id:
        keys.append(("id", target.source, target.source_id))
    email = normalise_email(target.email)
    if email:
        keys.append(("email", "", email))
    phone = normalise_phone(target.phone)
    if phone:
        keys.append(("phone", "", phone))
    found = set(identity.lookup(conn, keys).values()) if keys else set()
    if target.customer_id is not None:
        found |= set(conn.execute(select(customers.c.id).where(
            customers.c.id == target.customer_id)).scalars())
    person = Person()
    for cid in found:  # follow merges to the surviving customer
        seen: set[int] = set()
        while cid not in seen:
            seen.add(cid)
            nxt = conn.execute(select(customers.c.merged_into_id).where(customers.c.id == cid)).scalar()
            if nxt is None:
                break
            cid = nxt
        person.survivors.add(cid)
    person.rows = set(person.survivors)
    frontier = set(person.survivors)
    while frontier:  # customers merged into them (merge() keeps this one level, but be sure)
        merged = set(conn.execute(select(customers.c.id).where(
            customers.c.merged_into_id.in_(frontier))).scalars()) - person.rows
        person.rows |= merged
        frontier = merged
    if email:
        person.emails.add(email)
    if phone:
        person.phones.add(phone)
    if target.source and target.source_id:
        person.records.add((target.source, target.source_id))
    for chunk in _chunks(person.rows):
        for kind, source, value in conn.execute(select(
                identities.c.kind, identities.c.source, identities.c.value).where(
                identities.c.customer_id.in_(chunk))):
            {"email": person.emails, "phone": person.phones}.get(kind, set()).add(value)
            if kind == "id":
                person.records.add((source, value))
        for row in conn.execute(select(customers.c.email, customers.c.phone, customers.c.name)
                                .where(customers.c.id.in_(chunk))):
            if row.email:
                person.emails.add(row.email.lower())
            if row.phone:
                person.phones.add(row.phone)
            if row.name:
                person.names.add(row.name)
    return person


# --- scrubbing values -------------------------------------------------------------------------


def personal_key(key: str) -> bool:
    """Whether an attribute key names personal data (``contact_email``, ``firstName``, ...)."""
    words = re.split(r"[^a-z0-9]+", _CAMEL.sub("_", key).lower())
    return any(w in PERSONAL_KEY_WORDS for w in words) or "".join(words) in PERSONAL_KEY_WORDS


class Scrubber:
    """Replaces one person's email, phone and name inside free text and JSON values."""

    def __init__(self, person: Person) -> None:
        self.phones = set(person.phones)
        patterns = [re.escape(e) for e in sorted(person.emails, key=len, reverse=True) if e]
        words: set[str] = set()
        for name in person.names:  # the full name, and its parts long enough not to be noise
            if len(name) >= 2:
                words.add(name)
            words |= {part for part in re.split(r"\s+", name) if len(part) >= 3}
        patterns += [rf"\b{re.escape(w)}\b" for w in sorted(words, key=len, reverse=True)]
        self.pattern = re.compile("|".join(patterns), re.IGNORECASE) if patterns else None

    def text(self, value: str) -> str:
        if self.pattern is not None:
            value = self.pattern.sub(REDACTED, value)
        if self.phones:
            value = _PHONE_RUN.sub(lambda m: REDACTED if self._phone(m.group(0)) else m.group(0), value)
        return value

    def _phone(self, text: str) -> bool:
        """The same number, with or without its country code (``+1 555...`` vs ``555...``)."""
        found = (normalise_phone(text) or "").lstrip("+")
        for phone in self.phones:
            known = phone.lstrip("+")
            short, long = sorted((found, known), key=len)
            if len(short) >= 7 and long.endswith(short):
                return True
        return False

    def json(self, value: Any, *, drop_personal_keys: bool = False) -> Any:
        if isinstance(value, dict):
            return {k: self.json(v, drop_personal_keys=drop_personal_keys) for k, v in value.items()
                    if not (drop_personal_keys and personal_key(str(k)))}
        if isinstance(value, list):
            return [self.json(v, drop_personal_keys=drop_personal_keys) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value


# --- raw deliveries -----------------------------------------------------------------------------


def _body_text(conn: Connection) -> Any:
    """SQL text of the raw body, for a LIKE prefilter (bytea/BLOB are not text)."""
    if conn.dialect.name == "postgresql":
        return func.encode(deliveries.c.body, "escape")
    return cast(deliveries.c.body, Text)


def _like(value: str) -> str:
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _id_token(value: str) -> str | None:
    token = value.rsplit(":", 1)[-1]
    return token if len(token) >= MIN_ID_TOKEN else None


def mentioning_deliveries(conn: Connection, person: Person) -> set[int]:
    """Stored deliveries whose raw body names one of the person's emails or record ids."""
    emails = sorted(e for e in person.emails if e)
    tokens: dict[str, set[str]] = {}
    for source, value in person.records:
        token = _id_token(value)
        if token:
            tokens.setdefault(source, set()).add(token)
    body = _body_text(conn)
    conds = [body.ilike(_like(e), escape="\\") for e in emails]
    conds += [(deliveries.c.source == source) & body.like(_like(t), escape="\\")
              for source, ts in tokens.items() for t in ts]
    if not conds:
        return set()
    token_res = {source: [re.compile(rf"(?<![0-9A-Za-z]){re.escape(t)}(?![0-9A-Za-z])") for t in ts]
                 for source, ts in tokens.items()}
    found = set()
    for chunk in [conds[i:i + 50] for i in range(0, len(conds), 50)]:
        rows = conn.execute(select(deliveries.c.id, deliveries.c.source, deliveries.c.body).where(
            deliveries.c.body.is_not(None), or_(*chunk)))
        for did, source, raw in rows:
            text = bytes(raw).decode("utf-8", "replace")
            lowered = text.lower()
            if any(e in lowered for e in emails) or any(r.search(text) for r in token_res.get(source, [])):
                found.add(did)
    return found


def touchpoint_deliveries(conn: Connection, customer_ids: Iterable[int]) -> set[int]:
    out: set[int] = set()
    for chunk in _chunks(customer_ids):
        out |= {d for d in conn.execute(select(touchpoints.c.delivery_id).distinct().where(
            touchpoints.c.customer_id.in_(chunk), touchpoints.c.delivery_id.is_not(None))).scalars()}
    return out


# --- erasure ----------------------------------------------------------------------------------


@dataclass
class Erasure:
    """What an erasure did (counts and ids only: this goes to the audit log and the CLI)."""

    customers: list[int] = field(default_factory=list)
    identities: int = 0
    touchpoints: int = 0
    deliveries: int = 0
    writes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"customers": self.customers, "identities": self.identities,
                "touchpoints": self.touchpoints, "deliveries": self.deliveries, "writes": self.writes}


def plan(conn: Connection, target: Target) -> tuple[Person, set[int], int]:
    """The person, the deliveries an erasure would empty, and their touchpoint count."""
    person = find(conn, target)
    dids = touchpoint_deliveries(conn, person.rows) | mentioning_deliveries(conn, person)
    n = 0
    for chunk in _chunks(person.rows):
        n += conn.execute(select(func.count()).select_from(touchpoints).where(
            touchpoints.c.customer_id.in_(chunk))).scalar_one()
    return person, dids, n


def _redact_deliveries(conn: Connection, ids: Iterable[int], scrub: Scrubber | None,
                       now: datetime) -> int:
    """Empty the raw body and headers of these deliveries (those not emptied already)."""
    n = 0
    for chunk in _chunks(sorted(ids)):
        rows = conn.execute(select(deliveries.c.id, deliveries.c.error).where(
            deliveries.c.id.in_(chunk), deliveries.c.redacted_at.is_(None))).all()
        for did, error in rows:
            if error is not None:
                error = scrub.text(error) if scrub is not None else None
            conn.execute(update(deliveries).where(deliveries.c.id == did).values(
                body=None, headers={}, redacted_at=now, error=error))
        n += len(rows)
    return n


def _erase_people(conn: Connection, person: Person, scrub: Scrubber, now: datetime,
                  result: Erasure) -> None:
    """Clear profiles, identities, attributes, write-back rows of ``person.rows``."""
    rows = sorted(person.rows)
    for chunk in _chunks(rows):
        for tid, attrs in conn.execute(select(touchpoints.c.id, touchpoints.c.attributes).where(
                touchpoints.c.customer_id.in_(chunk))).all():
            result.touchpoints += 1
            clean = scrub.json(attrs or {}, drop_personal_keys=True)
            if clean != (attrs or {}):
                conn.execute(update(touchpoints).where(touchpoints.c.id == tid).values(attributes=clean))
        for table, column in ((scores, "explanation"), (alert_states, "details")):
            key = [c for c in table.primary_key.columns]
            for row in conn.execute(select(*key, table.c[column]).where(
                    table.c.customer_id.in_(chunk))).mappings().all():
                clean = scrub.json(row[column] or {})
                if clean != (row[column] or {}):
                    conn.execute(update(table).where(*(c == row[c.name] for c in key))
                                 .values({column: clean}))
        result.writes += conn.execute(delete(outbox).where(outbox.c.customer_id.in_(chunk))).rowcount
        conn.execute(delete(alert_deliveries).where(alert_deliveries.c.customer_id.in_(chunk)))
        result.identities += conn.execute(delete(identities).where(  # tombstones stay
            identities.c.customer_id.in_(chunk),
            ~((identities.c.kind == "id") & identities.c.gone_at.is_not(None)))).rowcount
        conn.execute(update(customers).where(customers.c.id.in_(chunk)).values(
            email=None, phone=None, name=None, profile_times={}, redacted_at=now, updated_at=now))
    for chunk in _chunks(sorted(person.records)):
        cond = tuple_(outbox.c.source, outbox.c.external_id).in_(chunk)
        result.writes += conn.execute(delete(outbox).where(cond)).rowcount
        conn.execute(delete(written_values).where(
            tuple_(written_values.c.source, written_values.c.external_id).in_(chunk)))
    for chunk in _chunks(sorted(person.survivors)):
        conn.execute(update(customers).where(customers.c.id.in_(chunk)).values(changed_at=now))
    result.customers = rows


def forget(conn: Connection, target: Target, *, now: datetime, actor: str, reason: str = "",
           deleted_at: datetime | None = None) -> Erasure:
    """Erase one person's personal data, keeping anonymous aggregates (module docstring).

    ``deleted_at``: the platform deleted the target record then; its id is kept as a
    tombstone dated by it (created if the record was never seen). When the platform
    already said it restored the record later (delivered out of order), the tombstone
    is lifted at once.
    """
    record = (target.source, target.source_id) if target.source and target.source_id else None
    if deleted_at is not None and record is not None:
        found = find(conn, target).survivors
        identity.bury(conn, *record, at=deleted_at, now=now, actor=actor,
                      customer_id=min(found) if found else None)
    result = _erase(conn, target, now=now, actor=actor, reason=reason)
    if deleted_at is not None and record is not None:
        restored = identity.restored_after(conn, *record, deleted_at)
        if restored is not None:
            identity.restore_record(conn, Restore(*record, occurred_at=restored), now=now, actor=actor)
    return result


def _erase(conn: Connection, target: Target, *, now: datetime, actor: str, reason: str,
           late: Iterable[CustomerRef] = (), delivery_id: int | None = None) -> Erasure:
    """The erasure itself. ``late``: contact details of a late fact that were never stored
    (scrubbed wherever else the fact put them); ``delivery_id``: its delivery, emptied
    without searching every stored body again (the first erasure did that)."""
    late = list(late)
    if late or delivery_id is not None:
        person = find(conn, target)
        dids = touchpoint_deliveries(conn, person.rows) | ({delivery_id} if delivery_id else set())
    else:
        person, dids, _ = plan(conn, target)
    for ref in late:
        person.emails |= {ref.email} if ref.email else set()
        person.phones |= {ref.phone} if ref.phone else set()
        person.names |= {ref.name} if ref.name else set()
    scrub = Scrubber(person)
    result = Erasure()
    result.deliveries = _redact_deliveries(conn, dids, scrub, now)
    _erase_people(conn, person, scrub, now, result)
    audit.record(conn, actor=actor, action="privacy_forget", at=now,
                 customer_id=min(person.survivors) if person.survivors else None,
                 source=target.source, external_id=target.source_id,
                 details={"reason": reason, "request": target.describe(), **result.as_dict()})
    return result


def forget_late(conn: Connection, source: str, erased: dict[str, list[CustomerRef]], *,
                delivery_id: int | None, now: datetime, actor: str) -> None:
    """Facts about erased records arrived after the erasure (:mod:`cx_connector.identity`
    filed them anonymously): erase what they brought, as if they had come before it:
    personal attributes of their touchpoints, the raw delivery, and whatever a late link
    or merge joined to the erased person. Once per person."""
    people: dict[frozenset[int], tuple[str, list[CustomerRef]]] = {}
    for source_id, refs in erased.items():
        survivors = frozenset(find(conn, Target(source=source, source_id=source_id)).survivors)
        people.setdefault(survivors, (source_id, []))[1].extend(refs)
    for source_id, refs in people.values():
        _erase(conn, Target(source=source, source_id=source_id), now=now, actor=actor,
               reason="a fact about an erased record arrived after the erasure", late=refs,
               delivery_id=delivery_id)


def _erased_error(source: str, reason: str) -> str:
    """What a failed or ignored delivery says once :func:`forget_all` emptied it."""
    return (f"its body and error message were erased with everything from {source}"
            + (f" ({reason})" if reason else "") + ": the delivery was kept, not processed again")


def forget_all(conn: Connection, source: str, *, now: datetime, actor: str,
               reason: str = "") -> dict[str, int]:
    """Erase everything that came from ``source`` (module docstring)."""
    affected = set(conn.execute(select(touchpoints.c.customer_id).distinct().where(
        touchpoints.c.source == source, touchpoints.c.customer_id.is_not(None))).scalars())
    affected |= set(conn.execute(select(identities.c.customer_id).distinct().where(
        identities.c.kind == "id", identities.c.source == source)).scalars())
    counts = {
        "touchpoints": conn.execute(delete(touchpoints).where(touchpoints.c.source == source)).rowcount,
        "identities": conn.execute(delete(identities).where(
            identities.c.kind == "id", identities.c.source == source)).rowcount,
        # an error message may quote the payload, so it goes too, but a failed or ignored
        # delivery keeps a reason: without one it would look lost
        "deliveries": conn.execute(update(deliveries).where(
            deliveries.c.source == source, deliveries.c.redacted_at.is_(None)).values(
            body=None, headers={}, redacted_at=now,
            error=case((deliveries.c.error.is_(None), None), else_=_erased_error(source, reason))
        )).rowcount,
        "products": conn.execute(delete(products).where(products.c.source == source)).rowcount,
        "writes": conn.execute(delete(outbox).where(outbox.c.source == source)).rowcount,
    }
    conn.execute(delete(written_values).where(written_values.c.source == source))
    conn.execute(delete(backfill_state).where(backfill_state.c.source == source))
    erased, kept = [], []
    for cid in sorted(affected):
        other_ids = conn.execute(select(func.count()).select_from(identities).where(
            identities.c.customer_id == cid, identities.c.kind == "id")).scalar_one()
        other_tps = conn.execute(select(func.count()).select_from(touchpoints).where(
            touchpoints.c.customer_id == cid)).scalar_one()
        (kept if other_ids or other_tps else erased).append(cid)
    for cid in erased:
        person = find(conn, Target(customer_id=cid))
        _erase_people(conn, person, Scrubber(person), now, Erasure())
        for table in (scores, score_snapshots, alert_states):
            conn.execute(delete(table).where(table.c.customer_id.in_(sorted(person.rows))))
    identity.mark_changed(conn, kept, now)
    counts.update(customers_erased=len(erased), customers_kept=len(kept))
    audit.record(conn, actor=actor, action="privacy_forget_all", at=now, source=source,
                 details={"reason": reason, **counts})
    return counts


# --- export -----------------------------------------------------------------------------------


def _rows(conn: Connection, query: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(query).mappings()]


def collect(conn: Connection, target: Target, *, now: datetime) -> dict[str, Any]:
    """Everything held about the person, as one JSON-ready document."""
    person = find(conn, target)
    rows = sorted(person.rows)
    people = []
    for cid in sorted(person.survivors):
        group = sorted({cid} | set(conn.execute(select(customers.c.id).where(
            customers.c.merged_into_id == cid)).scalars()))
        records = [(s, v) for s, v in person.records]
        profile = _rows(conn, select(customers).where(customers.c.id.in_(group)).order_by(customers.c.id))
        writes_cond = outbox.c.customer_id.in_(group)
        if records:
            writes_cond = or_(writes_cond, tuple_(outbox.c.source, outbox.c.external_id).in_(records))
        people.append({
            "customer_id": cid,
            "profile": next((p for p in profile if p["id"] == cid), {}),
            "merged_records": [p for p in profile if p["id"] != cid],
            "identities": _rows(conn, select(identities.c.kind, identities.c.source, identities.c.value,
                                             identities.c.created_at, identities.c.gone_at)
                                .where(identities.c.customer_id.in_(group)).order_by(identities.c.id)),
            "touchpoints": _rows(conn, select(touchpoints).where(touchpoints.c.customer_id.in_(group))
                                 .order_by(touchpoints.c.occurred_at, touchpoints.c.id)),
            "scores": _rows(conn, select(scores).where(scores.c.customer_id.in_(group))),
            "score_history": _rows(conn, select(score_snapshots).where(
                score_snapshots.c.customer_id.in_(group)).order_by(score_snapshots.c.scored_at)),
            "alerts": _rows(conn, select(alert_states).where(alert_states.c.customer_id.in_(group))),
            "alert_deliveries": _rows(conn, select(alert_deliveries).where(
                alert_deliveries.c.customer_id.in_(group)).order_by(alert_deliveries.c.id)),
            "write_back": _rows(conn, select(outbox).where(writes_cond).order_by(outbox.c.id)),
            "written_values": _rows(conn, select(written_values).where(tuple_(
                written_values.c.source, written_values.c.external_id).in_(records))) if records else [],
            "audit_log": _rows(conn, select(audit_log).where(audit_log.c.customer_id.in_(group))
                               .order_by(audit_log.c.id)),
        })
    dids = touchpoint_deliveries(conn, rows) | mentioning_deliveries(conn, person)
    raw = []
    for chunk in _chunks(sorted(dids)):
        for r in conn.execute(select(deliveries).where(deliveries.c.id.in_(chunk))
                              .order_by(deliveries.c.id)).mappings():
            item = {k: r[k] for k in ("id", "source", "topic", "received_at", "status", "headers")}
            item["body"] = None if r["body"] is None else bytes(r["body"]).decode("utf-8", "replace")
            raw.append(item)
    return {
        "format": "cx-connector personal data export, version 1",
        "generated_at": now,
        "request": target.describe() | ({"email": target.email} if target.email else {}),
        "customers": people,
        "raw_deliveries": raw,
        "note": ("Everything cx-connector holds about this person. Raw deliveries are the "
                 "webhook bodies exactly as received."),
    }


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:64] or "x"


def _create(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only; FileExistsError rather than overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def render(document: dict[str, Any]) -> str:
    return json.dumps(json.loads(json_dumps(document)), indent=2, ensure_ascii=False) + "\n"


def write_file(directory: Path, stem: str, document: dict[str, Any]) -> Path:
    """Write ``document`` as a new ``<stem>[-n].json`` in ``directory``; never overwrite one."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = render(document)
    for n in range(1000):
        path = directory / (f"{stem}.json" if n == 0 else f"{stem}-{n}.json")
        try:
            _create(path, text)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"too many exports named {stem} in {directory}")


def export(conn: Connection, target: Target, *, now: datetime, actor: str, export_dir: str | Path,
           request_id: str | None = None, output: Path | None = None) -> tuple[Path | None, dict]:
    """Write the export file (``output``, else a new file in ``export_dir``); returns
    ``(path, document)``. ``output`` of ``-`` writes nothing (the caller prints it)."""
    document = collect(conn, target, now=now)
    if request_id:
        document["request"]["request_id"] = request_id
    stem = "-".join([f"export-{now:%Y%m%dT%H%M%SZ}",
                     _safe(target.source or "manual"),
                     _safe(f"request-{request_id}" if request_id else
                           f"customer-{min(c['customer_id'] for c in document['customers'])}"
                           if document["customers"] else "no-match")])
    if output is not None and str(output) == "-":
        path = None
    elif output is not None:
        path = Path(output)
        _create(path, render(document))
    else:
        path = write_file(Path(export_dir), stem, document)
    audit.record(conn, actor=actor, action="privacy_export", at=now,
                 customer_id=document["customers"][0]["customer_id"] if document["customers"] else None,
                 source=target.source, external_id=target.source_id,
                 details={"file": path.name if path else "(stdout)", "request_id": request_id,
                          "request": target.describe(),
                          "customers": [c["customer_id"] for c in document["customers"]],
                          "touchpoints": sum(len(c["touchpoints"]) for c in document["customers"]),
                          "deliveries": len(document["raw_deliveries"])})
    return path, document


# --- actions from connectors ------------------------------------------------------------------


def apply(conn: Connection, action: Forget | ForgetAll | Export, *, now: datetime, actor: str) -> None:
    """Carry out a connector's privacy action (the clock's ``privacy`` job, or a replay), in
    the transaction that marks its delivery done."""
    if isinstance(action, ForgetAll):
        forget_all(conn, action.source, now=now, actor=actor, reason=action.reason)
    elif isinstance(action, Forget):
        forget(conn, Target(source=action.source if action.source_id else None,
                            source_id=action.source_id, email=action.email),
               now=now, actor=actor, reason=action.reason,
               deleted_at=(action.occurred_at or now) if action.source_id else None)
    elif isinstance(action, Export):
        directory = conn.get_execution_options().get(EXPORT_DIR_OPTION, DEFAULT_EXPORT_DIR)
        export(conn, Target(source=action.source, source_id=action.source_id, email=action.email),
               now=now, actor=actor, export_dir=directory, request_id=action.request_id)
    else:
        raise TypeError(f"not a privacy action: {type(action).__name__}")
