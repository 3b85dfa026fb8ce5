"""Server-rendered SVG charts: no JavaScript, no library, readable by screen readers.

Every chart is an ``<svg role="img">`` with a ``<title>`` and ``<desc>``, one ``<title>``
per bar (hover text), and the page puts the same numbers in a table next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from proxy.dashboard import fmt
from proxy.dashboard.data import Point

__all__ = ["bar_chart", "tokens_over_time"]

_W, _H = 720, 240
_W_SMALL = 440  # histograms sit two to a row
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 16, 36


def _nice_max(value: float) -> float:
    """The smallest 1/2/5 x 10^n at or above ``value`` (axis top)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 4, 5, 10):  # halves stay round numbers
        if step * magnitude >= value:
            return float(step * magnitude)
    return float(10 * magnitude)


def _y_axis(top: float, label: str, w: int = _W) -> list[str]:
    parts = []
    plot_h = _H - _TOP - _BOTTOM
    for frac in (0.0, 0.5, 1.0):
        y = _TOP + plot_h * (1 - frac)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{w - _RIGHT}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="#c8ccd2" stroke-width="1"/>'
        )
        parts.append(
            f'<text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(label.format(fmt.tokens(top * frac)))}</text>"
        )
    return parts


def _svg(title: str, desc: str, body: list[str], chart_id: str, w: int = _W) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {w} {_H}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(desc)}</desc>' + "".join(body) + "</svg>"
    )


def tokens_over_time(points: Sequence[Point], hourly: bool, chart_id: str = "tokens") -> str:
    """Original (light) and forwarded (dark, in front) tokens per bucket; the gap is saved."""
    top = _nice_max(max((p.original_tokens for p in points), default=0))
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    slot = plot_w / max(len(points), 1)
    body = _y_axis(top, "{}")
    every = max(1, len(points) // 8)
    for i, p in enumerate(points):
        x = _LEFT + i * slot + slot * 0.1
        width = slot * 0.8
        label = p.start.strftime("%H:00" if hourly else "%m-%d")
        when = p.start.strftime("%Y-%m-%d %H:00 UTC" if hourly else "%Y-%m-%d (UTC)")
        tip = (
            f"{when}: {fmt.count(p.original_tokens)} original, "
            f"{fmt.count(p.forwarded_tokens)} forwarded tokens, {fmt.count(p.requests)} requests"
        )
        h_orig = plot_h * p.original_tokens / top
        h_fwd = plot_h * p.forwarded_tokens / top
        body.append(f"<g><title>{escape(tip)}</title>")
        body.append(
            f'<rect class="bar-orig" x="{x:.1f}" y="{_TOP + plot_h - h_orig:.1f}" '
            f'width="{width:.1f}" height="{h_orig:.1f}" fill="#8fa9cc"/>'
        )
        body.append(
            f'<rect class="bar-fwd" x="{x + width * 0.2:.1f}" '
            f'y="{_TOP + plot_h - h_fwd:.1f}" width="{width * 0.6:.1f}" '
            f'height="{h_fwd:.1f}" fill="#1f4e8c"/>'
        )
        body.append("</g>")
        if i % every == 0:
            body.append(
                f'<text class="tick" x="{x + width / 2:.1f}" y="{_H - _BOTTOM + 16}" '
                f'text-anchor="middle">{label}</text>'
            )
    total_o = sum(p.original_tokens for p in points)
    total_f = sum(p.forwarded_tokens for p in points)
    desc = (
        f"{len(points)} {'hourly' if hourly else 'daily'} buckets; "
        f"{fmt.tokens(total_o)} original tokens, {fmt.tokens(total_f)} forwarded."
    )
    return _svg("Original vs forwarded tokens over time", desc, body, chart_id)


def bar_chart(labels: Sequence[str], counts: Sequence[int], title: str, chart_id: str) -> str:
    """One bar per bucket (a histogram), count above each non-empty bar."""
    top = _nice_max(max(counts, default=0))
    plot_w, plot_h = _W_SMALL - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    slot = plot_w / max(len(counts), 1)
    body = _y_axis(top, "{}", _W_SMALL)
    every = 2 if len(counts) > 10 else 1  # crowded labels: every other (all in the table)
    for i, (label, n) in enumerate(zip(labels, counts, strict=True)):
        x = _LEFT + i * slot + slot * 0.15
        width = slot * 0.7
        h = plot_h * n / top
        body.append(
            f"<g><title>{escape(label)}: {fmt.count(n)}</title>"
            f'<rect class="bar-hist" x="{x:.1f}" y="{_TOP + plot_h - h:.1f}" '
            f'width="{width:.1f}" height="{h:.1f}" fill="#1f4e8c"/></g>'
        )
        if n:
            body.append(
                f'<text class="value" x="{x + width / 2:.1f}" '
                f'y="{_TOP + plot_h - h - 4:.1f}" text-anchor="middle">{fmt.count(n)}</text>'
            )
        if i % every == 0:
            body.append(
                f'<text class="tick" x="{x + width / 2:.1f}" y="{_H - _BOTTOM + 16}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    desc = "; ".join(f"{label}: {n}" for label, n in zip(labels, counts, strict=True))
    return _svg(title, desc, body, chart_id, _W_SMALL)
