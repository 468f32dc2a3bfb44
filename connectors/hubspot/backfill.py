"""HubSpot history through the CRM v3 APIs, mapped by the webhook normaliser.

HubSpot's webhooks are property changes; so is a record's property history. Each
value a record's ``lifecyclestage``, survey properties or ``dealstage`` ever had
(``propertiesWithHistory``, with the change's timestamp and ``sourceType``) is
turned into the ``*.propertyChange`` event the webhook delivers for that change,
the record's creation into ``*.creation``, and the lot goes through
:func:`connectors.hubspot.normalise.normalise`. Touchpoint ids are therefore the
webhooks' (``contact:<id>:created``, ``contact:<id>:lifecyclestage:customer``,
``deal:<id>:won``, ``contact:<id>:hs_feedback_last_nps_rating:<ms>``), on the
assumption, which HubSpot does not document, that a history entry's timestamp
is the webhook's ``occurredAt``.

Resources, in order:

``contacts``
    ``POST /crm/v3/objects/contacts/search`` (email, name, phone, lifecycle stage,
    the configured survey properties), then ``POST /crm/v3/objects/contacts/batch/read``
    with ``propertiesWithHistory`` (50 per request): ``contact_created``, every
    ``lifecycle_changed`` and survey answer; the contact's email, phone and name are
    linked as the enrichment job links them.
``deals``
    ``POST /crm/v3/objects/deals/search``, the ``dealstage`` history the same way, and
    the contact associations (``POST /crm/v4/associations/deals/contacts/batch/read``):
    ``deal_created``, every stage change, ``deal_won`` (with the current amount) or
    ``deal_lost``; the deal is linked to its contact (the lowest id when several, as
    the enrichment job does).

Paging: the search API returns at most 10,000 results per query
(https://developers.hubspot.com/docs/api/crm/search). Records are read in ``hs_object_id``
order; when the ``after`` offset would pass the cap, the next query starts again from
``hs_object_id > <the last id read>``, so no query ever reaches the cap, with or without
``--since`` (which filters on ``lastmodifieddate`` / ``hs_lastmodifieddate``). Records
created while the backfill runs get higher ids and are read at the end.

Rate limits: the search endpoints allow a few requests per second per account (the
``search`` budget, 4 / s), and every request also counts against the account's
``requests_per_10s`` (``api``). https://developers.hubspot.com/docs/api/usage-details
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.hubspot import normalise as norm
from connectors.hubspot.client import BATCH, HISTORY_BATCH, HubSpotClient
from cx_connector.connector import (
    BackfillPage,
    BackfillResource,
    CustomerRef,
    Link,
    Normalised,
    RateBudget,
    Throttle,
    combine,
)
from cx_connector.errors import PayloadError, PlatformAPIError

RESOURCES: tuple[BackfillResource, ...] = (
    BackfillResource("contacts", "contacts: contact_created, lifecycle_changed, survey answers; email, "
                                 "phone and name (CRM search + property history)"),
    BackfillResource("deals", "deals: deal_created, deal_stage_changed, deal_won/deal_lost; the deal's "
                              "contact (CRM search + property history + associations)"),
)

#: results per search request (the search API's maximum)
SEARCH_PAGE = 200
#: results one search query can page through
SEARCH_CAP = 10_000
#: search requests per second per account (HubSpot documents 5; one is left for others)
SEARCH_PER_SECOND = 4

CONTACT_PROPERTIES = ("email", "firstname", "lastname", "phone", "mobilephone", "lifecyclestage",
                      "createdate", "lastmodifieddate", "hs_object_source")
DEAL_PROPERTIES = ("dealstage", "amount", "pipeline", "createdate", "hs_lastmodifieddate",
                   "hs_object_source")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

History = dict[str, dict[str, list[dict[str, Any]]]]
#: builds a page's results: (client, rules, records, their history, throttles, skipped reasons)
_Builder = Callable[[HubSpotClient, norm.Rules, list[dict[str, Any]], History, Mapping[str, Throttle],
                     list[str]], list[Normalised]]


def search_budget() -> RateBudget:
    return RateBudget("window", SEARCH_PER_SECOND, 1.0, describe=f"{SEARCH_PER_SECOND} searches / s")


def page(client: HubSpotClient, rules: norm.Rules, resource: str, cursor: str | None, *,
         since: datetime | None, throttles: Mapping[str, Throttle]) -> BackfillPage:
    """One page of ``resource`` (see the module docstring)."""
    if resource == "contacts":
        return _page(client, rules, "contacts", "lastmodifieddate", CONTACT_PROPERTIES,
                     ("lifecyclestage", *sorted(rules.survey_properties)), cursor, since, throttles,
                     _contact_results)
    if resource == "deals":
        return _page(client, rules, "deals", "hs_lastmodifieddate", DEAL_PROPERTIES, ("dealstage",),
                     cursor, since, throttles, _deal_results)
    raise ValueError(f"hubspot has no backfill resource {resource!r}")


def ms(value: Any) -> int | None:
    """HubSpot's ISO-8601 times (``2019-10-30T03:30:17.883Z``) as exact epoch milliseconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return int(value) if value.isdigit() else None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(milliseconds=1)


