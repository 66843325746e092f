"""The study page's figures as inline SVG: a scatter plot with axes, a heat map and a timeline.

Why our own and not plotly (Optuna's visualization) or matplotlib: the page must open offline and print, so every
script would be inlined (plotly.js is about 3.5 MB per page); matplotlib's SVG draws marks as anonymous paths, so a
point cannot carry its trial's number for a test or a tooltip. Here each mark is one element with a class, data-*
attributes and a <title> (the browser's own tooltip): no JavaScript at all."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def attributes(data: dict | None) -> str:
    return "".join(f' data-{k}="{esc(v)}"' for k, v in (data or {}).items())


def ticks(lo: float, hi: float, log: bool, count: int = 6) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if log:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        return [10.0**e * m for e in range(a, b + 1) for m in (1, 2, 5) if lo <= 10.0**e * m <= hi] or [lo, hi]
    raw = (hi - lo) / max(count - 1, 1)
    step = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step *= next((m for m in (1, 2, 2.5, 5, 10) if raw <= step * m), 10)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def label(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2g}"


@dataclass
class Plot:
    """A scatter plot over data ranges fixed at creation; marks are added, then svg() draws axes and marks."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_label: str
    y_label: str
    x_log: bool = False
    width: int = 760
    height: int = 430
    css: str = "plot"
    marks: list[str] = field(default_factory=list)
    left, right, top, bottom = 64, 16, 14, 46

    def __post_init__(self):
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        if self.x_log:
            x0, x1 = max(x0, 1e-9), max(x1, 1e-9)
            x0, x1 = x0 / 1.15, x1 * 1.15
        else:
            pad = (x1 - x0) * 0.05 or abs(x0) * 0.05 or 1.0
            x0, x1 = x0 - pad, x1 + pad
        pad = (y1 - y0) * 0.06 or abs(y0) * 0.01 or 1.0
        self.x_range, self.y_range = (x0, x1), (y0 - pad, y1 + pad)

    def x(self, v: float) -> float:
        lo, hi = self.x_range
        if self.x_log:
            v, lo, hi = math.log10(max(v, 1e-9)), math.log10(lo), math.log10(hi)
        return self.left + (v - lo) / (hi - lo) * (self.width - self.left - self.right)

    def y(self, v: float) -> float:
        lo, hi = self.y_range
        return self.height - self.bottom - (v - lo) / (hi - lo) * (self.height - self.top - self.bottom)

    def point(self, x: float, y: float, css: str, title: str, data: dict | None = None, r: float = 4.0) -> None:
        if not (math.isfinite(x) and math.isfinite(y)):
            return
        self.marks.append(f'<circle class="{css}" cx="{self.x(x):.1f}" cy="{self.y(y):.1f}" r="{r}"{attributes(data)}>'
                          f"<title>{esc(title)}</title></circle>")

    def star(self, x: float, y: float, css: str, title: str, data: dict | None = None, r: float = 9.0) -> None:
        if not (math.isfinite(x) and math.isfinite(y)):
            return
        cx, cy = self.x(x), self.y(y)
        pts = " ".join(f"{cx + (r if i % 2 == 0 else r / 2.4) * math.sin(i * math.pi / 5):.1f},"
                       f"{cy - (r if i % 2 == 0 else r / 2.4) * math.cos(i * math.pi / 5):.1f}" for i in range(10))
        self.marks.append(f'<polygon class="{css}" points="{pts}"{attributes(data)}><title>{esc(title)}</title></polygon>')

    def line(self, xy: list[tuple[float, float]], css: str, title: str = "") -> None:
        xy = [(a, b) for a, b in xy if math.isfinite(a) and math.isfinite(b)]
        if len(xy) > 1:
            d = " ".join(f"{'M' if i == 0 else 'L'}{self.x(a):.1f},{self.y(b):.1f}" for i, (a, b) in enumerate(xy))
            self.marks.append(f'<path class="{css}" d="{d}"><title>{esc(title)}</title></path>')

    def hline(self, y: float, css: str, text: str) -> None:
        if math.isfinite(y) and self.y_range[0] <= y <= self.y_range[1]:
            py = self.y(y)
            self.marks.append(f'<line class="{css}" x1="{self.left}" x2="{self.width - self.right}" y1="{py:.1f}" '
                              f'y2="{py:.1f}"/><text class="note" x="{self.width - self.right - 4}" y="{py - 4:.1f}" '
                              f'text-anchor="end">{esc(text)}</text>')

    def vline(self, x: float, css: str, text: str) -> None:
        if math.isfinite(x) and self.x_range[0] <= x <= self.x_range[1]:
            px = self.x(x)
            self.marks.append(f'<line class="{css}" y1="{self.top}" y2="{self.height - self.bottom}" x1="{px:.1f}" '
                              f'x2="{px:.1f}"/><text class="note" x="{px + 4:.1f}" y="{self.top + 12}">{esc(text)}</text>')

    def svg(self) -> str:
        w, h, left, bottom = self.width, self.height, self.left, self.height - self.bottom
        parts = [f'<svg class="{self.css}" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">']
        for v in ticks(*self.x_range, self.x_log):
            px = self.x(v)
            parts.append(f'<line class="grid" x1="{px:.1f}" x2="{px:.1f}" y1="{self.top}" y2="{bottom}"/>'
                         f'<text class="tick" x="{px:.1f}" y="{bottom + 16}" text-anchor="middle">{label(v)}</text>')
        for v in ticks(*self.y_range, False):
            py = self.y(v)
            parts.append(f'<line class="grid" x1="{left}" x2="{w - self.right}" y1="{py:.1f}" y2="{py:.1f}"/>'
                         f'<text class="tick" x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{label(v)}</text>')
        parts.append(f'<rect class="frame" x="{left}" y="{self.top}" width="{w - left - self.right}" '
                     f'height="{bottom - self.top}"/>')
        parts.append(f'<text class="axis" x="{(left + w - self.right) / 2}" y="{h - 8}" text-anchor="middle">'
                     f"{esc(self.x_label)}</text>")
        parts.append(f'<text class="axis" transform="translate(14 {(self.top + bottom) / 2}) rotate(-90)" '
                     f'text-anchor="middle">{esc(self.y_label)}</text>')
        return "".join(parts + self.marks + ["</svg>"])


