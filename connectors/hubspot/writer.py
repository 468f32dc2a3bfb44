"""Score write-back to HubSpot contacts: ``POST /crm/v3/objects/contacts/batch/update``.

https://developers.hubspot.com/docs/api/crm/contacts: up to 100 inputs
``{"id", "properties"}`` per call, values as strings. The answer is 200 (all
written) or 207 multi-status whose ``errors[]`` name the failing ids in
``context.ids``; each is mapped back to its record. A contact merged into another
is updated through its old id and comes back under the surviving id, which is
how merges are detected here. One invalid value can refuse the whole batch with
400: the core then splits the batch to isolate it, unless HubSpot says a property
does not exist (``PROPERTY_DOESNT_EXIST``): then no record is at fault, and the run
stops with "run cx-connector setup" instead of splitting 100 records into 199 requests.
"""

from __future__ import annotations

import json
from typing import Any

from connectors.hubspot import fields
from cx_connector.connector import PlannedRequest, RecordWrite, Throttle, WriteResult
from cx_connector.errors import PlatformFieldsMissing, PlatformRateLimited, PlatformValidationError
from cx_connector.http import Session

PATH = "/crm/v3/objects/contacts/batch/update"
MAX_INPUTS = 100
#: a DAILY-limit 429 waits this long (the daily budget resets at midnight, account time)
DAILY_LIMIT_WAIT = 3600.0
GONE_CATEGORIES = {"OBJECT_NOT_FOUND", "NOT_FOUND", "OBJECT_ARCHIVED"}
RETRY_CATEGORIES = {"RATE_LIMITS", "RATE_LIMIT", "TIMEOUT", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE"}
#: in a 400 that refuses the whole batch because a property is unknown to the account
MISSING_PROPERTY = "PROPERTY_DOESNT_EXIST"


def session(base_url: str, access_token: str) -> Session:
    return Session("hubspot", base_url, {"Authorization": f"Bearer {access_token}"})


def body(writes: list[RecordWrite]) -> dict[str, Any]:
    return {"inputs": [{"id": w.external_id, "properties": fields.properties(dict(w.fields))}
                       for w in writes]}


def describe(writes: list[RecordWrite]) -> list[PlannedRequest]:
    return [PlannedRequest("POST", PATH, body(writes))]


def _error_ids(error: dict[str, Any]) -> list[str]:
    context = error.get("context") or {}
    ids = context.get("ids") or context.get("id") or []
    if isinstance(ids, str | int):
        ids = [ids]
    return [str(i) for i in ids]


def write(session: Session, throttle: Throttle, writes: list[RecordWrite]) -> dict[str, WriteResult]:
    try:
        with throttle.slot():
            resp = session.call("POST", PATH, json=body(writes))
    except PlatformRateLimited as exc:
        if exc.retry_after is None and "DAILY" in (exc.body or ""):
            raise PlatformRateLimited(f"hubspot: the daily API limit is used up; waiting "
                                      f"{DAILY_LIMIT_WAIT:.0f}s", retry_after=DAILY_LIMIT_WAIT,
                                      platform="hubspot", status=429, body=exc.body) from None
        raise
    except PlatformValidationError as exc:
        if MISSING_PROPERTY in (exc.body or ""):
            raise PlatformFieldsMissing(
                "hubspot: a cx_ contact property does not exist in this HubSpot account: run "
                "`cx-connector setup` (HubSpot said: " + (exc.body or "")[:200] + ")",
                platform="hubspot", status=exc.status, body=exc.body) from None
        raise
    try:
        data = resp.json()
    except json.JSONDecodeError:
        data = {}
    wanted = [w.external_id for w in writes]
    results: dict[str, WriteResult] = {}
    for error in data.get("errors") or []:
        category = str(error.get("category") or "")
        message = f"hubspot {category or 'error'}: {error.get('message') or 'refused'}"
        for rid in _error_ids(error):
            if rid not in wanted:
                continue
            if category in GONE_CATEGORIES:
                results[rid] = WriteResult.gone(message)
            elif category in RETRY_CATEGORIES:
                results[rid] = WriteResult.retry(message)
            else:
                results[rid] = WriteResult.failed(message)
    returned = [r for r in data.get("results") or [] if isinstance(r, dict)]
    unknown = []
    for r in returned:
        rid = str(r.get("id"))
        if rid in wanted:
            results.setdefault(rid, WriteResult.ok())
        else:
            unknown.append(r)
    unanswered = [w for w in wanted if w not in results]
    for r in list(unknown):  # a merged contact answers under the id it was merged into
        merged_ids = str((r.get("properties") or {}).get("hs_merged_object_ids") or "").split(";")
        old = next((w for w in unanswered if w in merged_ids), None)
        if old is not None:
            results[old] = WriteResult.merged(str(r.get("id")), landed=True)
            unanswered.remove(old)
            unknown.remove(r)
    if len(unknown) == 1 and len(unanswered) == 1:  # one new id for one missing id: the same contact
        results[unanswered.pop()] = WriteResult.merged(str(unknown[0].get("id")), landed=True)
    if resp.status_code == 200 and not data.get("errors"):
        for rid in unanswered:  # COMPLETE without a per-record answer: HubSpot took it
            results[rid] = WriteResult.ok()
    return results
