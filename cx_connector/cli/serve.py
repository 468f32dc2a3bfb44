"""``cx-connector serve``: the web process (gunicorn), for when there is no Procfile host.

Runs gunicorn with the shipped settings (:mod:`cx_connector.gunicorn_conf`, the same
ones the Procfile's ``web`` uses); ``--host``, ``--port`` and ``--workers`` override
them.
"""

from __future__ import annotations

from typing import Any

import click

from cx_connector.cli.base import State, pass_state


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=None, type=int,
              help="gunicorn worker processes [default: $WEB_CONCURRENCY, else CPUs + 1].")
@pass_state
def serve(state: State, host: str, port: int, workers: int | None) -> None:
    """Serve the webhooks (and admin pages) with gunicorn."""
    from gunicorn.app.base import BaseApplication

    from cx_connector import gunicorn_conf
    from cx_connector.app import create_app

    state.runtime()  # fail here, with exit code 2, on a bad config or an unmigrated database
    state.close()  # its connection must not be inherited by the workers
    config_path = state.config_path

    class App(BaseApplication):
        def load_config(self) -> None:
            for key, value in vars(gunicorn_conf).items():
                if key in self.cfg.settings and key != "wsgi_app":
                    self.cfg.set(key, value)
            self.cfg.set("bind", [f"{host}:{port}"])
            if workers is not None:
                self.cfg.set("workers", workers)

        def load(self) -> Any:
            return create_app(config_path)

    App().run()
