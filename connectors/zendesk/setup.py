"""``cx-connector setup`` for Zendesk: one user field per score, created only when
missing (https://developer.zendesk.com/api-reference/ticketing/users/user_fields/).
A field whose key exists with another type is reported, never changed."""

from __future__ import annotations

from typing import Any

from connectors.zendesk import fields
from cx_connector.connector import PlannedRequest, SetupItem, SetupReport, Throttle
from cx_connector.http import Session, patiently

PATH = "/api/v2/user_fields.json"


def _call(session: Session, throttle: Throttle, method: str, path: str, **kw: Any) -> Any:
    """One request in the budget; a 429 is waited out (Retry-After) and asked again."""
    def once() -> Any:
        with throttle.slot():
            return session.call(method, path, **kw)
    return patiently(throttle, once)


def existing(session: Session, throttle: Throttle) -> dict[str, dict[str, Any]]:
    """Every user field of the account, by key (follows ``next_page``)."""
    out: dict[str, dict[str, Any]] = {}
    url: str | None = PATH
    while url:
        data = _call(session, throttle, "GET", url).json()
        for f in data.get("user_fields") or []:
            out[str(f.get("key"))] = f
        url = data.get("next_page")
    return out


def compare(have: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    if have.get("type") != wanted["type"]:
        return (f"exists with type {have.get('type')!r}, cx-connector needs {wanted['type']!r}: "
                "rename or delete the user field in Zendesk, then run setup again")
    if wanted["type"] == "dropdown":
        values = {o.get("value") for o in have.get("custom_field_options") or []}
        missing = [o["value"] for o in wanted["custom_field_options"] if o["value"] not in values]
        if missing:
            return f"exists without the options {', '.join(missing)}: add them in Zendesk"
    return None


def run(session: Session, throttle: Throttle, *, dry_run: bool) -> SetupReport:
    have = existing(session, throttle)
    items: list[SetupItem] = []
    for body in fields.definitions():
        wanted = body["user_field"]
        name = f"user field {wanted['key']}"
        found = have.get(wanted["key"])
        if found is not None:
            problem = compare(found, wanted)
            items.append(SetupItem(name, "conflict", problem) if problem else
                         SetupItem(name, "exists", str(found.get("type"))))
            continue
        req = PlannedRequest("POST", PATH, body)
        if dry_run:
            items.append(SetupItem(name, "would_create", request=req))
            continue
        _call(session, throttle, req.method, req.path, json=req.body)
        items.append(SetupItem(name, "created", wanted["type"], request=req))
    return SetupReport("zendesk", tuple(items))
