"""The audit log: who changed what, when (merges, redactions, writes, alerts, replays).

Entries carry ids and field names, never personal data (an audit log must survive a
privacy erasure without itself becoming the copy that was not erased).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from cx_connector.models import audit_log


def record(conn: Connection, *, actor: str, action: str, at: datetime,
           customer_id: int | None = None, source: str | None = None,
           external_id: str | None = None, details: dict[str, Any] | None = None) -> None:
    conn.execute(audit_log.insert().values(
        at=at, actor=actor, action=action, customer_id=customer_id, source=source,
        external_id=external_id, details=details or {},
    ))
