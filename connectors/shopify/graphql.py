"""Calling the Shopify Admin GraphQL API within its cost budget.

https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits: every answer
carries ``extensions.cost.throttleStatus`` (``currentlyAvailable``,
``maximumAvailable``, ``restoreRate``), which is handed to the throttle so it
follows the shop's real bucket. A throttled call is answered either with HTTP 429
or with HTTP 200 and ``errors[].extensions.code == "THROTTLED"``; both become
:class:`~cx_connector.errors.PlatformRateLimited`.
"""

from __future__ import annotations

from typing import Any

from cx_connector.connector import Throttle
from cx_connector.errors import PlatformRateLimited, PlatformUnavailable, PlatformValidationError
from cx_connector.http import Session

#: the cost a single mutation is charged before its real cost is known
MUTATION_COST = 10.0


def session(base_url: str, access_token: str) -> Session:
    return Session("shopify", base_url, {"X-Shopify-Access-Token": access_token})


def path(api_version: str) -> str:
    return f"/admin/api/{api_version}/graphql.json"


def call(session: Session, throttle: Throttle, api_version: str, query: str,
         variables: dict[str, Any], *, cost: float = MUTATION_COST) -> dict[str, Any]:
    """POST one GraphQL document; return ``data``. Raises for throttling and top-level errors."""
    with throttle.slot(cost):  # observe() inside: the figures belong to this request
        body = session.call("POST", path(api_version), json={"query": query, "variables": variables}).json()
        extensions = body.get("extensions") or {}
        status = (extensions.get("cost") or {}).get("throttleStatus") or {}
        if status:
            throttle.observe(available=status.get("currentlyAvailable"),
                             capacity=status.get("maximumAvailable"),
                             refill_per_second=status.get("restoreRate"))
    errors = body.get("errors") or []
    if errors:
        codes = {str((e.get("extensions") or {}).get("code") or "") for e in errors if isinstance(e, dict)}
        message = "; ".join(str(e.get("message")) for e in errors if isinstance(e, dict))[:300]
        if "THROTTLED" in codes:
            wait = None
            requested = (extensions.get("cost") or {}).get("requestedQueryCost")
            if status and requested and status.get("restoreRate"):
                wait = max(0.0, (float(requested) - float(status.get("currentlyAvailable") or 0))
                           / float(status["restoreRate"]))
            raise PlatformRateLimited(f"shopify: throttled: {message}", retry_after=wait,
                                      platform="shopify", status=200)
        if codes & {"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"}:
            raise PlatformUnavailable(f"shopify: {message}; will retry", platform="shopify", status=200)
        raise PlatformValidationError(f"shopify: GraphQL errors: {message}", platform="shopify",
                                      status=200)
    return body.get("data") or {}