def search_body(properties: tuple[str, ...], modified: str, from_id: str | None, after: str | None,
                since: datetime | None) -> dict[str, Any]:
    """The search request: ids above ``from_id`` (the window), changed since ``since``, in id order."""
    filters = [{"propertyName": "hs_object_id", "operator": "GT", "value": from_id or "0"}]
    if since is not None:
        filters.append({"propertyName": modified, "operator": "GTE",
                        "value": str((since - _EPOCH) // timedelta(milliseconds=1))})
    body: dict[str, Any] = {"filterGroups": [{"filters": filters}],
                            "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                            "properties": list(properties), "limit": SEARCH_PAGE}
    if after is not None:
        body["after"] = after
    return body


def _page(client: HubSpotClient, rules: norm.Rules, object_type: str, modified: str,
          properties: tuple[str, ...], history_of: tuple[str, ...], cursor: str | None,
          since: datetime | None, throttles: Mapping[str, Throttle], build: _Builder) -> BackfillPage:
    state = json.loads(cursor) if cursor else {}
    from_id, after = state.get("from_id"), state.get("after")
    throttles["search"].wait()
    throttles["api"].wait()
    body = client.session.call("POST", f"/crm/v3/objects/{object_type}/search",
                               json=search_body(properties, modified, from_id, after, since)).json()
    if not isinstance(body, dict):
        raise PlatformAPIError(f"hubspot: the {object_type} search answered with something that is "
                               "not a JSON object", platform="hubspot")
    records = [r for r in body.get("results") or [] if isinstance(r, dict) and r.get("id") is not None]
    ids = [str(r["id"]) for r in records]
    history: History = {}
    for i in range(0, len(ids), HISTORY_BATCH):
        throttles["api"].wait()
        history.update(client.read_history(object_type, ids[i:i + HISTORY_BATCH], history_of))
    skipped: list[str] = []
    results = build(client, rules, records, history, throttles, skipped)
    offset = int(after or 0)
    total = body.get("total")
    remaining = max(0, total - offset - len(records)) if isinstance(total, int) else None
    nxt = ((body.get("paging") or {}).get("next") or {}).get("after")
    if not nxt or not records:
        return BackfillPage(result=combine(results), cursor=cursor, done=True, records=len(records),
                            remaining=0, skipped=tuple(skipped))
    if int(nxt) + SEARCH_PAGE > SEARCH_CAP:  # the next page would pass the cap: a new window
        new = {"from_id": ids[-1], "after": None}
    else:
        new = {"from_id": from_id, "after": str(nxt)}
    return BackfillPage(result=combine(results), cursor=json.dumps(new, sort_keys=True), done=False,
                        records=len(records), remaining=remaining, skipped=tuple(skipped))


def _changes(object_type: str, object_id: str, name: str, entries: list[dict[str, Any]]) -> list[dict]:
    """A property's history as the ``propertyChange`` events HubSpot sent, oldest first."""
    out = []
    for entry in reversed(entries or []):
        if not isinstance(entry, dict):
            continue
        out.append({"subscriptionType": f"{object_type}.propertyChange", "objectId": object_id,
                    "propertyName": name, "propertyValue": entry.get("value"),
                    "occurredAt": ms(entry.get("timestamp")), "changeSource": entry.get("sourceType"),
                    "sourceId": entry.get("sourceId")})
    return out


def _creation(object_type: str, record: Mapping[str, Any]) -> dict[str, Any]:
    props = record.get("properties") or {}
    return {"subscriptionType": f"{object_type}.creation", "objectId": str(record["id"]),
            "occurredAt": ms(props.get("createdate") or record.get("createdAt")),
            "changeSource": props.get("hs_object_source") or None}


def _normalise(events: list[dict[str, Any]], rules: norm.Rules, what: str,
               skipped: list[str]) -> Normalised:
    try:
        return norm.normalise(events, rules)
    except PayloadError as exc:
        skipped.append(f"{what}: {exc.message}")
        return Normalised()


def _contact_results(client: HubSpotClient, rules: norm.Rules, records: list[dict[str, Any]],
                     history: History, throttles: Mapping[str, Throttle],
                     skipped: list[str]) -> list[Normalised]:
    out = []
    for record in records:
        cid = str(record["id"])
        props = record.get("properties") or {}
        changes = history.get(cid)
        if changes is None:
            skipped.append(f"contact {cid}: deleted while the backfill read it")
            continue
        out.append(_normalise([_creation("contact", record)], rules, f"contact {cid} creation", skipped))
        for name in ("lifecyclestage", *sorted(rules.survey_properties)):
            for event in _changes("contact", cid, name, changes.get(name) or []):
                # one event at a time: a survey value off its scale skips that answer only
                out.append(_normalise([event], rules, f"contact {cid} {name}", skipped))
        name = " ".join(p.strip() for p in (props.get("firstname"), props.get("lastname"))
                        if isinstance(p, str) and p.strip())
        ref = CustomerRef(source_id=cid, email=props.get("email") or None,
                          phone=props.get("phone") or props.get("mobilephone") or None, name=name or None)
        if ref.email or ref.phone or ref.name:
            out.append(Normalised(actions=(Link(source=norm.SOURCE, source_id=cid, customer=ref),)))
    return out


def _deal_results(client: HubSpotClient, rules: norm.Rules, records: list[dict[str, Any]],
                  history: History, throttles: Mapping[str, Throttle],
                  skipped: list[str]) -> list[Normalised]:
    ids = [str(r["id"]) for r in records if str(r["id"]) in history]
    contacts: dict[str, list[str]] = {}
    for i in range(0, len(ids), BATCH):
        throttles["api"].wait()
        contacts.update(client.associated_contacts("deals", ids[i:i + BATCH]))
    out = []
    for record in records:
        did = str(record["id"])
        props = record.get("properties") or {}
        changes = history.get(did)
        if changes is None:
            skipped.append(f"deal {did}: deleted while the backfill read it")
            continue
        stages = _changes("deal", did, "dealstage", changes.get("dealstage") or [])
        events = [_creation("deal", record), *stages]
        won = [e["occurredAt"] for e in events[1:] if e["propertyValue"] in rules.won_stages
               and isinstance(e["occurredAt"], int)]
        if won and isinstance(props.get("amount"), str) and props["amount"].strip():
            # a won deal's value: the webhook takes it from an amount change in the same delivery
            events.append({"subscriptionType": "deal.propertyChange", "objectId": did,
                           "propertyName": "amount", "propertyValue": props["amount"],
                           "occurredAt": max(won)})
        out.append(_normalise(events, rules, f"deal {did}", skipped))
        if contacts.get(did):
            contact = min(contacts[did], key=lambda c: (len(c), c))
            out.append(Normalised(actions=(Link(source=norm.SOURCE, source_id=f"deal:{did}",
                                                customer=CustomerRef(source_id=contact)),)))
    return out
