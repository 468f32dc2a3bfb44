"""Alerts as HubSpot tasks on the contact: ``POST /crm/v3/objects/tasks``.

https://developers.hubspot.com/docs/api/crm/tasks: ``properties`` with
``hs_timestamp`` (required: the due date, ISO-8601 or epoch ms), ``hs_task_subject``,
``hs_task_body`` (rich text: HTML), ``hs_task_status`` (``NOT_STARTED``),
``hs_task_priority`` (``LOW``/``MEDIUM``/``HIGH``), ``hs_task_type`` (``TODO``) and
``hubspot_owner_id``; ``associations`` ``[{"to": {"id": contact}, "types":
[{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 204}]}]``, 204 being
the HubSpot-defined task-to-contact type the guide's example uses. Scope:
``crm.objects.contacts.write``, which write-back needs anyway.

The task is assigned to the contact's owner by default (``alert_task_owner:
contact_owner``), read with ``GET /crm/v3/objects/contacts/{id}?properties=hubspot_owner_id``
(https://developers.hubspot.com/docs/api/crm/contacts), which also tells a deleted
contact (404) before anything is created.

HubSpot has no idempotency key for creating objects, so when an earlier attempt may
have landed (``maybe_sent``) the contact's tasks are read first (associations batch
read, https://developers.hubspot.com/docs/api-reference/legacy/crm/associations/associate-records/batch/get-associations,
then a tasks batch read of the newest 100) and a task whose body carries the alert's
reference is not created again.
"""

from __future__ import annotations

import html
from datetime import UTC
from typing import Any

from cx_connector.connector import RecordAlert, Throttle
from cx_connector.http import Session

PATH = "/crm/v3/objects/tasks"
#: HubSpot-defined association type id: task to contact
TASK_TO_CONTACT = 204
#: tasks read when looking for an earlier attempt (a batch read takes at most 100 ids)
LOOK_BACK = 100


def body(alert: RecordAlert, *, owner_id: str | None, priority: str) -> dict[str, Any]:
    properties = {
        "hs_timestamp": alert.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{alert.at.microsecond // 1000:03d}Z",
        "hs_task_subject": alert.title[:255],
        "hs_task_body": "<br>".join(html.escape(line) for line in alert.lines),
        "hs_task_status": "NOT_STARTED",
        "hs_task_priority": priority,
        "hs_task_type": "TODO",
    }
    if owner_id:
        properties["hubspot_owner_id"] = owner_id
    return {
        "properties": properties,
        "associations": [
            {
                "to": {"id": alert.external_id},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_CONTACT}],
            }
        ],
    }


def contact_owner(session: Session, throttle: Throttle, contact_id: str) -> str | None:
    throttle.wait()
    resp = session.call(
        "GET", f"/crm/v3/objects/contacts/{contact_id}", params={"properties": "hubspot_owner_id"}
    )
    owner = ((resp.json() or {}).get("properties") or {}).get("hubspot_owner_id")
    return str(owner) if owner not in (None, "") else None


def existing(session: Session, throttle: Throttle, alert: RecordAlert) -> str | None:
    """The id of a task on the contact that already carries ``alert.key``, if any."""
    throttle.wait()
    resp = session.call(
        "POST", "/crm/v4/associations/contacts/tasks/batch/read", json={"inputs": [{"id": alert.external_id}]}
    )
    ids: list[str] = []
    for result in resp.json().get("results") or []:
        ids += [str(t.get("toObjectId")) for t in result.get("to") or [] if t.get("toObjectId") is not None]
    ids = sorted(set(ids), key=lambda i: (len(i), i), reverse=True)[:LOOK_BACK]  # newest first
    if not ids:
        return None
    throttle.wait()
    resp = session.call(
        "POST",
        "/crm/v3/objects/tasks/batch/read",
        json={"inputs": [{"id": i} for i in ids], "properties": ["hs_task_body"]},
    )
    for task in resp.json().get("results") or []:
        if alert.key in str((task.get("properties") or {}).get("hs_task_body") or ""):
            return str(task.get("id"))
    return None


def post(session: Session, throttle: Throttle, alert: RecordAlert, *, owner: str, priority: str) -> str:
    """Create the task (see the module docstring); returns its id."""
    owner_id = None
    if owner == "contact_owner":
        owner_id = contact_owner(session, throttle, alert.external_id)
    elif owner != "none":
        owner_id = owner
    if alert.maybe_sent:
        found = existing(session, throttle, alert)
        if found:
            return f"{found} (already there)"
    throttle.wait()
    resp = session.call("POST", PATH, json=body(alert, owner_id=owner_id, priority=priority))
    return str(resp.json().get("id"))
