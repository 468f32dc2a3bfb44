"""Zendesk payloads -> touchpoints. Pure: no I/O, no clock.

Two kinds of request arrive at ``/webhooks/zendesk``:

1. **Event subscriptions** (``zen:event-type:...``): a fixed envelope ``type``,
   ``id`` (UUID), ``time``, ``subject``, ``detail`` (the ticket or user, ids as
   *strings*, statuses UPPER-CASE) and ``event`` (what changed, e.g.
   ``{current, previous}``).
   https://developer.zendesk.com/api-reference/webhooks/event-types/ticket-events
   https://developer.zendesk.com/api-reference/webhooks/event-types/user-events
2. **Triggers and automations**: the body is whatever JSON the admin typed into
   the trigger's webhook action. We recognise exactly one shape, the template in
   the README (:data:`TRIGGER_TEMPLATE`, marked by the key ``cx_connector``);
   any other body is kept as ``failed`` with a message pointing at the template,
   because we cannot know what it means and it must not vanish silently.

``touchpoint_id`` names the business fact, never the delivery, so a redelivery,
an out-of-order delivery or the same fact arriving through both an event
subscription and a trigger is stored once: ``ticket:5158:opened``,
``ticket:5158:solved:20250108T164520Z`` (the second the ticket was solved),
``ticket:5158:comment:9876543210``.

Ticket events carry the requester's id but no email: the touchpoint's customer is
``CustomerRef(requester_id)`` and the enrichment job fills in the email later
(``users/show_many``). Free text (subjects, comment bodies, CSAT comments) is not
copied into attributes: it stays in the raw delivery, which privacy erasure removes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cx_connector.connector import CustomerRef, Normalised, Rating, Touchpoint, clean_text
from cx_connector.errors import PayloadError

EVENT_PREFIX = "zen:event-type:"
#: the key that marks our trigger template, and the template version it carries
TEMPLATE_MARKER = "cx_connector"
TEMPLATE_VERSION = "zendesk-trigger/1"
README_HINT = ("paste the trigger JSON template from the README (section 'Zendesk') into the trigger's "
               "webhook action, then replay this delivery with `cx-connector events replay`")

#: The JSON body to paste into a Zendesk trigger's "Notify webhook" action. Placeholders:
#: https://support.zendesk.com/hc/en-us/articles/4408886858138 (Zendesk placeholders reference).
TRIGGER_TEMPLATE: dict[str, Any] = {
    TEMPLATE_MARKER: TEMPLATE_VERSION,
    "ticket": {
        "id": "{{ticket.id}}",
        "status": "{{ticket.status}}",
        "priority": "{{ticket.priority}}",
        "type": "{{ticket.ticket_type}}",
        "via": "{{ticket.via}}",
        "created_at": "{{ticket.created_at_with_timestamp}}",
        "updated_at": "{{ticket.updated_at_with_timestamp}}",
    },
    "requester": {
        "id": "{{ticket.requester.id}}",
        "email": "{{ticket.requester.email}}",
        "name": "{{ticket.requester.name}}",
        "phone": "{{ticket.requester.phone}}",
    },
    "satisfaction": {
        "rating": "{{satisfaction.current_rating}}",
        "comment": "{{satisfaction.current_comment}}",
    },
}

# Zendesk's ticket statuses (event payloads send them UPPER-CASE, trigger bodies as
# rendered text: "Open", "On-hold", ...).
OPEN_STATUSES = frozenset({"NEW", "OPEN", "PENDING", "HOLD"})
DONE_STATUSES = frozenset({"SOLVED", "CLOSED"})
GONE_STATUSES = frozenset({"DELETED", "ARCHIVED", "SCRUBBED"})
STAFF_ROLES = frozenset({"agent", "admin"})
USER_ACTIONS = frozenset({"created", "name_changed", "identity_created", "identity_changed",
                          "custom_field_changed"})
OWN_FIELD_PREFIX = "cx_"

_ID_RE = re.compile(r"^\d{1,20}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


# --- small, strict readers --------------------------------------------------------------


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PayloadError(f"{what} must be a JSON object")
    return value


def _clean(text: str, limit: int = 255) -> str:
    """``text`` without NULs and lone surrogates: valid JSON escapes that no database text
    column accepts (PostgreSQL refuses NUL), so nothing copied from a payload into a
    touchpoint or an error message can make storing fail."""
    return clean_text(text)[:limit]


def _text(value: Any, limit: int = 255) -> str | None:
    """A clean short string, or None (non-strings, empty strings, unrendered placeholders)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = _clean(str(value), 100_000).strip()
    if not text or "{{" in text:
        return None
    return text[:limit]


