"""Charts for the admin pages, drawn on the server as inline SVG.

Why by hand and not with a charting library: the pages must work without
JavaScript and without anything fetched from elsewhere, under a Content Security
Policy that allows no inline styles. The four shapes needed here (sparkline,
histogram, horizontal bars, stacked bar) are a few lines of geometry each, while
the SVG charting libraries for Python embed ``<style>`` blocks and script
references that this policy would block.

Every chart is an ``<svg role="img">`` labelled by its ``<title>`` and ``<desc>``
(the numbers in words, for screen readers), and every mark has its own
``<title>`` (a tooltip in every browser, no script). Colours come from CSS
classes in ``static/admin.css``; nothing here sets a style. All markup is written
as literal :class:`~markupsafe.Markup` templates whose ``format`` escapes every
value put in, so a label can never inject markup.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

_ids = itertools.count(1)
_NOTHING = Markup("")


def _fmt(value: float) -> str:
    """Coordinates with at most 2 decimals (short markup, stable output)."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "no value"
    text = f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 1000 else f"{value:,.1f}"
    return text + unit


def _svg(kind: str, width: float, height: float, title: str, desc: str, body: Sequence[Markup],
         extra_class: str = "") -> Markup:
    """The chart: its accessible name and description, then its marks."""
    n = next(_ids)
    return Markup(
        '<svg class="{cls}" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
        'aria-labelledby="chart{n}-title chart{n}-desc" preserveAspectRatio="xMinYMid meet" '
        'xmlns="http://www.w3.org/2000/svg"><title id="chart{n}-title">{title}</title>'
        '<desc id="chart{n}-desc">{desc}</desc>{body}</svg>').format(
        cls=f"chart {kind} {extra_class}".strip(), w=_fmt(width), h=_fmt(height), n=n, title=title,
        desc=desc, body=_NOTHING.join(body))


# --- sparkline ------------------------------------------------------------------------------------


def sparkline(values: Sequence[float | None], *, title: str, labels: Sequence[str] = (),
              unit: str = "", width: float = 140, height: float = 36, tone: str = "") -> Markup:
    """A trend line, oldest value first. Missing values break the line. ``tone``: a CSS
    class (``good``, ``bad``) colouring the line."""
    known = [(i, float(v)) for i, v in enumerate(values) if v is not None]
    if not known:
        return _svg("sparkline", width, height, title, "no data yet", [Markup(
            '<text class="empty" x="{x}" y="{y}" text-anchor="middle">no data yet</text>').format(
            x=_fmt(width / 2), y=_fmt(height / 2 + 4))], tone)
    pad = 4.0
    lo, hi = min(v for _, v in known), max(v for _, v in known)
    span = (hi - lo) or 1.0
    n = len(values)
    step = (width - 2 * pad) / max(n - 1, 1)

    def xy(i: int, v: float) -> str:
        x = pad + i * step if n > 1 else width / 2
        y = height - pad - (v - lo) / span * (height - 2 * pad) if hi != lo else height / 2
        return f"{_fmt(x)},{_fmt(y)}"

    body: list[Markup] = []
    run: list[str] = []
    for i, v in enumerate(values):
        if v is not None:
            run.append(xy(i, float(v)))
        if (v is None or i == n - 1) and run:
            if len(run) > 1:
                body.append(Markup('<polyline class="line" points="{p}"/>').format(p=" ".join(run)))
            run = []
    last = known[-1][0]
    for i, v in known:
        label = labels[i] if i < len(labels) else ""
        x, y = xy(i, v).split(",")
        body.append(Markup('<circle class="dot{last}" cx="{x}" cy="{y}" r="{r}">'
                           '<title>{tip}</title></circle>').format(
            last=" last" if i == last else "", x=x, y=y, r="2.6" if i == last else "1.6",
            tip=(f"{label}: " if label else "") + _number(v, unit)))
    return _svg("sparkline", width, height, title, _spark_desc(known, labels, unit), body, tone)


def _spark_desc(known: list[tuple[int, float]], labels: Sequence[str], unit: str) -> str:
    pairs = [(labels[i] if i < len(labels) else f"point {i + 1}", v) for i, v in known]
    first, last = pairs[0], pairs[-1]
    if len(pairs) == 1:
        return f"one value: {_number(last[1], unit)} ({last[0]})"
    return (f"{len(pairs)} values from {first[0]} ({_number(first[1], unit)}) to {last[0]} "
            f"({_number(last[1], unit)}), lowest {_number(min(v for _, v in pairs), unit)}, "
            f"highest {_number(max(v for _, v in pairs), unit)}")


# --- bars --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    #: CSS class of the bar (colour), e.g. ``red``
    tone: str = ""
    #: the value as shown (default: the number)
    text: str | None = None
    #: where the label links to (horizontal bars)
    href: str | None = None
    #: the tooltip (default: label and text)
    note: str | None = None

    @property
    def shown(self) -> str:
        return self.text or _number(self.value)


