"""The ``cx-connector`` command group and what its commands share.

Every deliberate error (:class:`~cx_connector.errors.CxError`) ends the command
with its message on stderr and its exit code (2 for configuration and schema
problems), never a traceback. Anything else (a bug) is logged like every other log
line, as JSON with the traceback and secrets scrubbed, and exits 1.

Commands log to stderr at WARNING unless ``logging.level`` asks for more detail (their
normal output is for the person at the terminal); the clock process logs at the
configured level.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from cx_connector import db
from cx_connector.config import Config, load_config
from cx_connector.db import json_dumps
from cx_connector.errors import CxError
from cx_connector.runtime import Runtime, build


class State:
    """Lazily loaded configuration and runtime for one CLI invocation."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._runtime: Runtime | None = None

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.engine.dispose()

    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def configure_logging(self) -> None:
        from cx_connector import logs

        config = self.config()
        logs.configure(config.logging.level if config.logging.level != "INFO" else "WARNING",
                       config.logging.format, config.secrets())

    def runtime(self, *, migrated: bool = True) -> Runtime:
        if self._runtime is None:
            self.configure_logging()
            self._runtime = build(self.config())
        if migrated:
            db.check_migrated(self._runtime.engine)
        return self._runtime


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CxError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception:
            state = ctx.find_object(State)
            if not _logging_configured():
                try:
                    state.configure_logging()  # type: ignore[union-attr]
                except Exception:  # no usable configuration: JSON, nothing to scrub
                    from cx_connector import logs

                    logs.configure("WARNING", "json", ())
            logging.getLogger("cx_connector.cli").exception(
                "command failed", extra={"command": ctx.invoked_subcommand})
            ctx.exit(1)


def _logging_configured() -> bool:
    from cx_connector.logs import is_configured

    return is_configured()


pass_state = click.make_pass_decorator(State)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(json.loads(json_dumps(value)), indent=2, ensure_ascii=False))


def table(rows: list[dict], columns: list[str]) -> None:
    """Print rows as an aligned text table (plain, so it can be piped and grepped)."""
    if not rows:
        return
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    widths = [min(w, 60) for w in widths]
    out = sys.stdout
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join((v if len(v) <= w else v[:w - 1] + "…").ljust(w)
                            for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
