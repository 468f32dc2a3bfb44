"""``cx-connector setup`` for Shopify: one pinned customer metafield definition per score
in namespace ``cx`` (``metafieldDefinitionCreate``,
https://shopify.dev/docs/api/admin-graphql/latest/mutations/metafieldDefinitionCreate),
created only when missing. A definition that exists with another type is reported
and left alone (changing it would orphan the values already stored)."""

from __future__ import annotations

from typing import Any

from connectors.shopify import fields, graphql
from cx_connector.connector import PlannedRequest, SetupItem, SetupReport, Throttle
from cx_connector.http import Session

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
        data = graphql.call(session, throttle, api_version, LIST, {"after": after}, cost=LIST_COST)
        page = data.get("metafieldDefinitions") or {}
        for node in page.get("nodes") or []:
            out[str(node.get("key"))] = node
        info = page.get("pageInfo") or {}
        if not info.get("hasNextPage"):
            return out
        after = info.get("endCursor")


def run(session: Session, throttle: Throttle, api_version: str, *, dry_run: bool) -> SetupReport:
    have = existing(session, throttle, api_version)
    items: list[SetupItem] = []
    for wanted in fields.definitions():
        name = f"metafield definition {wanted['namespace']}.{wanted['key']}"
        found = have.get(wanted["key"])
        if found is not None:
            got = (found.get("type") or {}).get("name")
            if got != wanted["type"]:
                items.append(SetupItem(name, "conflict", (
                    f"exists with type {got!r}, cx-connector needs {wanted['type']!r}: delete the "
                    "definition in Shopify (Settings > Custom data > Customers), then run setup again")))
            else:
                items.append(SetupItem(name, "exists", str(got)))
            continue
        req = PlannedRequest("POST", graphql.path(api_version),
                             {"query": CREATE, "variables": {"definition": wanted}})
        if dry_run:
            items.append(SetupItem(name, "would_create", request=req))
            continue
        data = graphql.call(session, throttle, api_version, CREATE, {"definition": wanted})
        errors = (data.get("metafieldDefinitionCreate") or {}).get("userErrors") or []
        if any(e.get("code") == "TAKEN" for e in errors):
            items.append(SetupItem(name, "exists", "created meanwhile by someone else"))
        elif errors:
            items.append(SetupItem(name, "failed", "; ".join(str(e.get("message")) for e in errors),
                                   request=req))
        else:
            items.append(SetupItem(name, "created", wanted["type"], request=req))
    return SetupReport("shopify", tuple(items))
