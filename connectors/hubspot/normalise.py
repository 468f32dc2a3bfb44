"""HubSpot webhook events -> touchpoints and identity/privacy actions. Pure: no I/O, no clock.

A delivery is a JSON array of (fewer than 100) events, each its own fact
(https://developers.hubspot.com/docs/api/webhooks). Events carry ids, never record
data or an email: contacts are customers ``<contactId>``; deals, tickets and
conversation threads, which name no contact, are customers ``deal:<id>``,
``ticket:<id>`` and ``conversation:<threadId>`` until the enrichment job links them
to their contact.

Every touchpoint id names the business fact (``deal:332507367156:won``), not the
delivery, so a retried delivery or a later backfill of the same fact is one row.

What is produced from which event is listed in :data:`EVENTS` (the README's table
is written from it); everything else is ignored with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cx_connector.connector import (
    CustomerRef,
    Forget,
    Merge,
    Normalised,
    Rating,
    Restore,
    Touchpoint,
)
from cx_connector.errors import PayloadError

SOURCE = "hubspot"

#: sensitive properties arrive with this value instead of the data
#: (https://developers.hubspot.com/docs/api/webhooks, sensitive data)
REDACTED = "REDACTED"

#: prefix of the properties this service writes back: their changes are ours (loop guard)
OWN_PROPERTY_PREFIX = "cx_"

DEFAULT_SCALES: dict[str, Decimal] = {"nps": Decimal(10), "csat": Decimal(5), "ces": Decimal(7)}
RATING_KIND = {"nps": "nps_response", "csat": "csat_rating", "ces": "ces_response"}

#: HubSpot's default lifecycle stages -> journey stage (custom stages keep the kind's default)
LIFECYCLE_STAGES: dict[str, str] = {
    "subscriber": "awareness",
    "lead": "awareness",
    "marketingqualifiedlead": "consideration",
    "salesqualifiedlead": "consideration",
    "opportunity": "consideration",
    "customer": "purchase",
    "evangelist": "advocacy",
}

#: contact properties whose change is a profile update (others are ignored);
#: email and phone are linked as identities straight away
PROFILE_PROPERTIES = ("email", "phone", "mobilephone", "firstname", "lastname")

#: HubSpot ``changeSource`` -> touchpoint channel (the raw value is kept as attributes.via)
CHANNELS_BY_CHANGE_SOURCE: dict[str, str] = {
    "FORM": "web", "FORMS": "web", "ANALYTICS": "web", "ADS": "web",
    "INTEGRATION": "api", "API": "api",
    "EMAIL": "email", "SALES_EMAIL": "email", "EMAIL_INTEGRATION": "email",
    "CONVERSATIONS": "chat", "CHAT": "chat", "BOT": "chat",
    "CALLING": "phone",
    "SOCIAL": "social",
}

_MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
_MAX_TEXT = 100  # longest stage id / property name / message id kept in a touchpoint id


@dataclass(frozen=True)
class SurveyProperty:
    type: str  # nps | csat | ces
    scale_max: Decimal


@dataclass(frozen=True)
class Rules:
    """The settings normalisation depends on (built from the connector's settings)."""

    won_stages: frozenset[str] = frozenset({"closedwon"})
    lost_stages: frozenset[str] = frozenset({"closedlost"})
    ticket_closed_stages: frozenset[str] = frozenset({"4"})
    survey_properties: Mapping[str, SurveyProperty] = field(default_factory=lambda: {
        "hs_feedback_last_nps_rating": SurveyProperty("nps", Decimal(10)),
        "hs_feedback_last_ces_rating": SurveyProperty("ces", Decimal(7)),
    })
    app_id: str | None = None
    #: ISO 4217 code of the account's company currency (deal amounts carry none)
    currency: str | None = None
    #: deal id -> amount set in the same delivery (filled per delivery by :func:`normalise`)
    amounts: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    index: int
    type: str
    object_id: str
    occurred_ms: int
    occurred_at: datetime
    change_source: str | None
    raw: Mapping[str, Any]

    @property
    def channel(self) -> str:
        return CHANNELS_BY_CHANGE_SOURCE.get(self.change_source or "", "other")

    def attributes(self, **extra: Any) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self.change_source:
            attrs["via"] = self.change_source
        attrs.update({k: v for k, v in extra.items() if v is not None})
        return attrs


Result = tuple[list[Touchpoint], list[Any], str | None]  # touchpoints, actions, ignore reason


def event_type(raw: Any) -> str | None:
    """``subscriptionType``, or ``eventType`` as some of HubSpot's docs examples spell it."""
    if not isinstance(raw, Mapping):
        return None
    value = raw.get("subscriptionType", raw.get("eventType"))
    return value if isinstance(value, str) and value else None


def events_of(payload: Any) -> list[Any]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, Mapping):  # a single event, as some docs examples show it
        return [payload]
    raise PayloadError("expected a JSON array of HubSpot webhook events")