def zendesk_id(value: Any, what: str) -> str:
    """A Zendesk id as a string (ids are strings in events, integers in REST; both > 2^32)."""
    text = _text(value, 64)
    if text is None or not _ID_RE.match(text):
        raise PayloadError(f"{what} must be a numeric Zendesk id, got {str(value)[:40]!r}")
    return text


def _optional_id(value: Any) -> str | None:
    text = _text(value, 64)
    return text if text and _ID_RE.match(text) and text.strip("0") else None


def parse_time(value: Any, what: str) -> datetime:
    """An ISO-8601 time (``2025-01-08T10:12:07Z``, nanoseconds or minutes only) in UTC."""
    text = _text(value, 64)
    if text is None:
        raise PayloadError(f"{what} is missing")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise PayloadError(f"{what} is not an ISO-8601 time: {text!r}") from None
    if when.tzinfo is None:  # Zendesk documents its times as UTC
        when = when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise PayloadError(f"{what} is out of range: {text!r}") from None


def stamp(when: datetime) -> str:
    """Second-resolution key part: the event and the trigger of one change share it."""
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- channels ---------------------------------------------------------------------------

_CHANNELS: dict[str, str] = {
    # via.channel values of event payloads, and the rendered {{ticket.via}} of triggers
    "web": "web", "web_form": "web", "help_center": "web", "portal": "web", "mobile": "web",
    "mobile_sdk": "web", "web_widget": "web", "widget": "web", "community": "web",
    "email": "email", "mail": "email", "email_forwarding": "email",
    "chat": "chat", "chat_transcript": "chat", "messaging": "chat", "native_messaging": "chat",
    "web_messaging": "chat", "sunshine_conversations": "chat", "whatsapp": "chat", "sms": "chat",
    "text": "chat", "line": "chat", "wechat": "chat", "telegram": "chat", "slack": "chat",
    "voice": "phone", "phone": "phone", "voicemail": "phone", "talk": "phone",
    "twitter": "social", "x_corp": "social", "facebook": "social", "instagram": "social",
    "instagram_dm": "social", "social": "social",
    "api": "api", "web_service": "api", "any_channel": "api",
}
_CHANNEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("phone", "phone"), ("voice", "phone"), ("twitter", "social"), ("facebook", "social"),
    ("instagram", "social"), ("chat", "chat"), ("messag", "chat"), ("mail", "email"),
    ("email", "email"), ("web_form", "web"), ("api", "api"),
)


def channel_for(via: str | None) -> str:
    """Map Zendesk's channel name (``web_service``, ``Web Form``, ``Phone call (inbound)``)
    onto the touchpoint channels; unknown and system channels (``rule``, ``merge``) are ``other``.
    https://developer.zendesk.com/documentation/ticketing/reference-guides/via-types/"""
    if not via:
        return "other"
    key = re.sub(r"[^a-z0-9]+", "_", via.lower()).strip("_")
    if key in _CHANNELS:
        return _CHANNELS[key]
    for prefix, channel in _CHANNEL_PREFIXES:
        if key.startswith(prefix):
            return channel
    return "other"


# --- satisfaction ------------------------------------------------------------------------

#: labels of the text/emoji 5-point CSAT scales, for payloads that send the label
_LABELS_5 = {"very dissatisfied": 1, "very unsatisfied": 1, "dissatisfied": 2, "unsatisfied": 2,
             "neutral": 3, "satisfied": 4, "very satisfied": 5}
