"""``cx-connector import FILE``: touchpoints from JSON lines, validated row by row."""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal

import click
from marshmallow import ValidationError

from cx_connector import db, inbox
from cx_connector.cli.base import State, emit_json, json_option, pass_state
from cx_connector.connector import Normalised
from cx_connector.metrics import stored
from cx_connector.touchpoint import Touchpoint, TouchpointSchema
from cx_connector.wording import counted

BATCH = 500


def _messages(messages: object, prefix: str = "") -> list[str]:
    if isinstance(messages, dict):
        out = []
        for k, v in messages.items():
            out += _messages(v, prefix if k == "_schema" else (f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(messages, list):
        return [m for item in messages for m in _messages(item, prefix)]
    return [f"{prefix}: {messages}" if prefix else str(messages)]


@click.command("import")
@click.argument("file", type=click.File("rb"))
@json_option
@pass_state
def import_(state: State, file: click.File, as_json: bool) -> None:
    """Import touchpoints from FILE (JSON lines, one touchpoint per line; - for stdin).

    Every line is validated on its own: bad lines are reported with their line
    number and skipped, good lines are stored (already known touchpoints are not
    duplicated). Exits 1 if any line was bad.
    """
    rt = state.runtime()
    schema = TouchpointSchema()
    errors: list[dict] = []
    good = bad = new = 0
    pending: dict[str, list[Touchpoint]] = defaultdict(list)

    def flush() -> None:
        nonlocal new
        for source, tps in pending.items():
            with db.write(rt.engine) as conn:
                added = inbox.store(conn, source, Normalised(touchpoints=tuple(tps)),
                                    delivery_id=None, now=rt.now(), actor="import")
                stored.touchpoints_imported(conn, source, "import", added, rt.now())
                new += added
        pending.clear()

    for lineno, raw in enumerate(file, start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            data = json.loads(line, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError) as exc:
            bad += 1
            errors.append({"line": lineno, "errors": [f"not valid JSON: {exc}"]})
            continue
        try:
            if not isinstance(data, dict):
                raise ValueError(f"expected one touchpoint as a JSON object, got a {type(data).__name__}")
            tp = schema.load(data)
        except ValidationError as exc:
            bad += 1
            errors.append({"line": lineno, "errors": _messages(exc.messages)})
            continue
        except ValueError as exc:  # the touchpoint's own checks (e.g. a blank source_id)
            bad += 1
            errors.append({"line": lineno, "errors": [str(exc)]})
            continue
        good += 1
        pending[tp.source].append(tp)
        if sum(len(v) for v in pending.values()) >= BATCH:
            flush()
    flush()
    summary = {"valid": good, "invalid": bad, "stored": new, "already_known": good - new,
               "errors": errors}
    if as_json:
        emit_json(summary)
    else:
        for e in errors:
            for m in e["errors"]:
                click.echo(f"line {e['line']}: {m}", err=True)
        click.echo(f"{counted(good, 'valid line')} ({counted(new, 'new touchpoint')}, {good - new} already "
                   f"known), {counted(bad, 'invalid line')} skipped")
    if bad:
        raise SystemExit(1)
