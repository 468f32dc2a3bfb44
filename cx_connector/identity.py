"""Identity resolution: one customer across every platform.

A customer is reached through identities: a platform record id (``kind='id'``,
``source`` = the platform), a normalised email or a normalised phone number (no
source: an address is the same person whichever system typed it). When a new
fact connects identities that belong to two customers, the customers are merged:
the older one survives, the other is kept with ``merged_into_id`` pointing at it
(history stays), everything that referenced it is repointed, and the merge is in
the audit log.

Runs inside the webhook's transaction, so it only touches the database; lookups
on the platforms' APIs happen in the enrichment job, never here.

**Erased records.** A platform record whose person was erased keeps its id identity
as a tombstone on the redacted customer (``gone_at`` set: see
:func:`cx_connector.privacy.forget`). A fact about it that arrives late (it happened
before the deletion; platforms deliver out of order and retry for hours) is filed
under that anonymous customer without its contact details: no email, phone or name
is stored and nothing is linked or merged through them, so late events never bring
an erased person back (:attr:`Resolution.erased` tells the caller, which anonymises
the rest). A platform that restores the record (:func:`restore_record`) lifts the
tombstone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, select, update

from cx_connector import audit
from cx_connector.connector import ContactDetails, CustomerRef, Gone, Link, Merge, Restore
from cx_connector.db import loaded_json, raw_rows, stored_json, stored_time
from cx_connector.models import (
    alert_states,
    audit_log,
    customers,
    identities,
    outbox,
    scores,
    touchpoints,
)

Key = tuple[str, str, str]  # (kind, source, value)
PROFILE_FIELDS = ("email", "phone", "name")


def keys_for(source: str, ref: CustomerRef) -> list[Key]:
    keys: list[Key] = [("id", source, ref.source_id)]
    if ref.email:
        keys.append(("email", "", ref.email))
    if ref.phone:
        keys.append(("phone", "", ref.phone))
    return keys


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _lookup(conn: Connection, keys: Iterable[Key]) -> tuple[dict[Key, int], set[Key]]:
    """Customer id per known key, and the keys whose customer was erased (redacted): one
    indexed ``value IN (...)`` query (the unique index leads with ``value``), exact
    ``(kind, source, value)`` matches kept.

    Here and in the other statements every webhook runs (creating a customer, attaching
    identities, profiles, :func:`mark_changed`), the DBAPI cursor is used directly
    (:func:`cx_connector.db.raw_rows`): SQLAlchemy's per-statement overhead was most of
    the request's time."""
    wanted = set(keys)
    values = sorted({v for _, _, v in wanted})
    found: dict[Key, int] = {}
    erased: set[Key] = set()
    for i in range(0, len(values), 500):
        chunk = values[i:i + 500]
        for kind, source, value, cid, redacted_at in raw_rows(conn, (
                "SELECT i.kind, i.source, i.value, i.customer_id, c.redacted_at FROM identities i "
                f"JOIN customers c ON c.id = i.customer_id WHERE i.value IN ({_marks(len(chunk))})"),
                chunk):
            if (kind, source, value) in wanted:
                found[(kind, source, value)] = cid
                if redacted_at is not None:
                    erased.add((kind, source, value))
    return found, erased


def lookup(conn: Connection, keys: Iterable[Key]) -> dict[Key, int]:
    """Customer id per known key (see :func:`_lookup`)."""
    return _lookup(conn, keys)[0]


def customer_for(conn: Connection, source: str, source_id: str) -> int | None:
    return lookup(conn, [("id", source, source_id)]).get(("id", source, source_id))


@dataclass
class Resolution:
    """What :func:`resolve` did beyond returning the owners, for callers that ask."""

    #: source ids whose customer was created, merged, given an identity it did not have,
    #: or a new email, phone or name (the same value from a newer fact is no change)
    changed: set[str] = field(default_factory=set)
    #: source ids of erased records (module docstring): filed under their anonymous
    #: customer, their email, phone and name dropped (kept here, only so the caller can
    #: scrub them from anything else the fact carries)
    erased: dict[str, list[CustomerRef]] = field(default_factory=dict)


