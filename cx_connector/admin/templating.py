"""Filters and globals the admin templates use: numbers, times, durations, charts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flask import Flask, current_app

from cx_connector.admin import charts
from cx_connector.fields import FIELDS
from cx_connector.touchpoint import KINDS

DASH = "\u2014"


def num(value: Any, decimals: int = 0) -> str:
    """``12,345`` / ``12.3``; a dash for no value."""
    if value is None or value == "":
        return DASH
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:,.{decimals}f}"


def signed(value: Any, decimals: int = 1) -> str:
    if value is None:
        return DASH
    number = float(value)
    return ("+" if number > 0 else "\u2212" if number < 0 else "\u00b1") + f"{abs(number):,.{decimals}f}"


def when(value: Any, seconds: bool = False) -> str:
    """``2026-06-15 12:00 UTC``."""
    if value is None:
        return DASH
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def sentence(value: Any) -> str:
    """The first letter upper-cased, the rest left alone (Jinja's ``capitalize`` would
    write "Nps" and "csat")."""
    text = str(value)
    return text[:1].upper() + text[1:]


def shortday(value: Any) -> str:
    """``Jun 14`` from a ``YYYY-MM-DD`` day."""
    try:
        return datetime.fromisoformat(str(value)).strftime("%b %d").replace(" 0", " ")
    except ValueError:
        return str(value)


def ago(value: Any) -> str:
    """``3 days ago`` against the runtime's clock (the tests' fixed one too)."""
    if value is None:
        return DASH
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = (current_app.extensions["cx"].now() - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            text = f"{n} {unit}{'s' if n != 1 else ''}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"


def duration(ms: Any) -> str:
    if ms is None:
        return DASH
    ms = float(ms)
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, secs = divmod(ms / 1000, 60)
    return f"{minutes:.0f} min {secs:.0f} s"


def score_value(name: str, value: Any) -> str:
    """A score field's value as staff read it (``72``, ``48%``, ``1.25``, ``promoter``)."""
    if value is None:
        return DASH
    field = FIELDS.get(name)
    if field is None or field.type != "number":
        return when(value) if field is not None and field.type == "datetime" else str(value)
    text = num(value, field.decimals)
    return text + "%" if name in ("cx_retention_probability", "cx_csat") else text


def money(value: Any, currency: str | None = None) -> str:
    if value is None:
        return DASH
    amount = Decimal(str(value))
    return f"{amount:,.2f}" + (f" {currency}" if currency else "")


def kind_meaning(kind: str) -> str:
    return KINDS.get(kind, ("", kind))[1]


def register(app: Flask) -> None:
    app.jinja_env.filters.update(num=num, signed=signed, when=when, ago=ago, duration=duration,
                                 money=money, shortday=shortday, sentence=sentence)
    app.jinja_env.globals.update(score_value=score_value, kind_meaning=kind_meaning, charts=charts,
                                 Bar=charts.Bar)
