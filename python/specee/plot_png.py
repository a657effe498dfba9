"""Tiny dependency-free chart renderer: bar charts, histograms and line charts
written as PNG files (numpy raster, built-in 5x7 bitmap font, stdlib PNG writer).

It exists because the package may not depend on a plotting library; it draws
just what `specee eval` needs and nothing more.
"""
from __future__ import annotations

import itertools
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Canvas", "bar_chart", "histogram", "line_chart", "nice_ticks", "write_png"]

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
TEXT: Color = (30, 30, 30)
GRID: Color = (225, 225, 225)
AXIS: Color = (90, 90, 90)
BAR: Color = (52, 101, 164)
REFERENCE: Color = (200, 40, 40)
PALETTE: list[Color] = [(33, 102, 172), (214, 96, 77), (27, 158, 119), (117, 112, 179),
                        (230, 150, 0), (110, 110, 110), (200, 40, 140), (140, 90, 30)]

# 5x7 glyphs (9 rows with descenders): one base-32 digit per row, bit 4 = leftmost column.
GLYPH_W, GLYPH_H, ADVANCE = 5, 9, 6
_FONT = {
    '0': 'ehjlphe', '1': '4c4444e', '2': 'eh1248v', '3': 'v2421he', '4': '26aiv22', '5': 'vgu11he', '6': '68guhhe',
    '7': 'v124888', '8': 'ehhehhe', '9': 'ehhf12c', 'A': 'ehhvhhh', 'B': 'uhhuhhu', 'C': 'ehggghe', 'D': 'sihhhis',
    'E': 'vgguggv', 'F': 'vgguggg', 'G': 'ehgnhhf', 'H': 'hhhvhhh', 'I': 'e44444e', 'J': '72222ic', 'K': 'hikokih',
    'L': 'ggggggv', 'M': 'hrllhhh', 'N': 'hhpljhh', 'O': 'ehhhhhe', 'P': 'uhhuggg', 'Q': 'ehhhlid', 'R': 'uhhukih',
    'S': 'fgge11u', 'T': 'v444444', 'U': 'hhhhhhe', 'V': 'hhhhha4', 'W': 'hhhllla', 'X': 'hha4ahh', 'Y': 'hha4444',
    'Z': 'v1248gv', 'a': '00e1fhf', 'b': 'ggmphhu', 'c': '00egghe', 'd': '11djhhf', 'e': '00ehvge', 'f': '698s888',
    'g': '00fhhhf1e', 'h': 'ggmphhh', 'i': '40c444e', 'j': '2062222ic', 'k': 'ggikoki', 'l': 'c44444e',
    'm': '00qllll', 'n': '00mphhh', 'o': '00ehhhe', 'p': '00uhhhugg', 'q': '00fhhhf11', 'r': '00mpggg',
    's': '00fge1u', 't': '88s8896', 'u': '00hhhjd', 'v': '00hhha4', 'w': '00hhlla', 'x': '00ha4ah',
    'y': '00hhhhf1e', 'z': '00v248v', ' ': '', '.': '00000cc', ',': '00000c48', ':': '0cc0cc0',
    ';': '0cc0c48', '-': '000e000', '+': '044v440', '_': '000000v', '/': '01248g0', '(': '2488842', ')': '8422248',
    '%': 'op248j3', '=': '00v0v00', '<': '248g842', '>': '8421248', '@': 'ehnlnge', "'": '4480000', '?': 'eh12404',
    '[': 'e88888e', ']': 'e22222e',
}
_UNKNOWN = 'vhhhhhv'  # a box


def glyph(ch: str) -> np.ndarray:
    """The (9, 5) boolean bitmap of one character; unknown characters give a box."""
    rows = [int(d, 32) for d in _FONT.get(ch, _UNKNOWN).ljust(GLYPH_H, '0')]
    return np.array([[(r >> (GLYPH_W - 1 - c)) & 1 for c in range(GLYPH_W)] for r in rows], dtype=bool)


def text_mask(text: str, scale: int = 1, vertical: bool = False) -> np.ndarray:
    """Boolean bitmap of a line of text; vertical text reads bottom to top."""
    mask = np.zeros((GLYPH_H, max(ADVANCE * len(text) - 1, 0)), dtype=bool)
    for i, ch in enumerate(text):
        mask[:, i * ADVANCE:i * ADVANCE + GLYPH_W] = glyph(ch)
    mask = mask.repeat(scale, axis=0).repeat(scale, axis=1)
    return np.rot90(mask) if vertical else mask


def text_width(text: str, scale: int = 1) -> int:
    return max(ADVANCE * len(text) - 1, 0) * scale