_NOT_RATED = {"offered", "unoffered", "not offered", "none", "null", "no rating", "not rated"}
#: Zendesk counts the top choice of a 2- or 3-point scale and 4-5 of a 5-point scale as
#: "good"; score/scale >= 0.8 reproduces exactly that for every scale it offers
SATISFIED_SHARE = Decimal("0.8")


@dataclass(frozen=True)
class Satisfaction:
    rating: Rating
    satisfied: bool
    #: ``good`` / ``bad`` (legacy CSAT) or ``4of5`` (CSAT surveys): used in keys
    label: str
    scale: str


def parse_satisfaction(score: Any, *, scale: Any = None, default_scale: int = 5) -> Satisfaction | None:
    """A CSAT answer as a csat :class:`Rating`, or None when nothing was rated yet.

    * Legacy CSAT ``good`` / ``bad`` (also ``GOOD``, ``good_with_comment``, the rendered
      "Good, I'm satisfied") -> score 1 / 0 of scale 1.
    * CSAT survey answers on a 2-, 3- or 5-point scale (numbers, or the 5-point text
      labels) -> the answer as given of that scale (``4`` of ``5``); the scale comes from
      the payload, else ``connectors.zendesk.csat_scale``.
    * ``offered`` / ``unoffered`` / empty -> None (a survey was sent, nobody answered).

    ``satisfied`` follows Zendesk's own good/bad conversion of the survey scales.
    https://support.zendesk.com/hc/en-us/articles/4408886173338
    """
    if isinstance(score, bool):
        raise PayloadError(f"unrecognised satisfaction score {score!r}")
    if score is None:
        return None
    number: Decimal | None = None
    if isinstance(score, int | Decimal):
        number = Decimal(score)
    elif isinstance(score, str):
        text = score.strip().lower()
        if not text or "{{" in text or text in _NOT_RATED:
            return None
        if text.startswith("good"):
            return Satisfaction(Rating("csat", Decimal(1), Decimal(1)), True, "good", "good_bad")
        if text.startswith("bad"):
            return Satisfaction(Rating("csat", Decimal(0), Decimal(1)), False, "bad", "good_bad")
        if text in _LABELS_5:
            number, scale = Decimal(_LABELS_5[text]), 5
        else:
            try:
                number = Decimal(text)
            except InvalidOperation:
                number = None
    if number is None or not number.is_finite() or number != number.to_integral_value():
        raise PayloadError(f"unrecognised satisfaction score {str(score)[:40]!r}: expected good/bad or "
                           "a number of the survey's scale")
    if scale is None:
        scale = default_scale
    try:
        top = Decimal(scale) if not isinstance(scale, bool) else None
    except (InvalidOperation, TypeError, ValueError):
        top = None
    if top is None or not top.is_finite() or top != top.to_integral_value() or not 2 <= top <= 10:
        raise PayloadError(f"unrecognised satisfaction scale {str(scale)[:20]!r}: expected 2, 3 or 5")
    if not 1 <= number <= top:
        raise PayloadError(f"satisfaction score {number} is outside its scale 1-{top}")
    number, top = Decimal(int(number)), Decimal(int(top))
    return Satisfaction(Rating("csat", number, top), number / top >= SATISFIED_SHARE,
                        f"{number}of{top}", f"1-{top}")


# --- the entry point -----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    source: str = "zendesk"
    #: scale of numeric CSAT answers whose payload does not say (2, 3 or 5)
    csat_scale: int = 5


def kind_of(payload: Any) -> str:
    """``event`` (event subscription), ``template`` (our trigger template) or ``unknown``."""
    if isinstance(payload, Mapping):
        if TEMPLATE_MARKER in payload:
            return "template"
        kind = payload.get("type")
        if isinstance(kind, str) and kind.startswith("zen:"):
            return "event"
    return "unknown"


def topic(payload: Any) -> str:
    """The event type without its ``zen:event-type:`` prefix; ``trigger`` for the template."""
    kind = kind_of(payload)
    if kind == "event":
        return _text(payload["type"].removeprefix(EVENT_PREFIX), 128) or ""
    if kind == "template":
        return "trigger"
    return ""