def dedupe_parts(payload: Any) -> list[str]:
    """One key per event: (portalId, subscriptionType, objectId, eventId, occurredAt).

    HubSpot sends no delivery id and re-signs retries with a new ``attemptNumber``
    inside the body, so the body hash differs between attempts; these fields do not.
    https://developers.hubspot.com/docs/api/webhooks (``eventId`` alone is "not
    guaranteed to be unique").

    Raises :class:`PayloadError` (the inbox then keys the delivery by its body's hash) for
    an empty array and for an event without ``eventId`` or ``occurredAt``: every event
    HubSpot sends has both, and without them different malformed bodies would share one
    key, so all but the first would be answered as redeliveries and never stored.
    """
    parts = []
    events = events_of(payload)
    if not events:
        raise PayloadError("no events")
    for raw in events:
        if not isinstance(raw, Mapping):
            raise PayloadError("an event is not an object")
        if raw.get("eventId") is None or raw.get("occurredAt") is None:
            raise PayloadError("an event without eventId or occurredAt")
        parts.append("|".join(str(raw.get(k)) for k in
                              ("portalId", "subscriptionType", "objectId", "eventId", "occurredAt"))
                     + f"|{raw.get('eventType')}")
    return parts


def normalise(payload: Any, rules: Rules) -> Normalised:
    """Touchpoints and actions for one delivery (see the module docstring)."""
    events = events_of(payload)
    if not events:
        return Normalised.ignore("empty event array")
    tps: list[Touchpoint] = []
    actions: list[Any] = []
    reasons: list[str] = []
    rules = replace(rules, amounts=_amounts(events))
    for i, raw in enumerate(events):
        kind = event_type(raw)
        if kind is None:
            where = f"event {i}"
            if not isinstance(raw, Mapping):
                raise PayloadError(f"{where}: expected an object, got {type(raw).__name__}")
            raise PayloadError(f"{where}: no subscriptionType (or eventType): not a HubSpot "
                               "webhook event")
        handler = HANDLERS.get(kind)
        if handler is None:
            reasons.append(f"{kind}: not a subscription cx-connector uses")
            continue
        ev = _parse(raw, i, kind)
        got_tps, got_actions, reason = handler(ev, rules)
        tps += got_tps
        actions += got_actions
        if reason:
            reasons.append(f"{kind}: {reason}")
    if not tps and not actions:
        return Normalised.ignore("; ".join(dict.fromkeys(reasons))[:1000])
    return Normalised(touchpoints=tuple(tps), actions=tuple(actions))


def _amounts(events: list[Any]) -> dict[str, Decimal]:
    """Deal amounts set in this delivery (newest per deal). A webhook never carries the
    amount of a deal that is won, but an integration closing a deal often sets both at
    once, and HubSpot then delivers both changes together."""
    latest: dict[str, tuple[int, Decimal]] = {}
    for raw in events:
        if (event_type(raw) != "deal.propertyChange" or raw.get("propertyName") != "amount"
                or not isinstance(raw.get("propertyValue"), str)):
            continue
        try:
            amount = Decimal(raw["propertyValue"].strip())
            deal, ms = _id(raw.get("objectId"), "objectId"), raw.get("occurredAt")
        except (InvalidOperation, ValueError, PayloadError):
            continue
        if not amount.is_finite() or abs(amount) >= Decimal("1e13") or not isinstance(ms, int):
            continue
        if deal not in latest or latest[deal][0] <= ms:
            latest[deal] = (ms, amount)
    return {deal: amount for deal, (_, amount) in latest.items()}


# --- parsing ---------------------------------------------------------------------------------