def histogram(bars: Sequence[Bar], *, title: str, x_title: str, width: float = 560,
              height: float = 220) -> Markup:
    """Vertical bars with their count on top and their label below (a distribution)."""
    total = sum(b.value for b in bars)
    desc = ", ".join(f"{b.label}: {b.shown}" for b in bars) or "no data"
    top, bottom, left = 18.0, 40.0, 8.0
    plot_h = height - top - bottom
    hi = max((b.value for b in bars), default=0) or 1
    slot = (width - 2 * left) / max(len(bars), 1)
    body = [Markup('<line class="axis" x1="{x1}" y1="{y}" x2="{x2}" y2="{y}"/>').format(
        x1=_fmt(left), x2=_fmt(width - left), y=_fmt(top + plot_h))]
    for i, b in enumerate(bars):
        h = plot_h * b.value / hi
        x = left + i * slot + slot * 0.12
        w = slot * 0.76
        y = top + plot_h - h
        share = f" ({100 * b.value / total:.0f}%)" if total else ""
        body.append(Markup(
            '<g class="mark"><title>{note}</title>'
            '<rect class="bar {tone}" x="{x}" y="{y}" width="{w}" height="{h}" rx="2"/>'
            '<text class="value" x="{cx}" y="{vy}" text-anchor="middle">{shown}</text>'
            '<text class="tick" x="{cx}" y="{ty}" text-anchor="middle">{label}</text></g>').format(
            note=b.note or f"{b.label}: {b.shown}{share}", tone=b.tone, x=_fmt(x), y=_fmt(y), w=_fmt(w),
            h=_fmt(max(h, 0.5 if b.value else 0)), cx=_fmt(x + w / 2), vy=_fmt(y - 4), shown=b.shown,
            ty=_fmt(top + plot_h + 15), label=b.label))
    body.append(Markup('<text class="axis-title" x="{x}" y="{y}" text-anchor="middle">{t}</text>').format(
        x=_fmt(width / 2), y=_fmt(height - 4), t=x_title))
    return _svg("histogram", width, height, title, desc, body)


def hbars(bars: Sequence[Bar], *, title: str, width: float = 560, label_width: float = 170,
          row: float = 26, value_width: float = 120, desc: str | None = None) -> Markup:
    """Horizontal bars, one row each: label, bar, value (rankings, the funnel). Bars are as
    long as the value's magnitude; the sign shows in the text and the tone."""
    height = max(len(bars), 1) * row + 6
    hi = max((abs(b.value) for b in bars), default=0) or 1
    plot = width - label_width - value_width - 12
    body = []
    for i, b in enumerate(bars):
        y = 3 + i * row
        w = plot * abs(b.value) / hi
        label = Markup("{}").format(b.label)
        if b.href:
            label = Markup('<a href="{href}">{label}</a>').format(href=b.href, label=b.label)
        body.append(Markup(
            '<g class="mark"><title>{note}</title>'
            '<text class="label" x="{lx}" y="{ty}" text-anchor="end">{label}</text>'
            '<rect class="track" x="{x}" y="{by}" width="{plot}" height="{bh}" rx="3"/>'
            '<rect class="bar {tone}" x="{x}" y="{by}" width="{w}" height="{bh}" rx="3"/>'
            '<text class="value" x="{vx}" y="{ty}">{shown}</text></g>').format(
            note=b.note or f"{b.label}: {b.shown}", lx=_fmt(label_width - 8), ty=_fmt(y + row / 2 + 4),
            label=label, x=_fmt(label_width), by=_fmt(y + 4), plot=_fmt(plot), bh=_fmt(row - 8), tone=b.tone,
            w=_fmt(max(w, 1.5 if b.value else 0)), vx=_fmt(label_width + plot + 8), shown=b.shown))
    text = desc or ", ".join(f"{b.label}: {b.shown}" for b in bars) or "no data"
    return _svg("hbars", width, height, title, text, body)


def stacked(parts: Sequence[Bar], *, title: str, width: float = 560, height: float = 22) -> Markup:
    """One bar split into shares (e.g. customers by health)."""
    total = sum(p.value for p in parts)
    desc = ", ".join(f"{p.label}: {_number(p.value)}" + (f" ({100 * p.value / total:.0f}%)" if total else "")
                     for p in parts)
    body = [Markup('<rect class="track" x="0" y="0" width="{w}" height="{h}" rx="4"/>').format(
        w=_fmt(width), h=_fmt(height))]
    x = 0.0
    for p in parts:
        if not total or not p.value:
            continue
        w = width * p.value / total
        body.append(Markup('<rect class="bar {tone}" x="{x}" y="0" width="{w}" height="{h}">'
                           '<title>{tip}</title></rect>').format(
            tone=p.tone, x=_fmt(x), w=_fmt(w), h=_fmt(height),
            tip=f"{p.label}: {_number(p.value)} ({100 * p.value / total:.0f}%)"))
        x += w
    return _svg("stacked", width, height, title, desc or "no data", body)