def event_id(payload: Any) -> str | None:
    """The envelope's event id (a UUID), when it looks like one."""
    if kind_of(payload) != "event":
        return None
    value = _text(payload.get("id"), 100)
    return value if value and _TOKEN_RE.match(value) else None


def normalise(payload: Any, opts: Options) -> Normalised:
    """One Zendesk request body (parsed JSON) -> touchpoints (see module docstring)."""
    kind = kind_of(payload)
    if kind == "event":
        return _event(payload, opts)
    if kind == "template":
        return _template(payload, opts)
    if isinstance(payload, Mapping) and isinstance(payload.get("type"), str):
        shown = f"a body with type {_clean(payload['type'], 60)!r}"
    elif isinstance(payload, Mapping):
        shown = f"a body with keys {_clean(', '.join(sorted(map(str, payload))[:8]), 120)}"
    else:
        shown = f"a JSON {type(payload).__name__}"
    raise PayloadError(f"unknown Zendesk payload ({shown}): neither an event-subscription event nor the "
                       f"cx-connector trigger template; {README_HINT}")


# --- event subscriptions -------------------------------------------------------------------


def _event(payload: Mapping[str, Any], opts: Options) -> Normalised:
    etype = _clean(payload["type"], 200)
    name = etype.removeprefix(EVENT_PREFIX)
    family, _, action = name.partition(".")
    if family == "ticket":
        handler = _TICKET_EVENTS.get(action)
        if handler is None:
            return Normalised.ignore(f"{etype} is not used (ticket events used: "
                                     f"{', '.join(sorted(_TICKET_EVENTS))})")
        return handler(_Envelope.read(payload), opts)
    if family == "user":
        if action not in USER_ACTIONS:
            return Normalised.ignore(f"{etype} is not used (user events used: "
                                     f"{', '.join(sorted(USER_ACTIONS))})")
        return _user_event(_Envelope.read(payload), action, opts)
    return Normalised.ignore(f"{etype} is not used: only ticket.* and user.* events are")


@dataclass(frozen=True)
class _Envelope:
    type: str
    id: str | None
    time: datetime
    detail: Mapping[str, Any]
    event: Mapping[str, Any]

    @classmethod
    def read(cls, payload: Mapping[str, Any]) -> _Envelope:
        return cls(type=_clean(payload["type"], 200), id=event_id(payload),
                   time=parse_time(payload.get("time"), "time"),
                   detail=_obj(payload.get("detail"), "detail"),
                   event=_obj(payload.get("event"), "event"))

    @property
    def fact(self) -> str:
        """A key part unique to this event: its id, else its time."""
        return self.id or stamp(self.time)


@dataclass(frozen=True)
class _Ticket:
    id: str
    requester: str
    status: str | None
    via: str | None
    created_at: datetime | None
    attributes: dict[str, Any]
    #: the requester with contact details, when the payload has them (the trigger template)
    ref: CustomerRef | None = None

    @property
    def customer(self) -> CustomerRef:
        return self.ref or CustomerRef(source_id=self.requester)

    @property
    def channel(self) -> str:
        return channel_for(self.via)


def _status(value: Any) -> str | None:
    text = _text(value, 32)
    if text is None:
        return None
    status = re.sub(r"[^A-Z]", "", text.upper())
    return "HOLD" if status == "ONHOLD" else status


def _ticket_detail(env: _Envelope) -> _Ticket:
    d = env.detail
    tid = zendesk_id(d.get("id"), "detail.id (ticket id)")
    requester = zendesk_id(d.get("requester_id"), "detail.requester_id")
    via = _text(_obj(d.get("via"), "detail.via").get("channel"), 64)
    created = parse_time(d["created_at"], "detail.created_at") if d.get("created_at") else None
    status = _status(d.get("status"))
    attrs: dict[str, Any] = {"ticket_id": tid, "via": via, "status": status.lower() if status else None,
                             "priority": (_text(d.get("priority"), 32) or "").lower() or None,
                             "ticket_type": (_text(d.get("type"), 32) or "").lower() or None,
                             "created_at": _iso(created) if created else None,
                             "assignee_id": _optional_id(d.get("assignee_id")),
                             "group_id": _optional_id(d.get("group_id")),
                             "organization_id": _optional_id(d.get("organization_id"))}
    if d.get("updated_at"):
        attrs["updated_at"] = _iso(parse_time(d["updated_at"], "detail.updated_at"))
    return _Ticket(tid, requester, status, via, created, {k: v for k, v in attrs.items() if v is not None})


