"""``cx-connector backfill SOURCE``: import a platform's history (see :mod:`cx_connector.backfill`)."""

from __future__ import annotations

import sys
from typing import IO, Any

import click

from cx_connector import backfill
from cx_connector.cli.base import Source, State, emit_json, json_option, pass_state, table
from cx_connector.wording import counted

BAR_WIDTH = 24


def _n(value: int) -> str:
    return f"{value:,}"


def _duration(value: float) -> str:
    seconds = round(value)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Reporter:
    """Progress on stderr: one rewritten line with a bar on a terminal, plain log lines
    (one per page and per wait) otherwise, so a redirected run still tells its story."""

    def __init__(self, stream: IO[str], tty: bool, header: str = "") -> None:
        self.stream, self.tty = stream, tty
        self._open = False  # a bar line is on screen without its newline
        #: printed before the first progress event, so a refused run shows only its error
        self._header = header

    def __call__(self, p: backfill.Progress) -> None:
        if self._header:
            self.stream.write(self._header + "\n")
            self._header = ""
        if self.tty:
            self._bar(p)
        else:
            self._line(p)

    def _stats(self, p: backfill.Progress) -> str:
        parts = [counted(p.records, "record"), counted(p.pages, "page"),
                 counted(p.touchpoints, "new touchpoint")]
        if p.rate:
            parts.append(f"{p.rate:,.0f}/s")
        if p.eta is not None:
            parts.append(f"ETA {_duration(p.eta)}")
        return " · ".join(parts)

    def _bar(self, p: backfill.Progress) -> None:
        name = f"{p.source} {p.resource}"
        if p.kind in ("page", "start", "wait"):
            total = p.records + p.remaining if p.remaining is not None else None
            if total:
                filled = int(BAR_WIDTH * p.records / total)
                bar = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {100 * p.records // total:3d}%  "
            else:
                bar = ""
            text = f"{name}  {bar}{self._stats(p)}"
            if p.kind == "wait":
                text += f"  ({p.message})"
            self.stream.write("\r\x1b[2K" + text)
            self._open = True
        else:
            end = {"done": "done", "skip": "already finished", "failed": "FAILED",
                   "interrupted": "interrupted"}.get(p.kind, p.kind)
            prefix = "\r\x1b[2K" if self._open else ""
            line = f"{prefix}{name}: {end}, {self._stats(p)}"
            if p.message and p.kind in ("failed", "interrupted"):
                line += f"\n  {p.message}"
            self.stream.write(line + "\n")
            self._open = False
        self.stream.flush()

    def _line(self, p: backfill.Progress) -> None:
        head = f"backfill {p.source} {p.resource}:"
        if p.kind == "start":
            text = f"{head} starting" + (f" at page {p.pages + 1} (resumed)" if p.pages else "")
        elif p.kind == "page":
            text = f"{head} page {_n(p.pages)}, {self._stats(p)}"
            if p.remaining is not None:
                text += f", {_n(p.remaining)} to go"
        elif p.kind == "wait":
            text = f"{head} {p.message}"
        elif p.kind == "skip":
            text = f"{head} already finished"
        else:
            text = f"{head} {p.kind}, {self._stats(p)}" + (f": {p.message}" if p.message else "")
        self.stream.write(text + "\n")
        self.stream.flush()


@click.command("backfill")
@click.argument("source", type=Source(lambda c: bool(backfill.resources_of(c)),
                                        "has no API to import history from"))
@click.option("--since", metavar="DATE",
              help="Only records changed on or after DATE (2024-01-31, an ISO time, or a span back "
                   "from now such as 90d). Default: everything.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted or failed backfill from its saved cursors.")
@click.option("--restart", is_flag=True,
              help="Start over even though an earlier backfill did not finish (its cursors are "
                   "discarded; nothing already imported is lost or doubled).")
@click.option("--only", "only", multiple=True, metavar="RESOURCE",
              help="Only this resource (repeatable), e.g. --only orders.")
@click.option("--status", "show_status", is_flag=True,
              help="Show the saved progress of this source's backfill; import nothing.")
@json_option
@pass_state
def backfill_cmd(state: State, source: str, since: str | None, resume: bool, restart: bool,
                 only: tuple[str, ...], show_status: bool, as_json: bool) -> None:
    """Import SOURCE's history (hubspot, zendesk, shopify) through its API.

    Records go through the same normalisers as webhooks, so a fact that a webhook
    also delivers is stored once. Progress is saved after every page: after a crash,
    an error or Ctrl-C, run the same command with --resume to continue where it
    stopped. Running a finished backfill again adds nothing new. When it finishes,
    the next scoring run rescores every customer.

    Exit codes: 0 done, 1 stopped on a platform error (fix it, then --resume),
    2 refused (e.g. an unfinished backfill exists), 130 interrupted.
    """
    rt = state.runtime()
    connector = rt.connector(source)
    if show_status:
        _status(rt, source, as_json)
        return
    when = backfill.parse_since(since, rt.now()) if since else None
    header = ""
    if not as_json:
        names = [r.name for r in connector.backfill_resources if not only or r.name in only]
        header = (f"backfill {source}: {', '.join(names)}"
                  + (f" changed since {when.isoformat()}" if when else "")
                  + (" (resuming)" if resume else ""))
    reporter = Reporter(sys.stderr, tty=sys.stderr.isatty(), header=header)
    summary = backfill.run(rt, source, since=when, resume=resume, restart=restart, only=only,
                           report=reporter)
    if as_json:
        emit_json(summary)
    else:
        _print_summary(summary)
    if summary["status"] == "failed":
        raise SystemExit(1)
    if summary["status"] == "interrupted":
        raise SystemExit(130)


def _status(rt: Any, source: str, as_json: bool) -> None:
    rows = backfill.state(rt, source)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"no backfill of {source} has been started")
        return
    table([{**r, "since": r["since"].date().isoformat() if r["since"] else "",
            "updated_at": r["updated_at"].isoformat(timespec="seconds")} for r in rows],
          ["resource", "status", "pages", "records", "since", "updated_at", "error"])


def _print_summary(s: dict[str, Any]) -> None:
    out = sys.stdout
    rows = [{"resource": r["resource"], "status": r["status"], "pages": r["pages_this_run"],
             "records": r["records_this_run"], "new_touchpoints": r["new_touchpoints"],
             "skipped": r["skipped"]} for r in s["resources"]]
    rows += [{"resource": name, "status": "done before"} for name in s["already_finished"]]
    rows += [{"resource": name, "status": "not started"} for name in s["not_started"]]
    table(rows, ["resource", "status", "pages", "records", "new_touchpoints", "skipped"])
    reasons = [f"{r['resource']}: {why}" for r in s["resources"] for why in r["skipped_reasons"]]
    if reasons:
        out.write(f"{counted(s['skipped'], 'record')} skipped"
                  + (", first ones:" if s["skipped"] > 10 else ":") + "\n")
        for why in reasons[:10]:
            out.write(f"  {why}\n")
    if s["status"] == "ok":
        if s["resources"]:
            marked = s["customers_marked"]
            rescored = ("" if not marked else " The next scoring run rescores "
                        + ("the 1 customer." if marked == 1 else f"all {counted(marked, 'customer')}."))
            out.write(f"{s['source']}: {counted(s['records'], 'record')}, "
                      f"{counted(s['new_touchpoints'], 'new touchpoint')}.{rescored}\n")
        else:
            out.write(f"{s['source']}: the backfill had already finished; nothing to resume\n")
    else:
        click.echo(f"error: {s['error']}", err=True)
