"""``cx-connector serve``: the web process (gunicorn), for when there is no Procfile host."""

from __future__ import annotations

from typing import Any

import click

from cx_connector.cli.base import State, pass_state


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int,
              help="gunicorn worker processes.")
@pass_state
def serve(state: State, host: str, port: int, workers: int) -> None:
    """Serve the webhooks (and admin pages) with gunicorn.

    gunicorn's own log lines are JSON like the app's, and /metrics sums every worker
    (prometheus_client's multiprocess mode, prepared by the hooks of cx_connector.metrics).
    """
    from gunicorn.app.base import BaseApplication

    from cx_connector import logs, metrics
    from cx_connector.app import create_app

    state.runtime()  # fail here, with exit code 2, on a bad config or an unmigrated database
    config_path = state.config_path

    class App(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("logger_class", logs.gunicorn_logger_class(state.config()))
            self.cfg.set("on_starting", metrics.on_starting)
            self.cfg.set("child_exit", metrics.child_exit)
            self.cfg.set("on_exit", metrics.on_exit)

        def load(self) -> Any:
            return create_app(config_path)

    App().run()
