"""Zendesk history through the Support API, mapped by the webhook normaliser.

Every API record is turned into the event-subscription envelope the webhook would
have delivered for the same fact (``zen:event-type:ticket.created``,
``ticket.status_changed``, ``ticket.comment_added``, ``ticket.csat_received``,
``user.created``) and handed to :func:`connectors.zendesk.normalise.normalise`;
legacy ratings go through :func:`normalise.satisfaction_rating_touchpoint`, the
mapping the normaliser already has for API ratings. So touchpoint ids are the
webhooks' (``ticket:5158:opened``, ``ticket:5158:solved:20250108T164520Z``,
``ticket:5158:comment:<comment id>``, ``user:<id>:created``).

Resources, in order (users first, so requesters arrive with their email):

``users``
    ``GET /api/v2/incremental/users/cursor.json`` (cursor-based incremental export,
    1,000 per page): ``contact_created`` per end user, plus a :class:`Link` with the
    email, phone and name (as the enrichment job does); agents and admins are skipped;
    deleted users (``active: false``) are marked gone.
``tickets``
    ``GET /api/v2/incremental/tickets/cursor.json``: ``ticket_opened`` per ticket.
``ticket_events``
    ``GET /api/v2/incremental/ticket_events.json?include=comment_events`` (time-based;
    it has no cursor variant): every status change (``ticket_solved`` with the
    resolution time, ``ticket_reopened``) and every comment (``ticket_commented``)
    with the second it happened. Chosen over the ticket metric events (which carry no
    reopen times and no comments) and the ticket audits API (one request per ticket;
    its list endpoint leaves archived tickets out). Events name only the ticket, so the
    tickets of a page are read with ``GET /api/v2/tickets/show_many.json`` (100 per
    request) for their requester, channel and creation time.
``csat_survey_responses``
    ``GET /api/v2/guide/survey_responses`` (the CSAT surveys that replace the legacy
    good/bad rating; cursor pagination): the rating answer of each response as a
    ``csat_rating`` of the survey's scale. Accounts without the feature answer 403/404:
    the resource is then finished with a note, not failed.
``satisfaction_ratings``
    ``GET /api/v2/satisfaction_ratings.json?score=received`` (legacy CSAT, cursor
    pagination).

Rate limits: the incremental exports have their own limit, 10 requests per minute
(30 with the High Volume add-on; ``incremental_exports_per_minute``), the ``export``
budget; the other reads spend the account's ``requests_per_minute`` (``api``). A 429
carries ``Retry-After``, which the core waits out.
https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/
https://developer.zendesk.com/documentation/ticketing/managing-tickets/using-the-incremental-export-api/
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from connectors.zendesk import normalise
from connectors.zendesk.client import SHOW_MANY_LIMIT, ZendeskClient
from cx_connector.connector import (
    BackfillPage,
    BackfillResource,
    CustomerRef,
    Gone,
    Link,
    Normalised,
    Throttle,
    combine,
)
from cx_connector.errors import PayloadError, PlatformAPIError, PlatformAuthError, PlatformRecordGone

RESOURCES: tuple[BackfillResource, ...] = (
    BackfillResource("users", "end users: contact_created, email/phone/name (incremental user export)"),
    BackfillResource("tickets", "tickets: ticket_opened (incremental ticket export)"),
    BackfillResource("ticket_events", "status changes and comments: ticket_solved, ticket_reopened, "
                                      "ticket_commented (incremental ticket event export)"),
    BackfillResource("csat_survey_responses", "CSAT survey answers: csat_rating (survey responses API)"),
    BackfillResource("satisfaction_ratings", "legacy good/bad ratings: csat_rating "
                                             "(satisfaction ratings API)"),
)

#: records per page of the incremental exports (their maximum)
EXPORT_PAGE = 1000
#: records per page of the cursor-paginated list endpoints (their maximum)
LIST_PAGE = 100

_ZRN_TICKET = re.compile(r"^zen:ticket:(\d{1,20})$")


def page(client: ZendeskClient, opts: normalise.Options, resource: str, cursor: str | None, *,
         since: datetime | None, throttles: Mapping[str, Throttle]) -> BackfillPage:
    """One page of ``resource`` (see the module docstring)."""
    handler = _HANDLERS.get(resource)
    if handler is None:
        raise ValueError(f"zendesk has no backfill resource {resource!r}")
    return handler(_Reader(client, throttles), opts, cursor, since)


class _Reader:
    """GETs through the client, each after waiting on its budget."""

    def __init__(self, client: ZendeskClient, throttles: Mapping[str, Throttle]) -> None:
        self.client, self.throttles = client, throttles

    def get(self, path: str, params: dict[str, Any], budget: str = "api") -> dict[str, Any]:
        self.throttles[budget].wait()
        return self.client.get(path, params)

    def count(self, path: str) -> int | None:
        """``GET /api/v2/{things}/count.json``: an estimate (Zendesk caches it) for the ETA."""
        body = self.get(path, {})
        value = (body.get("count") or {}).get("value") if isinstance(body.get("count"), dict) else None
        return value if isinstance(value, int) else None


def _epoch(since: datetime | None) -> int:
    return int(since.timestamp()) if since is not None else 0


def _list(body: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PlatformAPIError(f"zendesk: the answer's {key} is not a list", platform="zendesk")
    return [v for v in value if isinstance(v, dict)]


def _one(what: str, fn: Callable[[], Normalised], skipped: list[str]) -> Normalised:
    """Normalise one record; a malformed one is skipped with its reason, never fatal."""
    try:
        return fn()
    except PayloadError as exc:
        skipped.append(f"{what}: {exc.message}")
        return Normalised()


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def ticket_detail(ticket: Mapping[str, Any], status: str | None = None) -> dict[str, Any]:
    """The ``detail`` of a ticket event, built from a REST ticket (ids as the API gives them;
    the normaliser turns them into strings). ``status`` is the status the event is about
    (a REST ticket only has its current one)."""
    via = ticket.get("via")
    detail = {
        "id": ticket.get("id"), "requester_id": ticket.get("requester_id"),
        "via": {"channel": via.get("channel")} if isinstance(via, dict) else {},
        "created_at": ticket.get("created_at"), "updated_at": ticket.get("updated_at"),
        "priority": _upper(ticket.get("priority")), "type": _upper(ticket.get("type")),
        "assignee_id": ticket.get("assignee_id"), "group_id": ticket.get("group_id"),
        "organization_id": ticket.get("organization_id"),
    }
    if status:
        detail["status"] = _upper(status)
    return detail


def envelope(event_type: str, time: Any, detail: Mapping[str, Any],
             event: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The event-subscription body Zendesk would have posted for this fact (no event id:
    the normaliser then keys facts by their time, as it does for webhooks without one)."""
    return {"type": f"{normalise.EVENT_PREFIX}{event_type}", "time": time, "detail": dict(detail),
            "event": dict(event or {})}