def _tp(opts: Options, ticket: _Ticket, tid: str, kind: str, when: datetime, **extra: Any) -> Touchpoint:
    attributes = {**ticket.attributes, **{k: v for k, v in extra.pop("attributes", {}).items()
                                           if v is not None}}
    return Touchpoint(source=opts.source, touchpoint_id=tid, occurred_at=when, customer=ticket.customer,
                      kind=kind, channel=ticket.channel, attributes=attributes, **extra)


def _opened(opts: Options, ticket: _Ticket, when: datetime) -> Touchpoint:
    return _tp(opts, ticket, f"ticket:{ticket.id}:opened", "ticket_opened", ticket.created_at or when)


def _solved(opts: Options, ticket: _Ticket, when: datetime, previous: str | None) -> Touchpoint:
    extra: dict[str, Any] = {"previous_status": previous.lower() if previous else None,
                             "solved_at": _iso(when)}
    if ticket.created_at is not None and when >= ticket.created_at:
        # resolution time in seconds, so a score can use it without pairing touchpoints
        extra["resolution_seconds"] = int((when - ticket.created_at).total_seconds())
    return _tp(opts, ticket, f"ticket:{ticket.id}:solved:{stamp(when)}", "ticket_solved", when,
               attributes=extra)


def _reopened(opts: Options, ticket: _Ticket, when: datetime, previous: str | None) -> Touchpoint:
    return _tp(opts, ticket, f"ticket:{ticket.id}:reopened:{stamp(when)}", "ticket_reopened", when,
               attributes={"previous_status": previous.lower() if previous else None,
                           "reopened": True, "reopened_at": _iso(when)})


def _ticket_created(env: _Envelope, opts: Options) -> Normalised:
    ticket = _ticket_detail(env)
    tps = [_opened(opts, ticket, env.time)]
    if ticket.status in DONE_STATUSES:  # created already solved (a logged call, an API import)
        tps.append(_solved(opts, ticket, ticket.created_at or env.time, None))
    return Normalised(touchpoints=tuple(tps))


def _ticket_status_changed(env: _Envelope, opts: Options) -> Normalised:
    ticket = _ticket_detail(env)
    current = _status(env.event.get("current")) or ticket.status
    previous = _status(env.event.get("previous"))
    if current is None:
        raise PayloadError("ticket.status_changed without event.current or detail.status")
    was_done = previous in DONE_STATUSES
    if current in DONE_STATUSES and not was_done:
        return Normalised(touchpoints=(_solved(opts, ticket, env.time, previous),))
    if current in OPEN_STATUSES and was_done:
        return Normalised(touchpoints=(_reopened(opts, ticket, env.time, previous),))
    if current in DONE_STATUSES:
        return Normalised.ignore(f"status {previous} -> {current}: the ticket was already solved")
    if current in GONE_STATUSES:
        return Normalised.ignore(f"status {previous} -> {current}: the ticket was deleted or archived")
    return Normalised.ignore(f"status {previous or '?'} -> {current}: a change between open statuses "
                             "is not a touchpoint")


def _ticket_comment(env: _Envelope, opts: Options) -> Normalised:
    ticket = _ticket_detail(env)
    comment = _obj(env.event.get("comment"), "event.comment")
    author = _obj(comment.get("author"), "event.comment.author")
    author_id = _optional_id(author.get("id")) or _optional_id(comment.get("author_id"))
    cid = _optional_id(comment.get("id"))
    if cid is None and env.id is None:
        raise PayloadError("ticket.comment_added without event.comment.id or an event id")
    is_staff = author.get("is_staff")
    if isinstance(is_staff, bool):
        role = "staff" if is_staff else "customer"
    elif author_id is not None and author_id == ticket.requester:
        role = "customer"
    elif author_id is not None and author_id == ticket.attributes.get("assignee_id"):
        role = "staff"
    else:
        role = "customer"
    public = comment.get("is_public", comment.get("public"))
    key = f"ticket:{ticket.id}:comment:{cid}" if cid else f"ticket:{ticket.id}:comment:event:{env.id}"
    return Normalised(touchpoints=(_tp(opts, ticket, key, "ticket_commented", env.time, attributes={
        "comment_id": cid, "author": role, "author_id": author_id,
        "public": public if isinstance(public, bool) else None,
    }),))


