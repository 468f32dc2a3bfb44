"""Finding connectors: the ``cx_connector.connectors`` entry-point group, and nothing else.

The core never imports a platform by name. A fourth platform is a package that
registers itself in that group (see ``setup.cfg``); it then has a webhook URL, a
config section and a place in every command without an edit here.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib.metadata import entry_points

from cx_connector.connector import Connector

GROUP = "cx_connector.connectors"
log = logging.getLogger(__name__)


@cache
def available() -> dict[str, type[Connector]]:
    """Connector classes by name, as registered in the entry-point group."""
    found: dict[str, type[Connector]] = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Connector)):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not a Connector subclass")
        if cls.name != ep.name:
            raise TypeError(f"entry point {ep.name} loads a connector named {cls.name!r}: "
                            "the entry-point name and Connector.name must be the same")
        found[ep.name] = cls
    return dict(sorted(found.items()))
