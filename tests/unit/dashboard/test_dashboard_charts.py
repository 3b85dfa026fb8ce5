"""Server-rendered SVG: well-formed, labelled, one titled bar per bucket, text escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from proxy.dashboard.charts import bar_chart, tokens_over_time
from proxy.dashboard.data import Point

SVG = "{http://www.w3.org/2000/svg}"
START = datetime(2026, 11, 27, tzinfo=UTC)


def test_tokens_over_time_is_accessible_svg() -> None:
    points = [Point(START + timedelta(hours=i), i, 1000 * i, 400 * i) for i in range(24)]
    root = ET.fromstring(tokens_over_time(points, hourly=True))
    assert root.get("role") == "img" and root.get("aria-labelledby") == "tokens-t tokens-d"
    assert root.find(f"{SVG}title").text == "Original vs forwarded tokens over time"  # type: ignore[union-attr]
    groups = root.findall(f"{SVG}g")
    assert len(groups) == 24
    last = groups[-1]
    assert last.find(f"{SVG}title").text == (  # type: ignore[union-attr]
        "2026-11-27 23:00 UTC: 23,000 original, 9,200 forwarded tokens, 23 requests"
    )
    orig, fwd = last.findall(f"{SVG}rect")
    assert float(fwd.get("height", 0)) < float(orig.get("height", 0))
    ticks = [t.text for t in root.findall(f"{SVG}text")]
    assert ticks[:3] == ["0", "20.0 k", "40.0 k"] and "00:00" in ticks  # top: 23 k -> 40 k


def test_empty_series_draws_an_empty_axis() -> None:
    root = ET.fromstring(tokens_over_time([Point(START)], hourly=False))
    rects = root.findall(f"{SVG}g/{SVG}rect")
    assert {r.get("height") for r in rects} == {"0.0"}


def test_bar_chart_counts_and_escaping() -> None:
    svg = bar_chart(["≤0.1", "<b>&"], [3, 0], "Rate <dist>", "rates")
    root = ET.fromstring(svg)
    assert "<b>" not in svg and "&lt;b&gt;&amp;" in svg
    assert root.find(f"{SVG}title").text == "Rate <dist>"  # type: ignore[union-attr]
    values = [t.text for t in root.findall(f"{SVG}text") if t.get("class") == "value"]
    assert values == ["3"]  # empty buckets carry no number