def resolve(conn: Connection, source: str, refs: Iterable[tuple[CustomerRef, datetime]], *,
            now: datetime, actor: str = "webhook", into: Resolution | None = None) -> dict[str, int]:
    """Customer id for every ``ref.source_id``, creating, linking and merging as needed.

    ``refs`` pairs each reference with the time of the fact it came from; profile
    fields (email, phone, name) are taken from the newest fact that carries them.
    ``into``, when given, is filled with what changed (:class:`Resolution`).
    """
    report = into if into is not None else Resolution()
    groups: dict[str, list[tuple[CustomerRef, datetime]]] = {}
    for ref, at in refs:
        groups.setdefault(ref.source_id, []).append((ref, at))
    known, erased = _lookup(conn, [k for group in groups.values() for ref, _ in group
                                   for k in keys_for(source, ref)])
    for source_id, group in groups.items():
        if ("id", source, source_id) in erased:  # a late fact about an erased record
            report.erased.setdefault(source_id, []).extend(ref for ref, _ in group)
            groups[source_id] = [(CustomerRef(source_id=source_id), at) for _, at in group]
    result: dict[str, int] = {}
    created: dict[int, dict] = {}  # new customers and the profile they were created with
    merged_away: dict[int, int] = {}
    for source_id, group in groups.items():
        keys = list(dict.fromkeys(k for ref, _ in group for k in keys_for(source, ref)))
        found = {known[k] for k in keys if k in known}
        if len(found) != 1:  # a new customer, or a merge
            report.changed.add(source_id)
        if not found:
            profile = _empty_profile()
            _apply_profile(profile, group)
            cid = _create(conn, now, profile)
            created[cid] = profile
        elif len(found) == 1:
            cid = found.pop()
        else:
            cid = merge(conn, found, now=now, actor=actor,
                        reason=f"{source} record {source_id} links them")
        missing = [k for k in keys if k not in known]
        if missing:  # keys the customer did not have
            report.changed.add(source_id)
            before = cid
            cid = _attach(conn, cid, missing, now=now, actor=actor)
            found.add(before)
        merged_away.update({old: cid for old in found if old != cid})
        for k, v in list(known.items()):  # keys of customers merged away now mean cid
            if v in merged_away:
                known[k] = cid
        for k in keys:
            known[k] = cid
        result[source_id] = cid
    if merged_away:  # an earlier ref's customer may have been merged by a later one
        for sid, cid in result.items():
            seen = set()
            while cid in merged_away and cid not in seen:
                seen.add(cid)
                cid = merged_away[cid]
            result[sid] = cid
    _update_profiles(conn, groups, result, created, report.changed)
    return result


def _empty_profile() -> dict:
    return {"email": None, "phone": None, "name": None, "profile_times": {}}


def _create(conn: Connection, now: datetime, profile: dict | None = None) -> int:
    """A new customer (with the profile of the facts that created it: no second statement)."""
    profile = profile or _empty_profile()
    at = stored_time(conn, now)
    return raw_rows(conn, (
        "INSERT INTO customers (created_at, updated_at, changed_at, email, phone, name, profile_times) "
        "VALUES (?, ?, ?, ?, ?, ?, ?j) RETURNING id"),
        (at, at, at, profile["email"], profile["phone"], profile["name"],
         stored_json(profile["profile_times"])))[0][0]


def _attach(conn: Connection, cid: int, keys: list[Key], *, now: datetime, actor: str) -> int:
    """Add identities to a customer; if another transaction took one first, merge with it."""
    if not keys:
        return cid
    at = stored_time(conn, now)
    inserted = 0
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        inserted += len(raw_rows(conn, (
            "INSERT INTO identities (customer_id, kind, source, value, created_at) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
            + " ON CONFLICT (value, kind, source) DO NOTHING RETURNING kind, source, value"),
            [p for k, s, v in chunk for p in (cid, k, s, v, at)]))
    if inserted == len(keys):
        return cid
    owners = set(lookup(conn, keys).values())  # someone else claimed a key meanwhile
    if owners - {cid}:
        cid = merge(conn, owners | {cid}, now=now, actor=actor,
                    reason="identity claimed concurrently")
    return cid


def _apply_profile(row: dict, group: list[tuple[CustomerRef, datetime]]) -> dict:
    """Apply the facts' profile fields to ``row`` (newest fact wins); returns the changes."""
    times = dict(row["profile_times"] or {})
    changes = {}
    for ref, at in group:
        stamp = at.isoformat()
        for f in PROFILE_FIELDS:
            value = getattr(ref, f)
            if not value:
                continue
            have, when = row[f], times.get(f)
            # newest fact wins; equal times are broken by value, so arrival order never matters
            newer = have is None or when is None or (stamp, value) > (when, have)
            if newer and (have != value or when != stamp):
                row[f] = changes[f] = value
                times[f] = stamp
    if changes:
        row["profile_times"] = times
    return changes


