"""Score write-back to Shopify customer metafields: ``metafieldsSet``.

https://shopify.dev/docs/api/admin-graphql/latest/mutations/metafieldsSet: up to 25
metafields per call, across customers, so a call is packed with the changed fields
of several customers (the core fills every call to 25). The mutation is atomic:
when ``userErrors`` name an element (``elementIndex``), nothing of that call was
saved; the customer of that element failed and the others are sent again. A score
that no longer has a value is removed with ``metafieldsDelete`` in the same call
(https://shopify.dev/docs/api/admin-graphql/latest/mutations/metafieldsDelete).
"""

from __future__ import annotations

from typing import Any

from connectors.shopify import fields, graphql
from cx_connector.connector import PlannedRequest, RecordWrite, Throttle, WriteResult
from cx_connector.errors import PlatformValidationError
from cx_connector.http import Session

MAX_METAFIELDS = 25
_SET = ("metafieldsSet(metafields: $metafields) { metafields { key namespace ownerId } "
        "userErrors { field message code elementIndex } }")
_DELETE = ("metafieldsDelete(metafields: $deletes) { deletedMetafields { key namespace ownerId } "
           "userErrors { field message } }")
SET = f"mutation MetafieldsSet($metafields: [MetafieldsSetInput!]!) {{ {_SET} }}"
DELETE = f"mutation MetafieldsDelete($deletes: [MetafieldIdentifierInput!]!) {{ {_DELETE} }}"
SET_AND_DELETE = (f"mutation MetafieldsSetDelete($metafields: [MetafieldsSetInput!]!, "
                  f"$deletes: [MetafieldIdentifierInput!]!) {{ {_SET} {_DELETE} }}")
GONE_HINTS = ("does not exist", "not found", "owner_not_found")


def request(writes: list[RecordWrite]) -> tuple[str, dict[str, Any], list[str], list[str]]:
    """The document, its variables, and the record of every set / delete element."""
    sets: list[dict[str, Any]] = []
    deletes: list[dict[str, Any]] = []
    set_owner: list[str] = []
    delete_owner: list[str] = []
    for w in writes:
        owner = fields.owner_id(w.external_id)
        for name, v in w.fields.items():
            ident = {"ownerId": owner, "namespace": fields.NAMESPACE, "key": fields.key(name)}
            if v is None:
                deletes.append(ident)
                delete_owner.append(w.external_id)
            else:
                sets.append({**ident, "type": fields.metafield_type(fields.FIELDS[name]),
                             "value": fields.value(name, v)})
                set_owner.append(w.external_id)
    variables: dict[str, Any] = {}
    if sets:
        variables["metafields"] = sets
    if deletes:
        variables["deletes"] = deletes
    query = SET_AND_DELETE if sets and deletes else (SET if sets else DELETE)
    return query, variables, set_owner, delete_owner


def describe(writes: list[RecordWrite], api_version: str) -> list[PlannedRequest]:
    query, variables, _, _ = request(writes)
    return [PlannedRequest("POST", graphql.path(api_version), {"query": query, "variables": variables})]


def _index(error: dict[str, Any]) -> int | None:
    if error.get("elementIndex") is not None:
        return int(error["elementIndex"])
    for part in error.get("field") or []:
        if str(part).isdigit():
            return int(part)
    return None


def write(session: Session, throttle: Throttle, api_version: str,
          writes: list[RecordWrite]) -> dict[str, WriteResult]:
    query, variables, set_owner, delete_owner = request(writes)
    cost = graphql.MUTATION_COST * (("metafields" in variables) + ("deletes" in variables))
    data = graphql.call(session, throttle, api_version, query, variables, cost=cost)
    bad: dict[str, WriteResult] = {}
    unplaced: list[str] = []
    for key, owners in (("metafieldsSet", set_owner), ("metafieldsDelete", delete_owner)):
        for error in (data.get(key) or {}).get("userErrors") or []:
            i = _index(error)
            message = f"shopify {key}: {error.get('message')} ({error.get('code') or 'invalid'})"
            if i is None or i >= len(owners):
                unplaced.append(message)
                continue
            gone = any(h in message.lower() for h in GONE_HINTS)
            bad[owners[i]] = WriteResult.gone(message) if gone else WriteResult.failed(message)
    ids = [w.external_id for w in writes]
    if unplaced:
        if len(set(ids)) > 1:  # cannot tell whose value it was: let the core split the call
            raise PlatformValidationError("; ".join(unplaced), platform="shopify", status=200)
        return {ids[0]: WriteResult.failed("; ".join(unplaced))}
    if not bad:
        return {i: WriteResult.ok() for i in ids}
    # atomic: nothing was saved; the records without an error go again without the bad one
    return {i: bad.get(i) or WriteResult.resend("not saved: another customer's value in the same "
                                                "metafieldsSet call was refused") for i in ids}