def _id(value: Any, what: str) -> str:
    """An id as a string (HubSpot ids exceed 2^32; JSON numbers arrive as ints)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 30:
        return value.lstrip("0") or "0"
    raise PayloadError(f"{what} must be a numeric id, got {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse(raw: Mapping[str, Any], index: int, kind: str) -> Event:
    where = f"event {index} ({kind})"
    object_id = _id(raw.get("objectId"), f"{where}: objectId")
    ms = raw.get("occurredAt")
    if isinstance(ms, str) and ms.isascii() and ms.isdigit() and len(ms) <= 16:
        ms = int(ms)
    if not isinstance(ms, int) or isinstance(ms, bool) or not 0 < ms <= _MAX_MS:
        raise PayloadError(f"{where}: occurredAt must be epoch milliseconds, got {_show(ms)}")
    source = raw.get("changeSource")
    return Event(index=index, type=kind, object_id=object_id, occurred_ms=ms,
                 occurred_at=datetime.fromtimestamp(ms / 1000, UTC),
                 change_source=source[:64] if isinstance(source, str) and source else None, raw=raw)


def _text(ev: Event, key: str, *, required: bool = True) -> str | None:
    value = ev.raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise PayloadError(f"event {ev.index} ({ev.type}): {key} must be a string of 1-"
                           f"{_MAX_TEXT} characters, got {_show(value)}")
    return value


def _tp(ev: Event, touchpoint_id: str, customer: str | CustomerRef, kind: str, *,
        stage: str = "", channel: str | None = None, rating: Rating | None = None,
        **attributes: Any) -> Touchpoint:
    ref = customer if isinstance(customer, CustomerRef) else CustomerRef(source_id=customer)
    return Touchpoint(source=SOURCE, touchpoint_id=touchpoint_id, occurred_at=ev.occurred_at,
                      customer=ref, kind=kind, stage=stage, channel=channel or ev.channel,
                      rating=rating, attributes=ev.attributes(**attributes))


# --- property changes ----------------------------------------------------------------------


def _property_change(ev: Event, rules: Rules) -> tuple[str, str | None] | str:
    """``(name, value)`` of a propertyChange event, or the reason to ignore it."""
    name = _text(ev, "propertyName") or ""
    if name.lower().startswith(OWN_PROPERTY_PREFIX):
        return f"{name} is written by cx-connector itself (loop guard)"
    source_id = ev.raw.get("sourceId")
    if (rules.app_id and ev.change_source == "INTEGRATION"
            and str(source_id) == rules.app_id):
        return f"{name} was changed by cx-connector's own app {rules.app_id} (loop guard)"
    value = ev.raw.get("propertyValue")
    if value == REDACTED:
        return f"{name}: HubSpot redacted the sensitive value"
    if value is not None and not isinstance(value, str):
        raise PayloadError(f"event {ev.index} ({ev.type}): propertyValue must be a string, "
                           f"got {_show(value)}")
    return name, (value or None)


def _rating(ev: Event, name: str, value: str, survey: SurveyProperty) -> Rating:
    try:
        score = Decimal(value.strip())
    except (InvalidOperation, ValueError):
        score = None
    if score is None or not score.is_finite() or not 0 <= score <= survey.scale_max:
        raise PayloadError(
            f"event {ev.index} ({ev.type}): {name} = {_show(value)} is not a {survey.type} "
            f"score between 0 and {survey.scale_max}; fix connectors.hubspot.survey_properties."
            f"{name} (type, scale_max) and replay this delivery")
    return Rating(type=survey.type, score=score, scale_max=survey.scale_max)


def _survey_touchpoint(ev: Event, rules: Rules, name: str, value: str | None, prefix: str,
                       customer: str, **attrs: Any) -> Result:
    survey = rules.survey_properties[name]
    if value is None:
        return [], [], f"{name} was cleared"
    rating = _rating(ev, name, value, survey)
    return [_tp(ev, f"{prefix}:{ev.object_id}:{name}:{ev.occurred_ms}", customer,
                RATING_KIND[survey.type], rating=rating, property=name, **attrs)], [], None


def contact_property(ev: Event, rules: Rules) -> Result:
    change = _property_change(ev, rules)
    if isinstance(change, str):
        return [], [], change
    name, value = change
    cid = ev.object_id
    if name in rules.survey_properties:
        return _survey_touchpoint(ev, rules, name, value, "contact", cid)
    if name == "lifecyclestage":
        if value is None:
            return [], [], "lifecyclestage was cleared"
        if len(value) > _MAX_TEXT:
            raise PayloadError(f"event {ev.index}: lifecyclestage value is too long")
        return [_tp(ev, f"contact:{cid}:lifecyclestage:{value}", cid, "lifecycle_changed",
                    stage=LIFECYCLE_STAGES.get(value, ""), lifecycle_stage=value)], [], None
    if name in PROFILE_PROPERTIES:
        ref = CustomerRef(source_id=cid,
                          email=value if name == "email" else None,
                          phone=value if name in ("phone", "mobilephone") else None)
        return [_tp(ev, f"contact:{cid}:{name}:{ev.occurred_ms}", ref, "profile_updated",
                    property=name)], [], None
    return [], [], f"{name} is not a property cx-connector uses"


def deal_property(ev: Event, rules: Rules) -> Result:
    change = _property_change(ev, rules)
    if isinstance(change, str):
        return [], [], change
    name, value = change
    did = ev.object_id
    customer = f"deal:{did}"
    if name == "amount":
        return [], [], ("an amount change is no touchpoint: it becomes the value of a deal "
                        "won in the same delivery")
    if name != "dealstage":
        return [], [], f"{name} is not a deal property cx-connector uses"
    if value is None:
        return [], [], "dealstage was cleared"
    if len(value) > _MAX_TEXT:
        raise PayloadError(f"event {ev.index}: dealstage value is too long")
    if value in rules.won_stages:
        tp = _tp(ev, f"deal:{did}:won", customer, "deal_won", deal_id=did, deal_stage=value)
        if did in rules.amounts:
            tp = replace(tp, value=rules.amounts[did], currency=rules.currency)
        return [tp], [], None
    if value in rules.lost_stages:
        return [_tp(ev, f"deal:{did}:lost", customer, "deal_lost", deal_id=did,
                    deal_stage=value)], [], None
    return [_tp(ev, f"deal:{did}:stage:{value}", customer, "deal_stage_changed", deal_id=did,
                deal_stage=value)], [], None


def ticket_property(ev: Event, rules: Rules) -> Result:
    change = _property_change(ev, rules)
    if isinstance(change, str):
        return [], [], change
    name, value = change
    tid = ev.object_id
    customer = f"ticket:{tid}"
    if name in rules.survey_properties:
        return _survey_touchpoint(ev, rules, name, value, "ticket", customer, ticket_id=tid)
    if name == "hs_pipeline_stage":
        if value in rules.ticket_closed_stages:
            return [_tp(ev, f"ticket:{tid}:solved:{ev.occurred_ms}", customer, "ticket_solved",
                        ticket_id=tid, ticket_stage=value)], [], None
        return [], [], "ticket moved to a stage that is not closed"
    return [], [], f"{name} is not a ticket property cx-connector uses"


# --- other events ---------------------------------------------------------------------------


def contact_created(ev: Event, rules: Rules) -> Result:
    return [_tp(ev, f"contact:{ev.object_id}:created", ev.object_id, "contact_created")], [], None


def deal_created(ev: Event, rules: Rules) -> Result:
    did = ev.object_id
    return [_tp(ev, f"deal:{did}:created", f"deal:{did}", "deal_created", deal_id=did)], [], None


def ticket_created(ev: Event, rules: Rules) -> Result:
    tid = ev.object_id
    return [_tp(ev, f"ticket:{tid}:opened", f"ticket:{tid}", "ticket_opened",
                ticket_id=tid)], [], None


def conversation_message(ev: Event, rules: Rules) -> Result:
    """A message in a Conversations inbox thread. ``COMMENT`` is an internal note between
    staff, not contact with the customer. The webhook does not say who wrote the message,
    so ``author`` is not set."""
    message_type = ev.raw.get("messageType")
    if message_type == "COMMENT":
        return [], [], "internal comment, not a message to or from the customer"
    thread = ev.object_id
    message_id = _text(ev, "messageId", required=False)
    fact = f"message:{message_id}" if message_id else f"message-at:{ev.occurred_ms}"
    return [_tp(ev, f"conversation:{thread}:{fact}", f"conversation:{thread}", "chat_message",
                channel="chat", thread_id=thread, message_id=message_id,
                via=ev.change_source or "conversations")], [], None


def _merge(prefix: str) -> Callable[[Event, Rules], Result]:
    def merge(ev: Event, rules: Rules) -> Result:
        """``primaryObjectId`` and ``mergedObjectIds`` became ``newObjectId`` (which may be
        the primary id or a new one): https://developers.hubspot.com/docs/api/webhooks"""
        where = f"event {ev.index} ({ev.type})"
        primary = ev.raw.get("primaryObjectId", ev.raw.get("objectId"))
        merged = ev.raw.get("mergedObjectIds")
        if not isinstance(merged, list) or len(merged) > 1000:
            raise PayloadError(f"{where}: mergedObjectIds must be a list of ids")
        ids = [_id(primary, f"{where}: primaryObjectId")]
        ids += [_id(m, f"{where}: mergedObjectIds") for m in merged]
        new = ev.raw.get("newObjectId")
        into = _id(new, f"{where}: newObjectId") if new is not None else ids[0]
        gone = tuple(dict.fromkeys(f"{prefix}{i}" for i in ids if i != into))
        if not gone:
            return [], [], "nothing was merged"
        return [], [Merge(source=SOURCE, merged_ids=gone, into_id=f"{prefix}{into}")], None
    return merge


