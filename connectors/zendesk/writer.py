"""Score write-back to Zendesk users: ``PUT /api/v2/users/update_many.json``.

https://developer.zendesk.com/api-reference/ticketing/users/users/#update-many-users:
up to 100 users ``{"id", "user_fields"}`` per call. The update runs as a background
job: the answer is a ``job_status`` to follow at ``GET /api/v2/job_statuses/{id}``
until it is ``completed`` (or ``failed``/``killed``); its ``results[]`` say per
user id whether the update worked
(https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/).
Every poll is a request against the per-minute budget, so the first comes after
:data:`FIRST_POLL` seconds and the interval doubles from there. A poll refused with
429 (or lost to an outage) is asked again after ``Retry-After`` / a backoff: sending
the update again would cost a request and a job more.
"""

from __future__ import annotations

from typing import Any

from connectors.zendesk import fields
from cx_connector.connector import PlannedRequest, RecordWrite, Throttle, WriteResult
from cx_connector.errors import PlatformRecordGone
from cx_connector.http import Session, patiently

PATH = "/api/v2/users/update_many.json"
JOB_PATH = "/api/v2/job_statuses/{id}.json"
MAX_USERS = 100
#: seconds before the first job-status poll; doubled per poll up to MAX_POLL
FIRST_POLL = 1.0
MAX_POLL = 10.0
#: a job not finished after this long is given up (and the write retried: it is idempotent)
JOB_TIMEOUT = 300.0
DONE = {"completed", "failed", "killed"}
OK_STATUSES = {"updated", "created", "unchanged"}


def session(base_url: str, email: str, api_token: str) -> Session:
    s = Session("zendesk", base_url)
    s.auth = (f"{email}/token", api_token)
    return s


def _user_id(external_id: str) -> int | str:
    return int(external_id) if external_id.isdigit() else external_id


def body(writes: list[RecordWrite]) -> dict[str, Any]:
    return {"users": [{"id": _user_id(w.external_id), "user_fields": fields.user_fields(dict(w.fields))}
                      for w in writes]}


def describe(writes: list[RecordWrite]) -> list[PlannedRequest]:
    return [PlannedRequest("PUT", PATH, body(writes))]


def _result(item: dict[str, Any]) -> WriteResult:
    status = str(item.get("status") or "").lower()
    error = str(item.get("error") or item.get("errors") or "")
    if item.get("success") is True or (status in OK_STATUSES and not error):
        return WriteResult.ok()
    reason = f"zendesk: {error or status or 'failed'}: {item.get('details') or ''}".rstrip(": ")
    if "notfound" in error.lower().replace(" ", "") or "not found" in reason.lower():
        return WriteResult.gone(reason)
    return WriteResult.failed(reason)


def write(session: Session, throttle: Throttle, writes: list[RecordWrite]) -> dict[str, WriteResult]:
    with throttle.slot():
        job = session.call("PUT", PATH, json=body(writes)).json().get("job_status") or {}
    wanted = [w.external_id for w in writes]
    delay, waited = FIRST_POLL, 0.0
    while str(job.get("status")) not in DONE:
        if waited >= JOB_TIMEOUT or not job.get("id"):
            reason = f"zendesk: update job {job.get('id')} still {job.get('status')} after {waited:.0f}s"
            return {w: WriteResult.retry(reason) for w in wanted}
        throttle.sleep(delay)
        waited += delay
        delay = min(delay * 2, MAX_POLL)
        path = JOB_PATH.format(id=job["id"])

        def poll(path: str = path) -> dict[str, Any]:
            with throttle.slot():
                return session.call("GET", path).json().get("job_status") or {}

        try:
            job = patiently(throttle, poll, transient=True)
        except PlatformRecordGone:
            return {w: WriteResult.retry(f"zendesk: job status {job['id']} expired before it finished")
                    for w in wanted}
    if job.get("status") != "completed":
        reason = f"zendesk: update job {job.get('id')} {job.get('status')}: {job.get('message') or ''}"
        return {w: WriteResult.retry(reason.rstrip(": ")) for w in wanted}
    results: dict[str, WriteResult] = {}
    for item in job.get("results") or []:
        if not isinstance(item, dict):
            continue
        rid = str(item.get("id"))
        if rid not in wanted and isinstance(item.get("index"), int) and 0 <= item["index"] < len(wanted):
            rid = wanted[item["index"]]  # a failed user may be named by its place in the request
        if rid in wanted:
            results[rid] = _result(item)
    return results