class Canvas:
    """An RGB raster (`pixels`, shape (height, width, 3), uint8); drawing clips at the edges."""

    def __init__(self, width: int, height: int, background: Color = WHITE):
        self.width, self.height = width, height
        self.pixels = np.empty((height, width, 3), dtype=np.uint8)
        self.pixels[:] = background

    def fill_rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """Fills the pixels x0 <= x < x1, y0 <= y < y1 (corners may come in any order)."""
        xa, xb = sorted((round(x0), round(x1)))
        ya, yb = sorted((round(y0), round(y1)))
        self.pixels[max(ya, 0):max(yb, 0), max(xa, 0):max(xb, 0)] = color

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Color,
             thickness: int = 1, dash: int = 0) -> None:
        """A straight line, 1 or 2 pixels thick; dash > 0 draws dash-long segments with equal gaps."""
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs = np.rint(np.linspace(x0, x1, steps)).astype(int)
        ys = np.rint(np.linspace(y0, y1, steps)).astype(int)
        if dash > 0:
            keep = (np.arange(steps) // dash) % 2 == 0
            xs, ys = xs[keep], ys[keep]
        offsets = [(0, 0)] if thickness < 2 else [(0, 0), (1, 0), (0, 1)]
        for dx, dy in offsets:
            self._plot(xs + dx, ys + dy, color)

    def _plot(self, xs: np.ndarray, ys: np.ndarray, color: Color) -> None:
        inside = (xs >= 0) & (xs < self.width) & (ys >= 0) & (ys < self.height)
        self.pixels[ys[inside], xs[inside]] = color

    def marker(self, x: float, y: float, color: Color, radius: int = 3) -> None:
        """A filled disc centred on (x, y)."""
        oy, ox = np.mgrid[-radius:radius + 1, -radius:radius + 1]
        disc = ox * ox + oy * oy <= radius * radius + 1
        self._plot(ox[disc] + round(x), oy[disc] + round(y), color)

    def text(self, x: float, y: float, text: str, color: Color = TEXT, scale: int = 1,
             anchor: tuple[float, float] = (0.0, 0.0), vertical: bool = False,
             background: Color | None = None) -> tuple[int, int, int, int]:
        """Draws text whose box has its point `anchor` (fractions of width, height; (0, 0) is the
        top-left corner, (0.5, 0.5) the centre) at (x, y), optionally on a filled box.
        Returns the box (x0, y0, x1, y1)."""
        mask = text_mask(text, scale, vertical)
        h, w = mask.shape
        x0, y0 = round(x - anchor[0] * w), round(y - anchor[1] * h)
        if background is not None:
            self.fill_rect(x0 - 1, y0 - 1, x0 + w + 1, y0 + h, background)
        ys, xs = np.nonzero(mask)
        self._plot(xs + x0, ys + y0, color)
        return x0, y0, x0 + w, y0 + h


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Writes an (height, width, 3) array as an 8-bit RGB PNG (no filtering)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"expected a non-empty (height, width, 3) array, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    rows = np.clip(rgb, 0, 255).astype(np.uint8).reshape(height, width * 3)
    raw = np.hstack([np.zeros((height, 1), dtype=np.uint8), rows]).tobytes()  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    path = Path(path)
    path.write_bytes(png)
    return path


def nice_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1.0):
        pad = abs(lo) * 0.5 or 1.0
        lo, hi = (lo - pad, hi + pad) if lo != 0 else (0.0, 1.0)
    raw = (hi - lo) / max(max_ticks - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _format_tick(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    text = f"{value:.{decimals}f}" if abs(value) < 1e7 else f"{value:.2g}"
    return "0" if text.lstrip("-").strip("0.") == "" else text


def _format_value(value: float) -> str:
    size = abs(value)
    return f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}"


@dataclass
class _Plot:
    """A canvas with a plot area and the data ranges it maps onto that area."""
    canvas: Canvas
    left: int
    top: int
    right: int
    bottom: int
    x_range: tuple[float, float]
    y_ticks: list[float]

    def px(self, x: float) -> float:
        lo, hi = self.x_range
        return self.left + (x - lo) / (hi - lo) * (self.right - self.left)

    def py(self, y: float) -> float:
        lo, hi = self.y_ticks[0], self.y_ticks[-1]
        return self.bottom - (y - lo) / (hi - lo) * (self.bottom - self.top)

    def x_tick(self, x: float, label: str, grid: bool = True) -> None:
        if grid:
            self.canvas.line(self.px(x), self.top, self.px(x), self.bottom, GRID)
        self.canvas.line(self.px(x), self.bottom, self.px(x), self.bottom + 3, AXIS)
        self.canvas.text(self.px(x), self.bottom + 6, label, anchor=(0.5, 0))

    def no_data(self) -> None:
        self.canvas.text((self.left + self.right) / 2, (self.top + self.bottom) / 2, "no data",
                         color=AXIS, scale=2, anchor=(0.5, 0.5))

    def finish(self, path: str | Path) -> Path:
        """Draws the axis lines over the data and writes the PNG."""
        self.canvas.line(self.left, self.top, self.left, self.bottom, AXIS)
        self.canvas.line(self.left, self.bottom, self.right, self.bottom, AXIS)
        return write_png(path, self.canvas.pixels)


def _fit(text: str, width: int) -> str:
    """Cuts text that would be wider than `width` pixels, marking the cut with '..'."""
    if text_width(text) <= width:
        return text
    return text[:max((width + 1) // ADVANCE - 2, 0)] + ".."


def _setup(title: str, xlabel: str, ylabel: str, y_lo: float, y_hi: float,
           x_range: tuple[float, float], size: tuple[int, int], integer_y: bool = False) -> _Plot:
    """Canvas with title, axis labels, y ticks and the horizontal grid drawn."""
    width, height = size
    ticks = nice_ticks(y_lo, y_hi)
    if integer_y and ticks[1] - ticks[0] < 1:
        ticks = [float(t) for t in range(math.floor(ticks[0]), math.ceil(ticks[-1]) + 1)]
    labels = [_format_tick(t, ticks[1] - ticks[0]) for t in ticks]
    left = 8 + GLYPH_H + 8 + max(text_width(s) for s in labels) + 6
    plot = _Plot(Canvas(width, height), left, 36, width - 20, height - (42 if xlabel else 28), x_range, ticks)
    c = plot.canvas
    scale = 2 if text_width(title, 2) <= width - 16 else 1
    c.text(width / 2, 8 + (2 - scale) * 4, _fit(title, width - 16), scale=scale, anchor=(0.5, 0))
    c.text((plot.left + plot.right) / 2, height - 6, _fit(xlabel, width - 16), anchor=(0.5, 1))
    c.text(8, (plot.top + plot.bottom) / 2, _fit(ylabel, plot.bottom - plot.top), anchor=(0, 0.5), vertical=True)
    for tick, label in zip(ticks, labels):
        y = plot.py(tick)
        c.line(left, y, plot.right, y, GRID)
        c.line(left - 3, y, left, y, AXIS)
        c.text(left - 6, y, label, anchor=(1, 0.5))
    return plot


def _is_number(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def bar_chart(path: str | Path, labels: list[str], values: list[float], title: str, ylabel: str,
              reference: float | None = None, *, size: tuple[int, int] = (640, 400)) -> Path:
    """One bar per label with its value printed above it; NaN values get no bar, only "n/a".
    `reference` draws a dashed horizontal line (e.g. speedup 1.0)."""
    n = min(len(labels), len(values))
    labels, values = [str(s) for s in labels[:n]], [math.nan if v is None else float(v) for v in values[:n]]
    known = [v for v in [*values, reference] if _is_number(v)]
    lo, hi = min(known + [0.0]), max(known + [0.0])
    pad = 0.1 * (hi - lo)  # head room for the value labels
    plot = _setup(title, "", ylabel, lo - (pad if lo < 0 else 0), hi + pad, (0, max(n, 1)), size)
    c = plot.canvas
    if not n:
        plot.no_data()
        return plot.finish(path)
    slot = (plot.right - plot.left) / n
    stagger = any(text_width(s) > slot - 4 for s in labels)
    zero = plot.py(0.0)
    value_labels = []  # drawn last, so that the reference line cannot hide them
    for i, (label, value) in enumerate(zip(labels, values)):
        centre = plot.px(i + 0.5)
        row = 1 if stagger and i % 2 else 0
        label = _fit(label, int(slot * (2 if stagger else 1)) - 6)
        half_text = text_width(label) / 2 + 1
        c.text(min(max(centre, half_text), c.width - half_text), plot.bottom + 6 + row * 11, label, anchor=(0.5, 0))
        if not _is_number(value):
            value_labels.append((centre, zero - 3, "n/a", 1))
            continue
        top = plot.py(value)
        if abs(top - zero) < 1 and value != 0:  # a tiny value still gets a visible bar
            top = zero - 1 if value > 0 else zero + 1
        half = max(slot * 0.3, 1)
        c.fill_rect(centre - half, zero, centre + half, top, BAR)
        value_labels.append((centre, top - 3, _format_value(value), 1) if value >= 0
                            else (centre, top + 3, _format_value(value), 0))
    if plot.y_ticks[0] < 0:
        c.line(plot.left, zero, plot.right, zero, AXIS)
    if _is_number(reference):
        y = plot.py(reference)
        c.line(plot.left, y, plot.right, y, REFERENCE, thickness=2, dash=6)
        c.text(plot.right - 2, y - 3, _format_value(reference), color=REFERENCE, anchor=(1, 1), background=WHITE)
    for x, y, text, vertical_anchor in value_labels:
        c.text(x, y, text, anchor=(0.5, vertical_anchor), background=WHITE)
    return plot.finish(path)


def histogram(path: str | Path, counts: list[int] | dict[int, int], title: str, xlabel: str,
              ylabel: str, *, size: tuple[int, int] = (640, 400)) -> Path:
    """A bar per integer bin. A list holds the counts of bins 0, 1, 2, ...; a dict maps bin to count.
    Bins between the smallest and the largest are all shown."""
    table = dict(enumerate(counts)) if isinstance(counts, (list, tuple)) else dict(counts)
    table = {int(k): v for k, v in table.items() if _is_number(v)}
    first, last = (min(table), max(table)) if table else (0, 0)
    n = last - first + 1
    plot = _setup(title, xlabel, ylabel, 0, max(list(table.values()) + [0]) * 1.05, (first - 0.5, last + 0.5),
                  size, integer_y=True)
    c = plot.canvas
    if not table:
        plot.no_data()
        return plot.finish(path)
    slot = (plot.right - plot.left) / n
    widest = max(text_width(str(first)), text_width(str(last))) + 8
    every = next((k * p for p in (1, 10, 100, 1000, 10000) for k in (1, 2, 5) if k * p * slot >= widest), n)
    for b in range(first, last + 1):
        if b % every == 0:
            plot.x_tick(b, str(b), grid=False)
        count = table.get(b, 0)
        if count > 0:
            half = max(slot * 0.4 - 0.5, 0.5) if slot >= 3 else slot / 2
            top = min(plot.py(count), plot.bottom - 1)
            c.fill_rect(plot.px(b) - half, plot.bottom, plot.px(b) + half, top, BAR)
    return plot.finish(path)


def line_chart(path: str | Path, series: dict[str, list[tuple[float, float]]], title: str, xlabel: str,
               ylabel: str, *, size: tuple[int, int] = (640, 400)) -> Path:
    """One polyline with point markers per series, each in its own colour, with a legend.
    Points with a NaN (or None) coordinate are left out."""
    clean = {name: [(float(x), float(y)) for x, y in points if _is_number(x) and _is_number(y)]
             for name, points in series.items()}
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    x_ticks = nice_ticks(min(xs, default=0.0), max(xs, default=1.0))
    y_lo, y_hi = min(ys, default=0.0), max(ys, default=1.0)
    plot = _setup(title, xlabel, ylabel, y_lo, y_hi, (x_ticks[0], x_ticks[-1]), size)
    c = plot.canvas
    for tick in x_ticks:
        plot.x_tick(tick, _format_tick(tick, x_ticks[1] - x_ticks[0]))
    if not xs:
        plot.no_data()
        return plot.finish(path)
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(clean)}
    for name, pts in clean.items():
        pts = sorted(pts)
        for (xa, ya), (xb, yb) in itertools.pairwise(pts):
            c.line(plot.px(xa), plot.py(ya), plot.px(xb), plot.py(yb), colours[name], thickness=2)
        for x, y in pts:
            c.marker(plot.px(x), plot.py(y), colours[name])
    _legend(plot, colours)
    return plot.finish(path)


def _legend(plot: _Plot, colours: dict[str, Color]) -> None:
    """A boxed legend in the plot-area corner that covers the fewest data pixels."""
    c = plot.canvas
    names = [_fit(name, (plot.right - plot.left) // 2) for name in colours]
    w, h = max(text_width(s) for s in names) + 36, 12 * len(names) + 8
    corners = [(plot.right - w - 6, plot.top + 6), (plot.left + 6, plot.top + 6),
               (plot.right - w - 6, plot.bottom - h - 6), (plot.left + 6, plot.bottom - h - 6)]

    def covered(corner: tuple[int, int]) -> int:
        x, y = corner
        region = c.pixels[max(y, 0):y + h, max(x, 0):x + w]
        return sum(int(np.all(region == colour, axis=-1).sum()) for colour in colours.values())

    x, y = min(corners, key=covered)
    c.fill_rect(x, y, x + w, y + h, WHITE)
    for edge in ((x, y, x + w - 1, y), (x, y + h - 1, x + w - 1, y + h - 1), (x, y, x, y + h - 1),
                 (x + w - 1, y, x + w - 1, y + h - 1)):
        c.line(*edge, AXIS)
    for i, (name, colour) in enumerate(zip(names, colours.values())):
        row = y + 8 + 12 * i + 3
        c.line(x + 6, row, x + 24, row, colour, thickness=2)
        c.marker(x + 15, row, colour, radius=2)
        c.text(x + 30, row, name, anchor=(0, 0.5))