def _score_source(event: Mapping[str, Any], detail: Mapping[str, Any]) -> Mapping[str, Any]:
    """Where a CSAT event keeps its answer. No official example exists; seen and documented
    shapes are ``event.satisfaction_score.score`` (https://developer.zendesk.com/api-reference/
    webhooks/event-types/ticket-events), a legacy ``satisfaction_rating`` object
    (https://developer.zendesk.com/api-reference/ticketing/ticket-management/satisfaction_ratings/)
    and a ``{current, previous}`` change."""
    for key in ("satisfaction_score", "satisfaction_rating", "survey_response", "current"):
        value = event.get(key)
        if isinstance(value, Mapping):
            return value
        if value is not None and not isinstance(value, list):
            return {"score": value}
    if any(k in event for k in ("score", "rating", "value")):
        return event
    nested = detail.get("satisfaction_rating")
    return nested if isinstance(nested, Mapping) else {}


def _csat_fields(src: Mapping[str, Any], opts: Options) -> tuple[Satisfaction | None, dict[str, Any]]:
    raw = next((src[k] for k in ("score", "rating", "value", "answer") if k in src), None)
    if isinstance(raw, Mapping):  # {"score": {"value": 4, "scale": 5}}
        src = {**src, **raw}
        raw = next((raw[k] for k in ("value", "score", "rating") if k in raw), None)
    scale = next((src[k] for k in ("scale", "scale_max", "max", "max_score") if k in src), None)
    sat = parse_satisfaction(raw, scale=scale, default_scale=opts.csat_scale)
    comment = _text(src.get("comment"), 5000)
    attrs = {"reason": _text(src.get("reason"), 255) or _text(src.get("reason_code"), 64),
             "has_comment": bool(comment), "rating_id": _optional_id(src.get("id"))}
    return sat, attrs


def _csat_touchpoint(opts: Options, ticket: _Ticket, key: str, when: datetime, sat: Satisfaction,
                     attrs: dict[str, Any]) -> Touchpoint:
    return _tp(opts, ticket, key, "csat_rating", when, rating=sat.rating,
               attributes={**attrs, "satisfied": sat.satisfied, "score": sat.label, "scale": sat.scale})


def _ticket_csat(env: _Envelope, opts: Options) -> Normalised:
    ticket = _ticket_detail(env)
    src = _score_source(env.event, env.detail)
    if not src:
        raise PayloadError(f"{env.type} without a score (looked for event.satisfaction_score.score, "
                           "event.score and event.current)")
    sat, attrs = _csat_fields(src, opts)
    if sat is None:
        return Normalised.ignore("satisfaction survey offered but not answered")
    key = f"ticket:{ticket.id}:csat:{stamp(env.time)}"
    return Normalised(touchpoints=(_csat_touchpoint(opts, ticket, key, env.time, sat, attrs),))


_TICKET_EVENTS = {
    "created": _ticket_created,
    "status_changed": _ticket_status_changed,
    "comment_added": _ticket_comment,
    "comment_created": _ticket_comment,  # the name some Zendesk pages use for the same event
    "csat_received": _ticket_csat,
}