def _forget(prefix: str, why: str) -> Callable[[Event, Rules], Result]:
    """A deletion erases the record's person and keeps its id as a tombstone dated by the
    deletion, so that its events delivered afterwards (out of order, or retried) bring
    nothing back. A permanent (GDPR) deletion sends ``contact.privacyDeletion`` and
    ``contact.deletion`` both
    (https://developers.hubspot.com/changelog/now-live-webhooks-now-support-privacy-compliant-contact-deletions):
    the second one finds nothing left to erase."""
    def forget(ev: Event, rules: Rules) -> Result:
        return [], [Forget(source=SOURCE, source_id=f"{prefix}{ev.object_id}",
                           reason=f"HubSpot {ev.type}: {why}", occurred_at=ev.occurred_at)], None
    return forget


def contact_restored(ev: Event, rules: Rules) -> Result:
    """A restorable deletion can be undone from the recycle bin within 90 days, under the same
    record id (https://knowledge.hubspot.com/records/restore-deleted-records); a permanent
    one cannot, so no restore ever names it. The tombstone is lifted: the enrichment job
    fetches the contact's details again and scores are written to it again."""
    return [], [Restore(SOURCE, ev.object_id, occurred_at=ev.occurred_at)], None


def _ignore(reason: str) -> Callable[[Event, Rules], Result]:
    def ignore(ev: Event, rules: Rules) -> Result:
        return [], [], reason
    return ignore