# --- users --------------------------------------------------------------------------------


def _users(r: _Reader, opts: normalise.Options, cursor: str | None,
           since: datetime | None) -> BackfillPage:
    params: dict[str, Any] = {"per_page": EXPORT_PAGE}
    params.update({"cursor": cursor} if cursor else {"start_time": _epoch(since)})
    body = r.get("/api/v2/incremental/users/cursor.json", params, "export")
    users = _list(body, "users")
    skipped: list[str] = []
    results = [_one(f"user {u.get('id')}", lambda u=u: user_result(u, opts), skipped) for u in users]
    remaining = None
    if cursor is None and since is None:
        total = r.count("/api/v2/users/count.json")
        remaining = max(0, total - len(users)) if total is not None else None
    return _cursor_page(body, cursor, combine(results), len(users), skipped, remaining)


def user_result(user: Mapping[str, Any], opts: normalise.Options) -> Normalised:
    """``contact_created`` as ``user.created`` gives it, plus the contact details the API
    has (phone included, which no user webhook carries) as a :class:`Link`; a deleted
    user is marked gone, as the enrichment job marks users it no longer finds."""
    detail = {k: user.get(k) for k in ("id", "email", "name", "role", "created_at", "external_id",
                                       "organization_id")}
    result = normalise.normalise(envelope("user.created", user.get("created_at") or user.get("updated_at"),
                                          detail), opts)
    if result.ignored:  # agents and admins are not customers
        return result
    uid = normalise.zendesk_id(user.get("id"), "user.id")
    if user.get("active") is False:
        return Normalised(touchpoints=result.touchpoints, actions=(Gone(opts.source, uid),))
    link = Link(source=opts.source, source_id=uid, customer=CustomerRef(
        source_id=uid, email=user.get("email"), phone=user.get("phone"), name=user.get("name")))
    return Normalised(touchpoints=result.touchpoints, actions=(link,))


