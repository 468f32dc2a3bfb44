"""Privacy requests: erase or export one person's data (GDPR, Shopify compliance topics).

Placeholder until the connectors capability lands: a privacy action makes the
delivery fail with a clear reason, so it stays in the inbox and can be replayed
once erasure is implemented. Nothing is dropped silently.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from cx_connector.errors import PayloadError


def apply(conn: Connection, action: object, *, now: datetime, actor: str) -> None:
    raise PayloadError(f"{type(action).__name__} requests are not implemented yet: "
                       "replay this delivery after upgrading")
