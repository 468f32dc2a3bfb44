"""cx-connector: customer-experience scores where sales and support staff already work.

Importing this package has no side effects; the web application comes from
:func:`create_app` (gunicorn: ``"cx_connector:create_app()"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flask import Flask


def create_app(config_path: str | None = None, **kw: Any) -> Flask:
    """Build the WSGI application (see :mod:`cx_connector.app`)."""
    from cx_connector.app import create_app as _create

    return _create(config_path, **kw)
