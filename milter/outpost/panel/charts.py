"""Server-side SVG charts (no JavaScript): stacked bars with an optional
limit line.  Every label is escaped; the result is inline markup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from markupsafe import Markup, escape


@dataclass(frozen=True)
class Series:
    name: str                   # legend text
    css: str                    # class of its bars (colour, in panel.css)
    values: Sequence[int]       # one per bucket, oldest first


def _nice_max(value: float) -> int:
    """The smallest of 1, 2, 5 × 10^k at or above ``value`` (at least 2)."""
    if value <= 2:
        return 2
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def bar_chart(title: str, labels: Sequence[str], series: Sequence[Series],
              limit: Optional[tuple[str, float]] = None, width: int = 720,
              height: int = 180) -> Markup:
    """Stacked bars, one per label (oldest left); ``limit``: (label, value)
    drawn as a dashed line.  ``<title>`` elements carry each bar's numbers
    (shown on hover, read by screen readers)."""
    n = len(labels)
    left, bottom, top = 40, 20, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    totals = [sum(s.values[i] for s in series) for i in range(n)]
    peak = max(totals + [limit[1] if limit else 0] + [0])
    ymax = _nice_max(peak)
    bw = plot_w / max(n, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
             f'<title>{escape(title)}</title>']
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="axis" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{escape(_fmt(ymax * frac))}</text>')
    for i in range(n):
        x = left + i * bw
        y = top + plot_h
        tip = ", ".join(f"{s.name} {s.values[i]}" for s in series)
        parts.append(f'<g class="bar"><title>{escape(labels[i])}: {escape(tip)}</title>')
        for s in series:
            v = s.values[i]
            if not v:
                continue
            h = plot_h * v / ymax
            y -= h
            parts.append(f'<rect class="{escape(s.css)}" x="{x + 0.5:.1f}" y="{y:.1f}" '
                         f'width="{max(bw - 1, 1):.1f}" height="{h:.1f}"/>')
        parts.append('</g>')
    if limit is not None and limit[1] > 0:
        y = top + plot_h * (1 - limit[1] / ymax)
        parts.append(f'<line class="limit" x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="limit-label" x="{width - 12}" y="{y - 3:.1f}" text-anchor="end">'
                     f'{escape(limit[0])}</text>')
    step = max(1, n // 6)
    for i in range(0, n, step):
        parts.append(f'<text class="axis" x="{left + i * bw + bw / 2:.1f}" y="{height - 5}" '
                     f'text-anchor="middle">{escape(labels[i])}</text>')
    parts.append('</svg>')
    legend = "".join(f'<span class="key {escape(s.css)}"></span>{escape(s.name)} '
                     f'({sum(s.values)}) ' for s in series)
    return Markup(f'<figure class="chart">{"".join(parts)}'
                  f'<figcaption>{escape(title)}: {legend}</figcaption></figure>')


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"
