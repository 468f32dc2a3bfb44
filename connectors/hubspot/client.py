"""The HubSpot API calls cx-connector makes, on :class:`cx_connector.http.Session` (Bearer token).

Read-only calls used by the enrichment job (never inside a webhook request):

* contacts batch read by id, up to 100 ids per call
  (https://developers.hubspot.com/docs/api/crm/contacts, ``POST /crm/v3/objects/contacts/batch/read``);
* deal/ticket -> contact associations, batch read
  (https://developers.hubspot.com/docs/api-reference/legacy/crm/associations/associate-records/batch/get-associations,
  ``POST /crm/v4/associations/{from}/contacts/batch/read``), and a plain batch read of
  the deals/tickets without any contact, to tell "no contact yet" from "deleted";
* a Conversations inbox thread, for its ``associatedContactId``
  (https://developers.hubspot.com/docs/api-reference/legacy/conversations/conversations/threads,
  ``GET /conversations/v3/conversations/threads/{threadId}``; there is no batch form).

HTTP failures arrive as the core's error tree (``Session.call``): a 429 is
:class:`~cx_connector.errors.PlatformRateLimited`, a 5xx or timeout
:class:`~cx_connector.errors.PlatformUnavailable`, and the caller decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cx_connector.errors import PlatformRecordGone
from cx_connector.http import Session

#: HubSpot's batch endpoints take at most 100 inputs
BATCH = 100
#: ...and at most 50 when property history is asked for
#: (https://developers.hubspot.com/docs/api/crm/understanding-the-crm, "propertiesWithHistory")
HISTORY_BATCH = 50

#: properties read for a contact; ``hs_merged_object_ids`` maps a merged-away id that
#: HubSpot answers with the surviving record back to the id we asked for
CONTACT_PROPERTIES = ("email", "firstname", "lastname", "phone", "hs_merged_object_ids")


@dataclass(frozen=True)
class Contact:
    id: str
    email: str | None
    phone: str | None
    name: str | None


def chunks(ids: list[str], size: int = BATCH) -> Iterator[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def _contact(record: dict[str, Any]) -> Contact:
    props = record.get("properties") or {}
    name = " ".join(p.strip() for p in (props.get("firstname"), props.get("lastname"))
                    if isinstance(p, str) and p.strip())
    return Contact(id=str(record.get("id")), email=props.get("email") or None,
                   phone=props.get("phone") or None, name=name or None)


class HubSpotClient:
    def __init__(self, base_url: str, access_token: str) -> None:
        self.session = Session("hubspot", base_url,
                               headers={"Authorization": f"Bearer {access_token}"})

    def _batch_read(self, object_type: str, ids: list[str], properties: Iterable[str],
                    history: Iterable[str] = ()) -> list[dict[str, Any]]:
        try:
            resp = self.session.call("POST", f"/crm/v3/objects/{object_type}/batch/read", json={
                "inputs": [{"id": i} for i in ids],
                "properties": list(properties),
                "propertiesWithHistory": list(history),
            })
        except PlatformRecordGone:  # none of the ids exists
            return []
        # 200 (all found) or 207 (some not found, listed under "errors"): results are the found ones
        return [r for r in (resp.json().get("results") or []) if isinstance(r, dict)]

    def read_contacts(self, ids: list[str]) -> dict[str, Contact | None]:
        """Contact per requested id (``None``: deleted). A merged-away id maps to the
        surviving contact (whose ``id`` differs from the one asked for)."""
        out: dict[str, Contact | None] = {}
        for chunk in chunks(list(dict.fromkeys(ids))):
            records = self._batch_read("contacts", chunk, CONTACT_PROPERTIES)
            by_id = {str(r.get("id")): r for r in records}
            merged: dict[str, dict[str, Any]] = {}
            for r in records:
                for old in str((r.get("properties") or {}).get("hs_merged_object_ids") or "").split(";"):
                    if old.strip():
                        merged[old.strip()] = r
            for i in chunk:
                record = by_id.get(i) or merged.get(i)
                out[i] = _contact(record) if record is not None else None
        return out

    def read_history(self, object_type: str, ids: list[str],
                     history: Iterable[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Every value each record's ``history`` properties had, newest first, with its
        ``timestamp`` and ``sourceType`` (one request: at most :data:`HISTORY_BATCH` ids).
        Deleted records are left out."""
        if len(ids) > HISTORY_BATCH:
            raise ValueError(f"a batch read with history takes at most {HISTORY_BATCH} ids")
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for record in self._batch_read(object_type, ids, (), history):
            changes = record.get("propertiesWithHistory")
            out[str(record.get("id"))] = changes if isinstance(changes, dict) else {}
        return out

    def existing(self, object_type: str, ids: list[str]) -> set[str]:
        """Which of these deals/tickets still exist."""
        found: set[str] = set()
        for chunk in chunks(list(dict.fromkeys(ids))):
            found |= {str(r.get("id")) for r in self._batch_read(object_type, chunk, ())}
        return found

    def associated_contacts(self, object_type: str, ids: list[str]) -> dict[str, list[str]]:
        """Contact ids associated with each deal/ticket (ids without any are left out)."""
        out: dict[str, list[str]] = {}
        for chunk in chunks(list(dict.fromkeys(ids))):
            try:
                resp = self.session.call(
                    "POST", f"/crm/v4/associations/{object_type}/contacts/batch/read",
                    json={"inputs": [{"id": i} for i in chunk]})
            except PlatformRecordGone:
                continue
            for result in resp.json().get("results") or []:
                if not isinstance(result, dict):
                    continue
                origin = str((result.get("from") or {}).get("id"))
                to = [str(t.get("toObjectId")) for t in result.get("to") or []
                      if isinstance(t, dict) and t.get("toObjectId") is not None]
                if to:
                    out.setdefault(origin, []).extend(to)
        return out

    def thread_contact(self, thread_id: str) -> tuple[bool, str | None]:
        """``(exists, associatedContactId)`` of a Conversations inbox thread."""
        try:
            resp = self.session.call("GET", f"/conversations/v3/conversations/threads/{thread_id}")
        except PlatformRecordGone:
            return False, None
        contact = resp.json().get("associatedContactId")
        return True, (str(contact) if contact not in (None, "") else None)