def satisfaction_rating_touchpoint(rating: Mapping[str, Any], opts: Options) -> Touchpoint | None:
    """A legacy satisfaction rating as returned by ``GET /api/v2/satisfaction_ratings/{id}``
    (integer ids) -> csat touchpoint keyed by ticket and rating time, or None when unanswered."""
    tid = zendesk_id(rating.get("ticket_id"), "satisfaction_rating.ticket_id")
    requester = zendesk_id(rating.get("requester_id"), "satisfaction_rating.requester_id")
    when = parse_time(rating.get("updated_at") or rating.get("created_at"), "satisfaction_rating.created_at")
    sat, attrs = _csat_fields(rating, opts)
    if sat is None:
        return None
    ticket = _Ticket(tid, requester, None, None, None, {
        k: v for k, v in {"ticket_id": tid, "assignee_id": _optional_id(rating.get("assignee_id")),
                          "group_id": _optional_id(rating.get("group_id"))}.items() if v is not None})
    return _csat_touchpoint(opts, ticket, f"ticket:{tid}:csat:{stamp(when)}", when, sat, attrs)


# --- user events -----------------------------------------------------------------------------


def _user_ref(env: _Envelope, **given: Any) -> CustomerRef:
    d = env.detail
    return CustomerRef(source_id=zendesk_id(d.get("id"), "detail.id (user id)"),
                       email=given.get("email", _text(d.get("email"), 254)),
                       phone=given.get("phone"), name=given.get("name", _text(d.get("name"), 255)))


def _user_attrs(env: _Envelope) -> dict[str, Any]:
    d = env.detail
    attrs = {"role": _text(d.get("role"), 32), "external_id": _text(d.get("external_id"), 255),
             "organization_id": _optional_id(d.get("organization_id")), "event": env.type}
    return {k: v for k, v in attrs.items() if v is not None}


def _field_name(event: Mapping[str, Any]) -> str | None:
    """The changed user field's key. Zendesk's examples name it ``event.field`` (an object with
    ``key``/``title``, or the key itself); ``custom_field`` is the Events-connector spelling."""
    for name in ("field", "custom_field"):
        value = event.get(name)
        if isinstance(value, Mapping):
            key = _text(value.get("key"), 100) or _text(value.get("title"), 100)
            if key:
                return key
        elif _text(value, 100):
            return _text(value, 100)
    return _text(event.get("key"), 100) or _text(event.get("field_key"), 100)