# --- tickets -------------------------------------------------------------------------------


def _tickets(r: _Reader, opts: normalise.Options, cursor: str | None,
             since: datetime | None) -> BackfillPage:
    params: dict[str, Any] = {"per_page": EXPORT_PAGE}
    params.update({"cursor": cursor} if cursor else {"start_time": _epoch(since)})
    body = r.get("/api/v2/incremental/tickets/cursor.json", params, "export")
    tickets = _list(body, "tickets")
    skipped: list[str] = []
    results = [_one(f"ticket {t.get('id')}", lambda t=t: normalise.normalise(
        envelope("ticket.created", t.get("created_at"), ticket_detail(t)), opts), skipped)
        for t in tickets]
    remaining = None
    if cursor is None and since is None:
        total = r.count("/api/v2/tickets/count.json")
        remaining = max(0, total - len(tickets)) if total is not None else None
    return _cursor_page(body, cursor, combine(results), len(tickets), skipped, remaining)


def _cursor_page(body: Mapping[str, Any], cursor: str | None, result: Normalised, records: int,
                 skipped: list[str], remaining: int | None) -> BackfillPage:
    """Cursor-based incremental exports: ``after_cursor`` and ``end_of_stream``."""
    after = body.get("after_cursor")
    done = bool(body.get("end_of_stream")) or not after
    if not done and after == cursor:
        raise PlatformAPIError("zendesk: the incremental export returned the same cursor again",
                               platform="zendesk")
    return BackfillPage(result=result, cursor=str(after) if after else cursor, done=done,
                        records=records, remaining=0 if done else remaining, skipped=tuple(skipped))


# --- ticket events --------------------------------------------------------------------------