def heatmap(rows: list[str], columns: list[str], colour: list[list[str | None]], titles: list[list[str]],
            css: str = "heat", cell: int = 14) -> str:
    """A grid of rows × columns cells; a None colour is left blank. Labels are the rows' and columns' names."""
    left = min(260, 7 * max((len(r) for r in rows), default=4) + 10)
    top = min(200, 6 * max((len(c) for c in columns), default=4) + 10)
    w, h = left + cell * len(columns) + 4, top + cell * len(rows) + 4
    parts = [f'<svg class="{css}" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">']
    for j, c in enumerate(columns):
        x = left + cell * j + cell / 2 + 4
        parts.append(f'<text class="tick" transform="translate({x:.1f} {top - 4}) rotate(-60)">{esc(c)}</text>')
    for i, r in enumerate(rows):
        y = top + cell * i
        parts.append(f'<text class="tick" x="{left - 4}" y="{y + cell - 3}" text-anchor="end">{esc(r)}</text>')
        for j, fill in enumerate(colour[i]):
            if fill is not None:
                parts.append(f'<rect class="cell" x="{left + cell * j}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                             f'fill="{fill}"><title>{esc(titles[i][j])}</title></rect>')
    return "".join(parts + ["</svg>"])


def timeline(segments: list[tuple[str, float, float, str]], ticks_at: list[tuple[float, str, str]],
             marks: list[tuple[float, str]], width: int = 760) -> str:
    """Phases as bars on one time axis (label, start s, end s, css), trials as ticks (time, css, title), moments as
    labelled marks (time, label)."""
    end = max([e for _, _, e, _ in segments] + [t for t, _, _ in ticks_at] + [t for t, _ in marks] + [1.0])
    left, right, row = 10, 190, 22  # right: room for the last bar's label
    scale = (width - left - right) / end
    h = row * (len(segments) + 2) + 40
    parts = [f'<svg class="timeline" viewBox="0 0 {width} {h}" width="{width}" height="{h}" role="img">']
    for i, (name, a, b, css) in enumerate(segments):
        y = 8 + row * i
        parts.append(f'<rect class="{css}" x="{left + a * scale:.1f}" y="{y}" width="{max((b - a) * scale, 1.5):.1f}" '
                     f'height="{row - 6}"><title>{esc(name)}: {b - a:.1f} s</title></rect>'
                     f'<text class="tick" x="{left + b * scale + 4:.1f}" y="{y + row - 10}">{esc(name)} '
                     f"{b - a:.1f} s</text>")
    y = 8 + row * len(segments)
    for t, css, title in ticks_at:
        parts.append(f'<rect class="{css}" x="{left + t * scale:.1f}" y="{y}" width="2" height="{row - 6}">'
                     f"<title>{esc(title)}</title></rect>")
    for t, text in marks:
        x = left + t * scale
        parts.append(f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="4" y2="{y + row}"/>'
                     f'<text class="note" x="{x + 3:.1f}" y="{y + row + 12}">{esc(text)}</text>')
    for v in ticks(0.0, end, False):
        parts.append(f'<text class="tick" x="{left + v * scale:.1f}" y="{h - 4}" text-anchor="middle">{label(v)} s</text>')
    return "".join(parts + ["</svg>"])
