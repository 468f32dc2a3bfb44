"""The ``cx-connector`` command group and what its commands share.

Every deliberate error (:class:`~cx_connector.errors.CxError`) ends the command
with its message on stderr and its exit code (2 for configuration and schema
problems), never a traceback. Anything else (a bug) is logged like every other log
line, as JSON with the traceback and secrets scrubbed, and exits 1. A reader that goes
away (``| head``) ends the command quietly with exit code 141, as SIGPIPE ends other tools.

Commands log to stderr at WARNING unless ``logging.level`` asks for more detail (their
normal output is for the person at the terminal); the clock process logs at the
configured level.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from cx_connector import db, registry
from cx_connector.config import Config, load_config
from cx_connector.connector import Connector
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


#: exit code when the reader of our output went away (``| head``): 128 + SIGPIPE, what a
#: shell reports for any program that SIGPIPE ends (``yes | head -1`` under ``pipefail``)
EXIT_BROKEN_PIPE = 141


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            # what is still buffered goes out here, where a reader that left is handled,
            # not in the interpreter's flush at exit ("Exception ignored ... BrokenPipeError")
            sys.stdout.flush()
            return result
        except BrokenPipeError:
            _reader_gone()
            ctx.exit(EXIT_BROKEN_PIPE)
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


def _reader_gone() -> None:
    """Our output's reader went away (``cx-connector customers list | head -1``).

    Python ignores SIGPIPE, so the write raised BrokenPipeError instead of ending the
    process as it ends a C program; that is no failure of the command, so no traceback.
    Standard output now points at /dev/null: the output still buffered must not raise
    again when the interpreter flushes it at exit (see "Note on SIGPIPE" in the Python
    docs of :mod:`signal`). The exit code is :data:`EXIT_BROKEN_PIPE`, as for any program
    ended by SIGPIPE.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (a test's captured output)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


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


#: a score or KPI without a value, in every human-readable output (JSON says null)
NO_VALUE = "n/a"


def shown(value: Any, fmt: str = "{}") -> str:
    """``value`` for a person to read: :data:`NO_VALUE` when there is none."""
    return NO_VALUE if value is None else fmt.format(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


class Source(click.ParamType):
    """A connector name given on the command line (``backfill SOURCE``, ``--source``),
    checked against the configuration while the arguments are parsed: a typo, a
    connector without a ``connectors.<name>`` section, or one that cannot do what the
    command does is a usage error (exit 2) that names the sources that would do,
    before anything runs.

    ``can`` tells whether a connector class can do the command's work (write back,
    look records up, backfill); ``cannot`` says what it lacks, for the message.
    ``enabled=False`` accepts any installed connector: filters over stored history
    (``events list``, ``outbox``) may name one that has since been disabled.
    """

    name = "source"

    def __init__(self, can: Callable[[type[Connector]], bool] | None = None, cannot: str = "",
                 *, enabled: bool = True) -> None:
        self.can, self.cannot, self.enabled = can, cannot, enabled

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        installed = registry.available()
        state = ctx.find_object(State) if ctx is not None else None
        on = sorted(state.config().connectors) if state is not None else sorted(installed)
        enabled = f"enabled: {', '.join(on) or 'none'}"
        if value not in installed:
            self.fail(f"no connector named {value!r} ({enabled}; installed: {', '.join(installed)})",
                      param, ctx)
        if not self.enabled:
            return value
        if value not in on:
            self.fail(f"{value} is not enabled: add a connectors.{value} section to the "
                      f"configuration ({enabled})", param, ctx)
        if self.can is not None and not self.can(installed[value]):
            able = [n for n in on if self.can(installed[n])]
            self.fail(f"{value} {self.cannot} (enabled sources that can: {', '.join(able) or 'none'})",
                      param, ctx)
        return value
