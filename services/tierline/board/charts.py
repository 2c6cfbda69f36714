"""Charts drawn on the server as inline SVG: no script, no CDN, printable, readable offline.

Each chart is an `<svg role="img">` with a `<title>` and a `<desc>` that states every value,
so a screen reader gets the numbers the picture shows. Colours keep a contrast of at least
4.5:1 against white for text and 3:1 for marks (WCAG 1.4.3 / 1.4.11).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count

from markupsafe import Markup, escape

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 44
INK = "#1f2328"
GRID = "#8c959f"
COLOURS = ("#0b5cad", "#b35900", "#1a7f37", "#8250df")
_ids = count(1)


@dataclass(frozen=True)
class Series:
    """One line of a line chart; None marks a point without data."""

    name: str
    values: Sequence[float | None]


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.0f}%"
    if unit == "h":
        return f"{value:.1f} h"
    return f"{value:g}"


def _frame(title: str, desc: str, body: list[str]) -> Markup:
    n = next(_ids)
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-t{n} chart-d{n}" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="chart-t{n}">{escape(title)}</title>'
        f'<desc id="chart-d{n}">{escape(desc)}</desc>' + "".join(body) + "</svg>"
    )


def _axis(top_value: float, unit: str) -> list[str]:
    """Horizontal grid lines with their values, from 0 to `top_value`."""
    plot_h = HEIGHT - TOP - BOTTOM
    parts = []
    for step in range(5):
        value = top_value * step / 4
        y = TOP + plot_h - plot_h * step / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID}" stroke-width="0.5"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="{INK}">{escape(_fmt(value, unit))}</text>'
        )
    return parts


def _nice_top(values: Sequence[float], unit: str) -> float:
    top = max(values, default=0.0)
    if unit == "%":
        return 100.0
    if top <= 0:
        return 1.0
    for nice in (1, 2, 4, 8, 12, 16, 20, 40, 60, 80, 100, 120, 200, 400, 800, 1000, 2000):
        if top <= nice:
            return float(nice)
    return float(top)


def _label(x: float, text: str) -> str:
    return (
        f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11" '
        f'fill="{INK}">{escape(text)}</text>'
    )


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], unit: str = "") -> Markup:
    """Vertical bars, one per label; empty data says so instead of drawing nothing."""
    if not values:
        return _frame(title, "No data in this period.", [_empty()])
    top = _nice_top(values, unit)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(values)
    body = _axis(top, unit)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * min(value, top) / top
        x = LEFT + slot * i + slot * 0.15
        body.append(
            f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{h:.1f}" fill="{COLOURS[0]}"><title>{escape(label)}: '
            f"{escape(_fmt(value, unit))}</title></rect>"
        )
        body.append(_label(LEFT + slot * (i + 0.5), label))
    desc = "; ".join(f"{lab}: {_fmt(v, unit)}" for lab, v in zip(labels, values, strict=True))
    return _frame(title, desc, body)


def hbar_chart(title: str, labels: Sequence[str], values: Sequence[float]) -> Markup:
    """Horizontal bars, for long labels (categories); empty data says so."""
    if not values:
        return _frame(title, "No data in this period.", [_empty()])
    top = max(values) or 1
    label_w, row_h = 170, (HEIGHT - TOP - 8) / len(values)
    bar_w = WIDTH - LEFT - RIGHT - label_w
    body = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = TOP + row_h * i
        w = bar_w * value / top
        body.append(
            f'<text x="{label_w - 6}" y="{y + row_h * 0.65:.1f}" text-anchor="end" font-size="12" '
            f'fill="{INK}">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + row_h * 0.15:.1f}" width="{w:.1f}" '
            f'height="{row_h * 0.7:.1f}" fill="{COLOURS[0]}"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + row_h * 0.65:.1f}" font-size="12" '
            f'fill="{INK}">{escape(_fmt(value, ""))}</text>'
        )
    desc = "; ".join(f"{lab}: {_fmt(v, '')}" for lab, v in zip(labels, values, strict=True))
    return _frame(title, desc, body)


def line_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], unit: str = ""
) -> Markup:
    """Lines with point markers over shared x labels; gaps where a value is None."""
    known = [v for s in series for v in s.values if v is not None]
    if not labels or not known:
        return _frame(title, "No data in this period.", [_empty()])
    top = _nice_top(known, unit)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(labels)
    body = _axis(top, unit)
    body += [_label(LEFT + slot * (i + 0.5), lab) for i, lab in enumerate(labels)]
    descs = []
    for n, line in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        points = [
            (LEFT + slot * (i + 0.5), TOP + plot_h - plot_h * min(v, top) / top)
            for i, v in enumerate(line.values)
            if v is not None
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            body.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        body += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>' for x, y in points]
        body.append(_legend(n, line.name, colour))
        shown = ", ".join(
            f"{lab} {_fmt(v, unit) if v is not None else 'no data'}"
            for lab, v in zip(labels, line.values, strict=True)
        )
        descs.append(f"{line.name}: {shown}")
    return _frame(title, "; ".join(descs), body)


def _legend(n: int, name: str, colour: str) -> str:
    x = LEFT + 130 * n
    y = HEIGHT - 10
    return (
        f'<rect x="{x}" y="{y - 9}" width="12" height="10" fill="{colour}"/>'
        f'<text x="{x + 16}" y="{y}" font-size="11" fill="{INK}">{escape(name)}</text>'
    )


def _empty() -> str:
    return (
        f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="14" '
        f'fill="{INK}">No data in this period</text>'
    )