def _update_profiles(conn: Connection, groups: dict[str, list[tuple[CustomerRef, datetime]]],
                     owners: dict[str, int], created: dict[int, dict], changed: set[str]) -> None:
    """Per profile field, keep the value of the newest fact that carries it; the source ids
    that brought a new value are added to ``changed``."""
    wanted = {owners[sid] for sid, group in groups.items()
              if any(getattr(ref, f) for ref, _ in group for f in PROFILE_FIELDS)}
    if not wanted:
        return
    current: dict[int, dict] = {cid: created[cid] for cid in wanted if cid in created}
    old = sorted(wanted - set(created))
    for i in range(0, len(old), 500):
        chunk = old[i:i + 500]
        for cid, email, phone, name, times in raw_rows(conn, (
                "SELECT id, email, phone, name, profile_times FROM customers "
                f"WHERE id IN ({_marks(len(chunk))})"), chunk):
            current[cid] = {"email": email, "phone": phone, "name": name,
                            "profile_times": loaded_json(times) or {}}
    for sid, group in groups.items():
        cid = owners[sid]
        row = current.get(cid)
        if row is None:
            continue
        before = {f: row[f] for f in PROFILE_FIELDS}
        changes = _apply_profile(row, group)
        if any(before[f] != v for f, v in changes.items()):
            changed.add(sid)
        if changes:
            sets = ", ".join(f"{f} = ?" for f in changes)
            raw_rows(conn, f"UPDATE customers SET {sets}, profile_times = ?j WHERE id = ?",
                     (*changes.values(), stored_json(row["profile_times"]), cid))


def merge(conn: Connection, customer_ids: Iterable[int], *, now: datetime, actor: str,
          reason: str) -> int:
    """Merge customers into the oldest; returns the survivor's id."""
    ids = sorted(set(customer_ids))
    survivor, others = ids[0], ids[1:]
    if not others:
        return survivor
    conn.execute(update(identities).where(identities.c.customer_id.in_(others))
                 .values(customer_id=survivor))
    conn.execute(update(touchpoints).where(touchpoints.c.customer_id.in_(others))
                 .values(customer_id=survivor))
    conn.execute(update(outbox).where(outbox.c.customer_id.in_(others))
                 .values(customer_id=survivor))
    conn.execute(scores.delete().where(scores.c.customer_id.in_(others)))
    conn.execute(alert_states.delete().where(alert_states.c.customer_id.in_(others)))
    conn.execute(update(customers).where(customers.c.merged_into_id.in_(others))
                 .values(merged_into_id=survivor))
    rows = conn.execute(select(customers).where(customers.c.id.in_(ids))).mappings().all()
    by_id = {r["id"]: r for r in rows}
    # the survivor keeps, per profile field, the newest value any of them had
    times = dict(by_id[survivor]["profile_times"] or {})
    values = {f: by_id[survivor][f] for f in PROFILE_FIELDS}
    for oid in others:
        other = by_id.get(oid)
        if other is None:
            continue
        for f in PROFILE_FIELDS:
            t = (other["profile_times"] or {}).get(f)
            if other[f] is not None and (values[f] is None or (t or "") > (times.get(f) or "")):
                values[f], times[f] = other[f], t
    conn.execute(update(customers).where(customers.c.id.in_(others))
                 .values(merged_into_id=survivor, changed_at=None, updated_at=now))
    conn.execute(update(customers).where(customers.c.id == survivor)
                 .values(**values, profile_times=times, changed_at=now, updated_at=now))
    audit.record(conn, actor=actor, action="customers_merged", at=now, customer_id=survivor,
                 details={"survivor": survivor, "merged": others, "reason": reason})
    return survivor


