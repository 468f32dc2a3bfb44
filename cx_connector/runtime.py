"""What every entry point (web app, CLI, scheduler jobs) works with: config, engine, connectors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine

from cx_connector import db, registry
from cx_connector.config import Config
from cx_connector.connector import Connector
from cx_connector.errors import NotFound


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Runtime:
    config: Config
    engine: Engine
    #: the enabled connectors, by name
    connectors: dict[str, Connector]
    clock: Callable[[], datetime] = field(default=utcnow)

    def connector(self, name: str) -> Connector:
        try:
            return self.connectors[name]
        except KeyError:
            known = registry.available()
            if name in known:
                raise NotFound(f"connector {name} is not enabled: add a connectors.{name} "
                               "section to the configuration") from None
            raise NotFound(f"no connector named {name} (installed: {', '.join(known)})") from None

    def now(self) -> datetime:
        return self.clock()


def build(config: Config, *, engine: Engine | None = None,
          clock: Callable[[], datetime] = utcnow) -> Runtime:
    """Create the engine and the enabled connectors (no I/O beyond the engine object)."""
    available = registry.available()
    connectors = {name: available[name](settings) for name, settings in config.connectors.items()}
    for connector in connectors.values():
        connector.signature_tolerance = config.webhooks.signature_tolerance
    engine = engine or db.make_engine(config.database_url)
    # privacy exports requested inside a webhook transaction find their directory here
    engine.update_execution_options(cx_export_dir=config.privacy.export_dir)
    return Runtime(config=config, engine=engine, connectors=connectors, clock=clock)