def _status_of(child: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """``(status, previous)`` of a Create/Change child event about the status: the export
    names the field by its own key (``"status": "solved"``); audits use ``field_name``."""
    if child.get("event_type", child.get("type")) not in ("Create", "Change"):
        return None
    if child.get("field_name") == "status":
        value = child.get("value")
    elif "status" in child:
        value = child.get("status")
    else:
        return None
    if not isinstance(value, str) or not value:
        return None
    previous = child.get("previous_value")
    return value, previous if isinstance(previous, str) and previous else None


def _created_requester(event: Mapping[str, Any]) -> Any:
    for child in event.get("child_events") or []:
        if isinstance(child, dict) and child.get("event_type", child.get("type")) == "Create":
            if child.get("field_name") == "requester_id":
                return child.get("value")
            if "requester_id" in child:
                return child.get("requester_id")
    return None


def _ticket_events(r: _Reader, opts: normalise.Options, cursor: str | None,
                   since: datetime | None) -> BackfillPage:
    start = int(cursor) if cursor else _epoch(since)
    body = r.get("/api/v2/incremental/ticket_events.json",
                 {"start_time": start, "include": "comment_events"}, "export")
    events = _list(body, "ticket_events")
    wanted = list(dict.fromkeys(str(e.get("ticket_id")) for e in events
                                if _interesting(e) and e.get("ticket_id") is not None))
    tickets: dict[str, dict[str, Any]] = {}
    for i in range(0, len(wanted), SHOW_MANY_LIMIT):
        chunk = wanted[i:i + SHOW_MANY_LIMIT]
        found = r.get("/api/v2/tickets/show_many.json", {"ids": ",".join(chunk)})
        tickets.update({str(t.get("id")): t for t in _list(found, "tickets")})
    skipped: list[str] = []
    results: list[Normalised] = []
    gone: set[str] = set()
    for event in events:
        tid = str(event.get("ticket_id"))
        if not _interesting(event):
            continue
        ticket = tickets.get(tid)
        if ticket is None:
            requester = _created_requester(event)
            if requester is None:
                gone.add(tid)
                continue
            ticket = {"id": tid, "requester_id": requester, "via": event.get("via")
                      if isinstance(event.get("via"), dict) else {"channel": event.get("via")}}
        results += ticket_event_results(event, ticket, opts, skipped)
    skipped += [f"ticket {tid}: Zendesk no longer returns it (deleted); its status changes and "
                "comments are not imported" for tid in sorted(gone, key=lambda t: (len(t), t))]
    end = body.get("end_time")
    done = bool(body.get("end_of_stream")) or not events
    if not done:
        if not isinstance(end, int) or end <= start:
            end = _next_start(body.get("next_page"))
        if not isinstance(end, int) or end <= start:
            raise PlatformAPIError(f"zendesk: the ticket event export does not move past start_time "
                                   f"{start}; cannot continue", platform="zendesk")
    return BackfillPage(result=combine(results), cursor=str(end) if isinstance(end, int) else cursor,
                        done=done, records=len(events), remaining=0 if done else None,
                        skipped=tuple(skipped))


def _interesting(event: Mapping[str, Any]) -> bool:
    return any(isinstance(c, dict) and (_status_of(c) is not None
                                        or c.get("event_type", c.get("type")) == "Comment")
               for c in event.get("child_events") or [])


def _next_start(url: Any) -> int | None:
    if not isinstance(url, str):
        return None
    values = parse_qs(urlsplit(url).query).get("start_time") or []
    return int(values[0]) if values and values[0].isdigit() else None


def ticket_event_results(event: Mapping[str, Any], ticket: Mapping[str, Any], opts: normalise.Options,
                         skipped: list[str]) -> list[Normalised]:
    """The status changes and comments of one ticket update, each as the webhook event
    Zendesk sends for it (``ticket.status_changed``, ``ticket.comment_added``)."""
    when = event.get("created_at")
    tid = ticket.get("id")
    out = []
    for child in event.get("child_events") or []:
        if not isinstance(child, dict):
            continue
        change = _status_of(child)
        if change is not None:
            status, previous = change
            env = envelope("ticket.status_changed", when, ticket_detail(ticket, status),
                           {"current": status.upper(), "previous": _upper(previous)})
            out.append(_one(f"ticket {tid} status {status}", lambda env=env: normalise.normalise(env, opts),
                            skipped))
        elif child.get("event_type", child.get("type")) == "Comment":
            comment = {"id": child.get("id"), "author": {"id": child.get("author_id")},
                       "is_public": child.get("public")}
            env = envelope("ticket.comment_added", child.get("created_at") or when,
                           ticket_detail(ticket), {"comment": comment})
            out.append(_one(f"ticket {tid} comment {child.get('id')}",
                            lambda env=env: normalise.normalise(env, opts), skipped))
    return out


# --- ratings ------------------------------------------------------------------------------


def _after(body: Mapping[str, Any]) -> str | None:
    meta = body.get("meta")
    if isinstance(meta, dict) and meta.get("has_more") and meta.get("after_cursor"):
        return str(meta["after_cursor"])
    return None


def _survey_responses(r: _Reader, opts: normalise.Options, cursor: str | None,
                      since: datetime | None) -> BackfillPage:
    params: dict[str, Any] = {"page[size]": LIST_PAGE}
    if cursor:
        params["page[after]"] = cursor
    if since is not None:
        params["filter[created_at_start]"] = _epoch(since)
    try:
        body = r.get("/api/v2/guide/survey_responses", params)
    except (PlatformAuthError, PlatformRecordGone) as exc:
        if cursor is not None:
            raise
        return BackfillPage(done=True, skipped=(
            f"CSAT survey responses are not available on this account (HTTP {exc.status}: the "
            "feature needs Support Professional / Suite Growth or above); legacy ratings are "
            "imported by satisfaction_ratings",))
    responses = _list(body, "survey_responses")
    skipped: list[str] = []
    results = [_one(f"survey response {s.get('id')}", lambda s=s: survey_response_result(s, opts),
                    skipped) for s in responses]
    after = _after(body)
    return BackfillPage(result=combine(results), cursor=after or cursor, done=after is None,
                        records=len(responses), skipped=tuple(skipped))


def _ticket_of(response: Mapping[str, Any]) -> str | None:
    for subject in response.get("subjects") or []:
        if isinstance(subject, dict) and subject.get("type") == "ticket" and subject.get("id"):
            return str(subject["id"])
    for zrn in response.get("subject_zrns") or []:
        m = _ZRN_TICKET.match(str(zrn))
        if m:
            return m.group(1)
    return None


def _rating_answer(response: Mapping[str, Any]) -> tuple[Any, Any, Any] | None:
    """``(rating, scale, time)`` of the response's rating-scale answer, if it was answered."""
    for answer in response.get("answers") or []:
        if not isinstance(answer, dict) or answer.get("type") == "skipped":
            continue
        question = answer.get("question") if isinstance(answer.get("question"), dict) else {}
        qtype = str(question.get("type") or answer.get("type") or "")
        if "rating" not in answer or not qtype.startswith("rating_scale"):
            continue
        options = question.get("options") if isinstance(question.get("options"), list) else []
        ratings = [o.get("rating") for o in options if isinstance(o, dict)
                   and isinstance(o.get("rating"), int)]
        scale = max(ratings) if ratings else (len(options) or None)
        return answer.get("rating"), scale, answer.get("updated_at") or answer.get("created_at")
    return None


def survey_response_result(response: Mapping[str, Any], opts: normalise.Options) -> Normalised:
    """A CSAT survey response as the ``ticket.csat_received`` event of its ticket, keyed by
    ticket and answer time like the webhook's; a response without a rating (skipped, or
    about a conversation rather than a ticket) adds nothing."""
    tid = _ticket_of(response)
    answer = _rating_answer(response)
    if tid is None or answer is None:
        return Normalised()
    rating, scale, when = answer
    comment = next((a.get("value") or a.get("text") for a in response.get("answers") or []
                    if isinstance(a, dict) and a.get("type") == "open_ended"), None)
    detail = {"id": tid, "requester_id": response.get("responder_id")}
    score = {"score": rating, "scale": scale, "id": None, "comment": comment}
    return normalise.normalise(envelope("ticket.csat_received", when, detail,
                                        {"satisfaction_score": score}), opts)


def _satisfaction_ratings(r: _Reader, opts: normalise.Options, cursor: str | None,
                          since: datetime | None) -> BackfillPage:
    params: dict[str, Any] = {"score": "received", "page[size]": LIST_PAGE}
    if cursor:
        params["page[after]"] = cursor
    if since is not None:
        params["start_time"] = _epoch(since)
    body = r.get("/api/v2/satisfaction_ratings.json", params)
    ratings = _list(body, "satisfaction_ratings")
    skipped: list[str] = []
    results = []
    for rating in ratings:
        def one(rating: Mapping[str, Any] = rating) -> Normalised:
            tp = normalise.satisfaction_rating_touchpoint(rating, opts)
            return Normalised(touchpoints=(tp,)) if tp is not None else Normalised()
        results.append(_one(f"satisfaction rating {rating.get('id')}", one, skipped))
    after = _after(body)
    return BackfillPage(result=combine(results), cursor=after or cursor, done=after is None,
                        records=len(ratings), skipped=tuple(skipped))


_HANDLERS: dict[str, Callable[[_Reader, normalise.Options, str | None, datetime | None],
                              BackfillPage]] = {
    "users": _users,
    "tickets": _tickets,
    "ticket_events": _ticket_events,
    "csat_survey_responses": _survey_responses,
    "satisfaction_ratings": _satisfaction_ratings,
}