def apply_merge(conn: Connection, action: Merge, *, now: datetime, actor: str = "webhook",
                report: Resolution | None = None) -> int | None:
    """A platform merged records (e.g. HubSpot ``contact.merge``): repoint their identities.

    The merged-away ids are marked gone (no write-back goes to them again); the
    surviving id is linked to the merged customer. Erased records among them are added
    to ``report`` (a merge older than the deletion, delivered late: the caller erases
    what it brought).
    """
    into: Key = ("id", action.source, action.into_id)
    old: list[Key] = [("id", action.source, i) for i in action.merged_ids if i != action.into_id]
    known, erased = _lookup(conn, [into, *old])
    if report is not None:
        for _, _, value in erased:
            report.erased.setdefault(value, [])
    owners = set(known.values())
    if not owners:
        cid = _create(conn, now)
    else:
        cid = merge(conn, owners, now=now, actor=actor,
                    reason=f"{action.source} merged {', '.join(action.merged_ids)} into {action.into_id}")
    cid = _attach(conn, cid, [k for k in (into, *old) if k not in known], now=now, actor=actor)
    if old:
        conn.execute(update(identities).where(
            identities.c.kind == "id", identities.c.source == action.source,
            identities.c.value.in_([v for _, _, v in old])).values(gone_at=now))
    if into not in erased:  # the survivor is live, unless it is an erased record's tombstone
        conn.execute(update(identities).where(
            identities.c.kind == "id", identities.c.source == action.source,
            identities.c.value == action.into_id).values(gone_at=None))
    conn.execute(update(customers).where(customers.c.id == cid).values(changed_at=now))
    audit.record(conn, actor=actor, action="platform_merge", at=now, customer_id=cid,
                 source=action.source, external_id=action.into_id,
                 details={"merged_ids": list(action.merged_ids)})
    return cid


def apply_contact_details(conn: Connection, action: ContactDetails, *, now: datetime,
                          actor: str = "webhook", into: Resolution | None = None) -> bool:
    """A record's contact details as of ``action.at`` (see :class:`ContactDetails`): linked
    and dated like a touchpoint's customer, nothing marked for rescoring (merging or
    creating a customer does that itself). Returns whether anything changed; erased
    records are added to ``into``."""
    report = Resolution()
    resolve(conn, action.source, [(action.customer, action.at)], now=now, actor=actor, into=report)
    if into is not None:
        for sid, refs in report.erased.items():
            into.erased.setdefault(sid, []).extend(refs)
    return bool(report.changed)


def apply_link(conn: Connection, action: Link, *, now: datetime, actor: str = "webhook",
               into: Resolution | None = None) -> int:
    """``source/source_id`` belongs to the person described by ``action.customer``. Erased
    records on either side are added to ``into`` (the caller erases what the link brought)."""
    cid = resolve(conn, action.source, [(action.customer, now)], now=now, actor=actor, into=into)[
        action.customer.source_id]
    key: Key = ("id", action.source, action.source_id)
    found, erased = _lookup(conn, [key])
    owner = found.get(key)
    if into is not None and (erased or action.customer.source_id in into.erased):
        into.erased.setdefault(action.source_id, [])
    if owner is None:
        cid = _attach(conn, cid, [key], now=now, actor=actor)
    elif owner != cid:
        cid = merge(conn, {owner, cid}, now=now, actor=actor,
                    reason=f"{action.source} {action.source_id} belongs to {action.customer.source_id}")
    return cid


def mark_changed(conn: Connection, customer_ids: Iterable[int], now: datetime) -> None:
    """Flag customers for rescoring (scoring picks up changed_at > scored_at)."""
    ids = sorted(set(customer_ids))
    at = stored_time(conn, now)
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        raw_rows(conn, "UPDATE customers SET changed_at = ?, updated_at = ? "
                       f"WHERE id IN ({_marks(len(chunk))})", (at, at, *chunk))


def find_customer(conn: Connection, ref: str) -> int | None:
    """A customer id from what an admin types: an id, an email, a phone, or ``source:id``."""
    ref = ref.strip()
    cid = None
    if ref.isdigit():
        cid = conn.execute(select(customers.c.id).where(customers.c.id == int(ref))).scalar()
    if cid is None and "@" in ref:
        cid = lookup(conn, [("email", "", ref.lower())]).get(("email", "", ref.lower()))
    if cid is None and ":" in ref:
        source, _, value = ref.partition(":")
        cid = customer_for(conn, source, value)
    if cid is None:
        from cx_connector.touchpoint import normalise_phone
        phone = normalise_phone(ref)
        if phone:
            cid = lookup(conn, [("phone", "", phone)]).get(("phone", "", phone))
    # follow merges to the surviving customer
    seen = set()
    while cid is not None and cid not in seen:
        seen.add(cid)
        nxt = conn.execute(select(customers.c.merged_into_id).where(customers.c.id == cid)).scalar()
        if nxt is None:
            break
        cid = nxt
    return cid