def _identity_value(event: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(type, value) of a user identity event: ``event.identity`` or ``event.current``."""
    for name in ("identity", "current"):
        value = event.get(name)
        if isinstance(value, Mapping):
            return _text(value.get("type"), 32), _text(value.get("value"), 254)
    return None, None


def _user_event(env: _Envelope, action: str, opts: Options) -> Normalised:
    role = (_text(env.detail.get("role"), 32) or "").lower()
    if role in STAFF_ROLES:
        return Normalised.ignore(f"{env.type} for a staff user (role {role}), not a customer")
    uid = zendesk_id(env.detail.get("id"), "detail.id (user id)")
    if action == "created":
        when = parse_time(env.detail["created_at"], "detail.created_at") if env.detail.get(
            "created_at") else env.time
        return Normalised(touchpoints=(Touchpoint(
            source=opts.source, touchpoint_id=f"user:{uid}:created", occurred_at=when,
            customer=_user_ref(env), kind="contact_created", attributes=_user_attrs(env)),))
    given: dict[str, Any] = {}
    if action == "custom_field_changed":
        field = _field_name(env.event)
        if field is None:
            return Normalised.ignore("user.custom_field_changed without a field key: cannot tell our own "
                                     "cx_* fields from others, so it is not used")
        if field.lower().startswith(OWN_FIELD_PREFIX):
            # loop guard: our own write-back changed this field; rescoring on it would loop
            return Normalised.ignore(f"user field {field} is written by cx-connector (loop guard)")
        what = f"field:{field[:60]}"
    elif action == "name_changed":
        name = _text(env.event.get("current"), 255)
        if name is None:
            return Normalised.ignore("user.name_changed without event.current")
        given["name"], what = name, "name"
    elif action in ("identity_created", "identity_changed"):
        itype, value = _identity_value(env.event)
        if itype and "phone" in itype.lower() and value:
            given["phone"] = value
        elif not itype or "email" not in itype.lower():
            return Normalised.ignore(f"{env.type} for a {itype or 'unknown'} identity is not used")
        what = "identity"
    else:  # pragma: no cover - USER_ACTIONS lists exactly the branches above
        raise AssertionError(action)
    attrs = _user_attrs(env)
    attrs["changed"] = what
    return Normalised(touchpoints=(Touchpoint(
        source=opts.source, touchpoint_id=f"user:{uid}:{what}:{env.fact}", occurred_at=env.time,
        customer=_user_ref(env, **given), kind="profile_updated", attributes=attrs),))


# --- the trigger template ---------------------------------------------------------------------


def _template(payload: Mapping[str, Any], opts: Options) -> Normalised:
    """Normalise a body made from :data:`TRIGGER_TEMPLATE`.

    A trigger body says how the ticket *is*, not what changed, so the change is
    inferred, as far as the template allows (the README's trigger conditions make it sound):

    * created and updated at the same time -> ``ticket_opened`` (same id as the event path);
    * a good/bad or survey answer -> ``csat_rating``, keyed by ticket and answer, so the
      same standing rating sent again by a later firing is stored once;
    * solved (no answer yet) -> ``ticket_solved`` at ``updated_at``; closed is Zendesk's
      automatic follow-up of solved and adds nothing;
    * open/pending/on-hold and not just created -> ``ticket_reopened`` (the trigger fires
      on "status changed from solved").
    """
    version = payload.get(TEMPLATE_MARKER)
    if version != TEMPLATE_VERSION:
        raise PayloadError(f"trigger template version {str(version)[:40]!r} is not supported "
                           f"(expected {TEMPLATE_VERSION!r}); {README_HINT}")
    t = _obj(payload.get("ticket"), "ticket")
    r = _obj(payload.get("requester"), "requester")
    s = _obj(payload.get("satisfaction"), "satisfaction")
    tid = zendesk_id(t.get("id"), "ticket.id")
    requester = CustomerRef(source_id=zendesk_id(r.get("id"), "requester.id"),
                            email=_text(r.get("email"), 254), name=_text(r.get("name"), 255),
                            phone=_text(r.get("phone"), 64))
    created = parse_time(t.get("created_at"), "ticket.created_at")
    updated = parse_time(t.get("updated_at"), "ticket.updated_at")
    status = _status(t.get("status"))
    known = OPEN_STATUSES | DONE_STATUSES | GONE_STATUSES
    if status is None or status not in known:
        raise PayloadError(f"ticket.status {str(t.get('status'))[:30]!r} is not a Zendesk status; "
                           f"{README_HINT}")
    via = _text(t.get("via"), 64)
    attrs = {k: v for k, v in {
        "ticket_id": tid, "via": via, "status": status.lower(),
        "priority": (_text(t.get("priority"), 32) or "").lower() or None,
        "ticket_type": (_text(t.get("type"), 32) or "").lower() or None,
        "created_at": _iso(created), "updated_at": _iso(updated), "trigger": True}.items() if v is not None}
    ticket = _Ticket(tid, requester.source_id, status, via, created, attrs, ref=requester)
    sat, sat_attrs = _csat_fields({"score": s.get("rating"), "comment": s.get("comment"),
                                   "reason": s.get("reason")}, opts)
    just_created = stamp(created) == stamp(updated) or status == "NEW"
    tps: list[Touchpoint] = []
    if just_created:
        tps.append(_opened(opts, ticket, created))
    if sat is not None:
        tps.append(_csat_touchpoint(opts, ticket, f"ticket:{tid}:csat:{sat.label}", updated, sat, sat_attrs))
    if status in DONE_STATUSES and (just_created or (status == "SOLVED" and sat is None)):
        tps.append(_solved(opts, ticket, updated, None))
    elif status in OPEN_STATUSES and not just_created:
        tps.append(_reopened(opts, ticket, updated, None))
    if not tps:
        return Normalised.ignore(f"trigger for ticket {tid} in status {status.lower()}: nothing new")
    return Normalised(touchpoints=tuple(tps))


def template_json(indent: int = 2) -> str:
    """The template as the admin pastes it (README and ``TRIGGER_TEMPLATE`` stay in step)."""
    return json.dumps(TRIGGER_TEMPLATE, indent=indent)
