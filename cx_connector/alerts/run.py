"""The ``alerts`` job: decide, then deliver. Run by the clock process on its own
interval (``alerts.every``) and right after every scoring run, and by
``cx-connector alerts check``, always under the lease :data:`LEASE`."""

from __future__ import annotations

from typing import Any

from cx_connector.alerts import decide, deliver
from cx_connector.runtime import Runtime

#: the lease every alerts run holds (scheduler and CLI alike)
LEASE = "job:alerts"


def check(rt: Runtime, *, dry_run: bool = False) -> dict[str, Any]:
    """Evaluate every rule and send what is due. ``dry_run``: only say which alerts would
    fire and clear (with customer ids); store and send nothing."""
    reports = decide.evaluate(rt.engine, list(rt.config.alerts.rules.values()), now=rt.now(), dry_run=dry_run)
    out: dict[str, Any] = {"dry_run": dry_run, "rules": [r.as_dict(ids=dry_run) for r in reports]}
    if not dry_run:
        out["deliveries"] = deliver.deliver(rt)
    return out


def job(rt: Runtime) -> dict[str, Any]:
    """The scheduler's ``alerts`` job."""
    return check(rt)
