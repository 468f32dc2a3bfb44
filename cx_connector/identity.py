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
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, select, update

from cx_connector import audit
from cx_connector.connector import CustomerRef, Gone, Link, Merge
from cx_connector.db import loaded_json, raw_rows, stored_json, stored_time
from cx_connector.models import (
    alert_states,
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


def lookup(conn: Connection, keys: Iterable[Key]) -> dict[Key, int]:
    """Customer id per known key: one indexed ``value IN (...)`` query (the unique index
    leads with ``value``), exact ``(kind, source, value)`` matches kept.

    Here and in the other statements every webhook runs (creating a customer, attaching
    identities, profiles, :func:`mark_changed`), the DBAPI cursor is used directly
    (:func:`cx_connector.db.raw_rows`): SQLAlchemy's per-statement overhead was most of
    the request's time."""
    wanted = set(keys)
    values = sorted({v for _, _, v in wanted})
    found: dict[Key, int] = {}
    for i in range(0, len(values), 500):
        chunk = values[i:i + 500]
        for kind, source, value, cid in raw_rows(conn, (
                "SELECT kind, source, value, customer_id FROM identities "
                f"WHERE value IN ({_marks(len(chunk))})"), chunk):
            if (kind, source, value) in wanted:
                found[(kind, source, value)] = cid
    return found


def customer_for(conn: Connection, source: str, source_id: str) -> int | None:
    return lookup(conn, [("id", source, source_id)]).get(("id", source, source_id))


def resolve(conn: Connection, source: str, refs: Iterable[tuple[CustomerRef, datetime]], *,
            now: datetime, actor: str = "webhook") -> dict[str, int]:
    """Customer id for every ``ref.source_id``, creating, linking and merging as needed.

    ``refs`` pairs each reference with the time of the fact it came from; profile
    fields (email, phone, name) are taken from the newest fact that carries them.
    """
    groups: dict[str, list[tuple[CustomerRef, datetime]]] = {}
    for ref, at in refs:
        groups.setdefault(ref.source_id, []).append((ref, at))
    known = lookup(conn, [k for group in groups.values() for ref, _ in group
                          for k in keys_for(source, ref)])
    result: dict[str, int] = {}
    created: dict[int, dict] = {}  # new customers and the profile they were created with
    merged_away: dict[int, int] = {}
    for source_id, group in groups.items():
        keys = list(dict.fromkeys(k for ref, _ in group for k in keys_for(source, ref)))
        found = {known[k] for k in keys if k in known}
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
        if missing:
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
    _update_profiles(conn, groups, result, created)
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
                     owners: dict[str, int], created: dict[int, dict]) -> None:
    """Per profile field, keep the value of the newest fact that carries it."""
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
        changes = _apply_profile(row, group)
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


def apply_merge(conn: Connection, action: Merge, *, now: datetime, actor: str = "webhook") -> int | None:
    """A platform merged records (e.g. HubSpot ``contact.merge``): repoint their identities.

    The merged-away ids are marked gone (no write-back goes to them again); the
    surviving id is linked to the merged customer.
    """
    into: Key = ("id", action.source, action.into_id)
    old: list[Key] = [("id", action.source, i) for i in action.merged_ids if i != action.into_id]
    known = lookup(conn, [into, *old])
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
    conn.execute(update(identities).where(
        identities.c.kind == "id", identities.c.source == action.source,
        identities.c.value == action.into_id).values(gone_at=None))
    conn.execute(update(customers).where(customers.c.id == cid).values(changed_at=now))
    audit.record(conn, actor=actor, action="platform_merge", at=now, customer_id=cid,
                 source=action.source, external_id=action.into_id,
                 details={"merged_ids": list(action.merged_ids)})
    return cid


def apply_link(conn: Connection, action: Link, *, now: datetime, actor: str = "webhook") -> int:
    """``source/source_id`` belongs to the person described by ``action.customer``."""
    cid = resolve(conn, action.source, [(action.customer, now)], now=now, actor=actor)[
        action.customer.source_id]
    key: Key = ("id", action.source, action.source_id)
    owner = lookup(conn, [key]).get(key)
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
