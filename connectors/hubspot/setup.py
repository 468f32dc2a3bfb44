"""``cx-connector setup`` for HubSpot: the ``cx_connector`` property group and one contact
property per score field, created only when missing (CRM v3 properties API,
https://developers.hubspot.com/docs/api/crm/properties). A property that exists
with another type is reported as a conflict and never overwritten: changing a
property's type can destroy the values staff already have in it."""

from __future__ import annotations

from typing import Any

from connectors.hubspot import fields
from cx_connector.connector import PlannedRequest, SetupItem, SetupReport, Throttle
from cx_connector.errors import PlatformRecordGone
from cx_connector.http import Session, patiently

GROUPS = "/crm/v3/properties/contacts/groups"
PROPERTIES = "/crm/v3/properties/contacts"


def _call(session: Session, throttle: Throttle, method: str, path: str, **kw: Any) -> Any:
    """One request in the budget; a 429 (the budget is shared with the account's other
    apps) is waited out and asked again rather than failing the command."""
    def once() -> Any:
        with throttle.slot():
            return session.call(method, path, **kw)
    return patiently(throttle, once)


def _existing_properties(session: Session, throttle: Throttle) -> dict[str, dict[str, Any]]:
    data = _call(session, throttle, "GET", PROPERTIES, params={"archived": "false"}).json()
    return {p["name"]: p for p in data.get("results", [])}


def compare(existing: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why an existing property cannot hold the score (None: it can)."""
    if existing.get("type") != wanted["type"]:
        return (f"exists with type {existing.get('type')!r}, cx-connector needs {wanted['type']!r}: "
                f"rename or delete the property in HubSpot, then run setup again")
    if wanted["type"] == "enumeration":
        have = {o.get("value") for o in existing.get("options") or []}
        missing = [o["value"] for o in wanted["options"] if o["value"] not in have]
        if missing:
            return f"exists without the options {', '.join(missing)}: add them in HubSpot"
    return None


def run(session: Session, throttle: Throttle, *, dry_run: bool) -> SetupReport:
    items: list[SetupItem] = []
    try:
        _call(session, throttle, "GET", f"{GROUPS}/{fields.GROUP['name']}")
        items.append(SetupItem(f"group {fields.GROUP['name']}", "exists"))
    except PlatformRecordGone:
        req = PlannedRequest("POST", GROUPS, fields.GROUP)
        if dry_run:
            items.append(SetupItem(f"group {fields.GROUP['name']}", "would_create", request=req))
        else:
            _call(session, throttle, req.method, req.path, json=req.body)
            items.append(SetupItem(f"group {fields.GROUP['name']}", "created", request=req))
    existing = _existing_properties(session, throttle)
    for wanted in fields.definitions():
        name = f"property {wanted['name']}"
        have = existing.get(wanted["name"])
        if have is not None:
            problem = compare(have, wanted)
            items.append(SetupItem(name, "conflict", problem) if problem else
                         SetupItem(name, "exists", f"{have.get('type')}/{have.get('fieldType')}"))
            continue
        req = PlannedRequest("POST", PROPERTIES, wanted)
        if dry_run:
            items.append(SetupItem(name, "would_create", request=req))
            continue
        _call(session, throttle, req.method, req.path, json=req.body)
        items.append(SetupItem(name, "created", f"{wanted['type']}/{wanted['fieldType']}", request=req))
    return SetupReport("hubspot", tuple(items))