HANDLERS: dict[str, Callable[[Event, Rules], Result]] = {
    "contact.creation": contact_created,
    "contact.propertyChange": contact_property,
    "contact.merge": _merge(""),
    "contact.deletion": _forget("", "the contact was deleted"),
    "contact.privacyDeletion": _forget("", "GDPR deletion of the contact"),
    "contact.restore": contact_restored,
    "contact.associationChange": _ignore("associations are read by the enrichment job"),
    "deal.creation": deal_created,
    "deal.propertyChange": deal_property,
    "deal.merge": _merge("deal:"),
    "deal.deletion": _ignore("a deleted deal's history is kept"),
    "deal.restore": _ignore("nothing new to record"),
    "deal.associationChange": _ignore("associations are read by the enrichment job"),
    "ticket.creation": ticket_created,
    "ticket.propertyChange": ticket_property,
    "ticket.merge": _merge("ticket:"),
    "ticket.deletion": _ignore("a deleted ticket's history is kept"),
    "ticket.restore": _ignore("nothing new to record"),
    "ticket.associationChange": _ignore("associations are read by the enrichment job"),
    "conversation.newMessage": conversation_message,
    "conversation.creation": _ignore("the thread's first message arrives as "
                                     "conversation.newMessage"),
    "conversation.propertyChange": _ignore("thread status and assignment are not touchpoints"),
    "conversation.deletion": _ignore("a deleted thread's history is kept"),
    "conversation.privacyDeletion": _forget("conversation:", "GDPR deletion of the thread"),
}
