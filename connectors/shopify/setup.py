"""``cx-connector setup`` for Shopify: one pinned customer metafield definition per score
in namespace ``cx`` (``metafieldDefinitionCreate``,
https://shopify.dev/docs/api/admin-graphql/latest/mutations/metafieldDefinitionCreate),
created only when missing. A definition that exists with another type is reported
and left alone (changing it would orphan the values already stored)."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from connectors.shopify import fields, graphql
from cx_connector.connector import PlannedRequest, SetupItem, SetupReport, Throttle
from cx_connector.http import Session, patiently

LIST = ("query CxDefinitions($after: String) { metafieldDefinitions(first: 250, after: $after, "
        "ownerType: CUSTOMER, namespace: \"cx\") { nodes { id namespace key name type { name } "
        "validations { name value } } pageInfo { hasNextPage endCursor } } }")
CREATE = ("mutation CxDefinitionCreate($definition: MetafieldDefinitionInput!) { "
          "metafieldDefinitionCreate(definition: $definition) { createdDefinition { id namespace key } "
          "userErrors { field message code } } }")
#: a query of 250 nodes is charged more than a mutation before its real cost is known
LIST_COST = 30.0


def existing(session: Session, throttle: Throttle, api_version: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    after = None
    while True:
        data = patiently(throttle, partial(graphql.call, session, throttle, api_version, LIST,
                                           {"after": after}, cost=LIST_COST))
        page = data.get("metafieldDefinitions") or {}
        for node in page.get("nodes") or []:
            out[str(node.get("key"))] = node
        info = page.get("pageInfo") or {}
        if not info.get("hasNextPage"):
            return out
        after = info.get("endCursor")


def _choices(definition: dict[str, Any]) -> list[str] | None:
    for v in definition.get("validations") or []:
        if v.get("name") == "choices":
            try:
                return [str(c) for c in json.loads(v.get("value") or "[]")]
            except ValueError:
                return []
    return None


def compare(have: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why an existing definition cannot hold the score (None: it can)."""
    got = (have.get("type") or {}).get("name")
    if got != wanted["type"]:
        return (f"exists with type {got!r}, cx-connector needs {wanted['type']!r}: delete the "
                "definition in Shopify (Settings > Custom data > Customers), then run setup again")
    needed = _choices(wanted)
    if needed is not None:
        allowed = _choices(have)
        missing = [c for c in needed if allowed is not None and c not in allowed]
        if missing:  # Shopify would refuse these values (userErrors) on every write
            return (f"exists with choices that lack {', '.join(missing)}: add them to the definition "
                    "in Shopify (Settings > Custom data > Customers)")
    return None


def run(session: Session, throttle: Throttle, api_version: str, *, dry_run: bool) -> SetupReport:
    have = existing(session, throttle, api_version)
    items: list[SetupItem] = []
    for wanted in fields.definitions():
        name = f"metafield definition {wanted['namespace']}.{wanted['key']}"
        found = have.get(wanted["key"])
        if found is not None:
            problem = compare(found, wanted)
            items.append(SetupItem(name, "conflict", problem) if problem else
                         SetupItem(name, "exists", str((found.get("type") or {}).get("name"))))
            continue
        req = PlannedRequest("POST", graphql.path(api_version),
                             {"query": CREATE, "variables": {"definition": wanted}})
        if dry_run:
            items.append(SetupItem(name, "would_create", request=req))
            continue
        data = patiently(throttle, partial(graphql.call, session, throttle, api_version, CREATE,
                                           {"definition": wanted}))
        errors = (data.get("metafieldDefinitionCreate") or {}).get("userErrors") or []
        if any(e.get("code") == "TAKEN" for e in errors):
            items.append(SetupItem(name, "exists", "created meanwhile by someone else"))
        elif errors:
            items.append(SetupItem(name, "failed", "; ".join(str(e.get("message")) for e in errors),
                                   request=req))
        else:
            items.append(SetupItem(name, "created", wanted["type"], request=req))
    return SetupReport("shopify", tuple(items))
