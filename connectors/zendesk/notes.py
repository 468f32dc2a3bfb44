"""Alerts as a note on the Zendesk user.

A Zendesk user has a ``notes`` field, "any notes you want to store about the user",
which agents see (and edit) on the user's profile and end users never see
(https://developer.zendesk.com/api-reference/ticketing/users/users/). It is read with
``GET /api/v2/users/{user_id}.json`` and written with ``PUT /api/v2/users/{user_id}.json``
``{"user": {"notes": ...}}`` (Show User, Update User in the same reference).

The alert is appended below what the field holds, never replacing it. An alert whose
reference is already in the notes is not added again, so a retry after a lost answer
does not write it twice. The Users API has no conditional update: an agent editing
the notes in the instant between the read and the write would lose that edit.
"""

from __future__ import annotations

from cx_connector.connector import RecordAlert, Throttle
from cx_connector.errors import PlatformRecordGone
from cx_connector.http import Session


def note(alert: RecordAlert) -> str:
    return "\n".join((f"[{alert.at:%Y-%m-%d %H:%M} UTC] {alert.title}", *alert.lines)).rstrip()


def post(session: Session, throttle: Throttle, alert: RecordAlert) -> str:
    path = f"/api/v2/users/{alert.external_id}.json"
    throttle.wait()
    user = session.call("GET", path).json().get("user") or {}
    if user.get("active") is False:
        raise PlatformRecordGone(
            f"zendesk: user {alert.external_id} is deleted", platform="zendesk", status=200
        )
    notes = str(user.get("notes") or "")
    if alert.key in notes:
        return "already there"
    text = note(alert)
    throttle.wait()
    session.call(
        "PUT", path, json={"user": {"notes": f"{notes.rstrip()}\n\n{text}" if notes.strip() else text}}
    )
    return "note appended"
