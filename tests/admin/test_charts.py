"""The server-drawn SVG charts: accessible, escaped, and right about their numbers."""

from __future__ import annotations

import re

from cx_connector.admin import charts
from cx_connector.admin.charts import Bar


def labelled(svg: str) -> None:
    """The chart is an image named by its own title and description."""
    assert svg.startswith('<svg class="chart ') and 'role="img"' in svg
    ids = re.search(r'aria-labelledby="([^"]+)"', svg).group(1).split()
    assert len(ids) == 2
    assert f'<title id="{ids[0]}">' in svg and f'<desc id="{ids[1]}">' in svg


def test_labels_titles_and_links_are_escaped():
    nasty = '<script>alert("x")</script> & "quotes"'
    svg = str(charts.hbars([Bar(nasty, 3, href='/x?a=1&b="2"', note=nasty)], title=nasty, desc=nasty))
    labelled(svg)
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&amp; &#34;quotes&#34;" in svg
    assert 'href="/x?a=1&amp;b=&#34;2&#34;"' in svg
    for chart in (charts.histogram([Bar(nasty, 1)], title=nasty, x_title=nasty),
                  charts.sparkline([1, 2], labels=[nasty, nasty], title=nasty),
                  charts.stacked([Bar(nasty, 1, tone="red")], title=nasty)):
        assert "<script>" not in str(chart)
        labelled(str(chart))


def test_a_sparkline_breaks_at_missing_values_and_marks_the_last_point():
    svg = str(charts.sparkline([1, 2, None, 4, 5], labels=["a", "b", "c", "d", "e"], title="t", unit="%"))
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 4
    assert svg.count('class="dot last"') == 1 and "<title>e: 5%</title>" in svg
    assert "4 values from a (1%) to e (5%), lowest 1%, highest 5%" in svg
    assert "no data yet" in str(charts.sparkline([None, None], title="t"))
    flat = str(charts.sparkline([7, 7, 7], title="t"))
    assert 'points="4,18 70,18 136,18"' in flat  # a constant series is drawn mid-height


def test_bars_are_as_long_as_their_values():
    svg = str(charts.hbars([Bar("a", 10), Bar("b", -5), Bar("c", 0)], title="t", width=300,
                           label_width=100, value_width=88))
    widths = [float(w) for w in re.findall(r'class="bar [^"]*" x="100" y="[\d.]+" width="([\d.]+)"', svg)]
    assert widths == [100.0, 50.0, 0.0]  # the plot is 300 - 100 - 88 - 12 wide; sign shows in the text
    hist = str(charts.histogram([Bar("0-9", 2), Bar("10-19", 6)], title="t", x_title="x"))
    assert "0-9: 2, 10-19: 6" in hist and "<title>10-19: 6 (75%)</title>" in hist


def test_a_stacked_bar_leaves_out_empty_parts():
    svg = str(charts.stacked([Bar("green", 3, tone="green"), Bar("red", 0, tone="red"),
                              Bar("none", 1, tone="none")], title="health", width=400))
    assert svg.count('class="bar ') == 2 and 'width="300"' in svg and 'x="300" y="0" width="100"' in svg
    assert "green: 3 (75%), red: 0 (0%), none: 1 (25%)" in svg
