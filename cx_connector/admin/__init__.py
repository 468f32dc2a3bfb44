"""The admin console (``/admin``) and the JSON API (``/api/v1``), both behind ``admin_token``.

* :mod:`~cx_connector.admin.auth`: the token, the session cookie, CSRF, the slow-down;
* :mod:`~cx_connector.admin.pages`: the pages (overview, pain points, customers, operations);
* :mod:`~cx_connector.admin.api`: the JSON API;
* :mod:`~cx_connector.admin.insights` and :mod:`~cx_connector.admin.painpoints`: what the
  overview and pain-point pages compute; :mod:`~cx_connector.admin.charts`: their SVG.

What the pages list and do (customers, deliveries, outbox writes, replays, retries) goes
through the same core functions as the CLI (:mod:`cx_connector.customers`,
:mod:`cx_connector.inbox`, :mod:`cx_connector.sync`).
"""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the console and the API on the app built by ``create_app``."""
    from cx_connector.admin import api, auth, insights, pages, templating

    auth.init_session(app)
    app.extensions["cx_admin_cache"] = insights.Cache()
    templating.register(app)
    app.register_blueprint(pages.console)
    app.register_blueprint(api.api)
