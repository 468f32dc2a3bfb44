"""The Zendesk Support API, as far as cx-connector reads it.

Authentication is an API token: HTTP basic auth with ``{email}/token`` as the user
name and the token as the password.
https://developer.zendesk.com/api-reference/introduction/security-and-auth/

Every call goes through :class:`cx_connector.http.Session`, which maps a 429 onto
:class:`~cx_connector.errors.PlatformRateLimited` with Zendesk's ``Retry-After``
(https://developer.zendesk.com/api-reference/introduction/rate-limits/), a 401/403
onto :class:`~cx_connector.errors.PlatformAuthError`, and so on: callers (the
enrichment job) decide about retrying.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cx_connector.connector import CustomerRef, Link, Lookup, parse_json
from cx_connector.errors import PlatformAPIError
from cx_connector.http import Session

#: ``users/show_many`` takes at most 100 ids per request
SHOW_MANY_LIMIT = 100


class ZendeskClient:
    def __init__(self, *, base_url: str, email: str, api_token: str, source: str = "zendesk",
                 session: Session | None = None) -> None:
        self.source = source
        self.session = session or Session(source, base_url)
        self.session.auth = (f"{email}/token", api_token)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.session.call(method, path, **kw)
        try:
            return parse_json(resp.content)  # ids stay exact, whatever their size
        except Exception as exc:
            raise PlatformAPIError(f"{self.source}: {method} {path} answered with something that is not "
                                   f"JSON: {exc}", platform=self.source, status=resp.status_code) from None

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """``GET path`` as a JSON object (ids exact); the backfill's reads go through here."""
        body = self._json("GET", path, params=params)
        if not isinstance(body, dict):
            raise PlatformAPIError(f"{self.source}: GET {path} answered with a JSON "
                                   f"{type(body).__name__}, not an object", platform=self.source)
        return body

    def show_many_users(self, ids: list[str]) -> list[dict[str, Any]]:
        """``GET /api/v2/users/show_many.json?ids=1,2,3`` (at most 100 ids).
        https://developer.zendesk.com/api-reference/ticketing/users/users/#show-many-users"""
        if len(ids) > SHOW_MANY_LIMIT:
            raise ValueError(f"users/show_many takes at most {SHOW_MANY_LIMIT} ids, got {len(ids)}")
        if not ids:
            return []
        body = self._json("GET", "/api/v2/users/show_many.json", params={"ids": ",".join(ids)})
        users = body.get("users") if isinstance(body, dict) else None
        if not isinstance(users, list):
            raise PlatformAPIError(f"{self.source}: users/show_many answered without a users list",
                                   platform=self.source)
        return [u for u in users if isinstance(u, dict)]

    def show_satisfaction_rating(self, rating_id: str) -> dict[str, Any]:
        """``GET /api/v2/satisfaction_ratings/{id}.json`` (legacy CSAT), for re-reading a rating.
        https://developer.zendesk.com/api-reference/ticketing/ticket-management/satisfaction_ratings/"""
        body = self._json("GET", f"/api/v2/satisfaction_ratings/{rating_id}.json")
        rating = body.get("satisfaction_rating") if isinstance(body, dict) else None
        if not isinstance(rating, dict):
            raise PlatformAPIError(f"{self.source}: satisfaction rating {rating_id} answered without a "
                                   "satisfaction_rating object", platform=self.source)
        return rating

    def lookup_users(self, source_ids: Iterable[str]) -> Lookup:
        """Contact details of Zendesk users, in batches of 100.

        A user Zendesk does not return, or returns as deleted (``active: false``), is
        *missing*: the enrichment job marks it gone and never writes to it. Ids that
        cannot be Zendesk user ids (not numeric) are missing without a request.
        """
        ids = list(dict.fromkeys(str(i) for i in source_ids))
        wanted = [i for i in ids if i.isascii() and i.isdigit()]
        asked = set(wanted)
        found: list[Link] = []
        returned: set[str] = set()
        for start in range(0, len(wanted), SHOW_MANY_LIMIT):
            for user in self.show_many_users(wanted[start:start + SHOW_MANY_LIMIT]):
                uid = str(user.get("id", ""))
                if uid not in asked or uid in returned or user.get("active") is False:
                    continue
                returned.add(uid)
                found.append(Link(source=self.source, source_id=uid, customer=CustomerRef(
                    source_id=uid, email=user.get("email"), phone=user.get("phone"),
                    name=user.get("name"))))
        return Lookup(found=tuple(found), missing=tuple(i for i in ids if i not in returned))