def mark_gone(conn: Connection, action: Gone, *, now: datetime, actor: str = "webhook") -> int:
    """The platform deleted ``source/source_id``: keep the identity (and its history) but
    never write to it again. An unknown record is kept as a gone tombstone, so a
    creation delivered after the deletion leaves it gone (delivery order does not matter).
    """
    key: Key = ("id", action.source, action.source_id)
    cid = lookup(conn, [key]).get(key)
    if cid is None:
        cid = _attach(conn, _create(conn, now), [key], now=now, actor=actor)
    marked = conn.execute(update(identities).where(
        identities.c.kind == "id", identities.c.source == action.source,
        identities.c.value == action.source_id, identities.c.gone_at.is_(None)).values(gone_at=now))
    if marked.rowcount:
        # a write still waiting for the record would only fail: drop it
        conn.execute(outbox.delete().where(outbox.c.source == action.source,
                                           outbox.c.external_id == action.source_id,
                                           outbox.c.status == "pending"))
        audit.record(conn, actor=actor, action="record_gone", at=now, customer_id=cid,
                     source=action.source, external_id=action.source_id)
    return cid


def bury(conn: Connection, source: str, source_id: str, *, at: datetime, now: datetime,
         actor: str, customer_id: int | None = None) -> int:
    """Keep ``source/source_id`` as the tombstone of an erased record, gone since ``at`` (the
    platform's deletion time; a later deletion moves it forward). A record never seen goes
    to ``customer_id`` (the person the erasure found otherwise, e.g. by email), else to an
    anonymous customer of its own, so that its facts arriving afterwards are filed there,
    not under a new customer with their contact details. Returns the customer id; the
    caller (:func:`cx_connector.privacy.forget`) marks it redacted."""
    key: Key = ("id", source, source_id)
    cid = lookup(conn, [key]).get(key)
    if cid is None:
        cid = _attach(conn, customer_id or _create(conn, now), [key], now=now, actor=actor)
    where = (identities.c.kind == "id", identities.c.source == source, identities.c.value == source_id)
    gone = conn.execute(select(identities.c.gone_at).where(*where)).scalar()
    if gone is None or gone < at:
        conn.execute(update(identities).where(*where).values(gone_at=at))
    return cid


def restored_after(conn: Connection, source: str, source_id: str, at: datetime) -> datetime | None:
    """When the platform restored ``source/source_id`` after ``at``, if it said so already (a
    restore delivered before the deletion it undoes is remembered in the audit log)."""
    rows = conn.execute(select(audit_log.c.details).where(
        audit_log.c.action == "record_restored", audit_log.c.source == source,
        audit_log.c.external_id == source_id)).scalars()
    times = [datetime.fromisoformat(d["occurred_at"]) for d in rows if d and d.get("occurred_at")]
    later = [t for t in times if t > at]
    return max(later) if later else None


def restore_record(conn: Connection, action: Restore, *, now: datetime, actor: str = "webhook") -> bool:
    """The platform restored a deleted record (HubSpot restores a contact from its recycle bin
    within 90 days, under the same id): lift its tombstone if it is older than the restore.

    The record is live again (written to, looked up by the enrichment job, which brings its
    contact details back) and its customer is no longer erased, so its anonymous history
    counts for it again; what the erasure removed (contact details, raw bodies, personal
    attributes) stays removed. The restore is audit-logged either way, so that a deletion
    delivered after it (out of order) is undone at once. Returns whether a tombstone was
    lifted."""
    key: Key = ("id", action.source, action.source_id)
    row = conn.execute(select(identities.c.id, identities.c.customer_id, identities.c.gone_at,
                              customers.c.redacted_at)
                       .join_from(identities, customers, customers.c.id == identities.c.customer_id)
                       .where(identities.c.kind == key[0], identities.c.source == key[1],
                              identities.c.value == key[2])).first()
    lift = (row is not None and row.gone_at is not None and row.redacted_at is not None
            and row.gone_at <= action.occurred_at)
    audit.record(conn, actor=actor, action="record_restored", at=now,
                 customer_id=row.customer_id if row is not None else None, source=action.source,
                 external_id=action.source_id,
                 details={"occurred_at": action.occurred_at.isoformat(), "tombstone_lifted": lift})
    if not lift:
        return False
    conn.execute(update(identities).where(identities.c.id == row.id)
                 .values(gone_at=None, enriched_at=None))
    conn.execute(update(customers).where(customers.c.id == row.customer_id)
                 .values(redacted_at=None, changed_at=now, updated_at=now))
    return True
