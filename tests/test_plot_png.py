"""Tests of the tiny PNG chart renderer. The PNGs are decoded here by hand
(chunks, CRCs, zlib, filter type 0) so the writer is checked against the format,
not against itself."""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from specee import plot_png
from specee.plot_png import (
    AXIS,
    BAR,
    PALETTE,
    REFERENCE,
    Canvas,
    bar_chart,
    histogram,
    line_chart,
    nice_ticks,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png(path) -> np.ndarray:
    """Decodes an 8-bit RGB, non-interlaced PNG whose rows all use filter type 0."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + width * 3)
    assert np.all(rows[:, 0] == 0), "expected filter type 0 on every row"
    return rows[:, 1:].reshape(height, width, 3)


def is_colour(image: np.ndarray, colour) -> np.ndarray:
    return np.all(image == np.array(colour, dtype=np.uint8), axis=-1)


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a 1-d boolean array."""
    padded = np.concatenate([[False], flags, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


def x_axis_row(image: np.ndarray) -> int:
    """The row of the horizontal axis line: the row with the most axis-coloured pixels."""
    return int(np.argmax(is_colour(image, AXIS).sum(axis=1)))


def bar_runs(image: np.ndarray) -> list[tuple[int, int]]:
    """The horizontal extents of the bars standing on the x axis."""
    return runs(is_colour(image, BAR)[x_axis_row(image) - 1])


# -- PNG writer and canvas -------------------------------------------------------------------------------

def test_write_png_round_trips_pixels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    path = plot_png.write_png(tmp_path / "x.png", rgb)
    assert np.array_equal(decode_png(path), rgb)


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 4), (0, 5, 3)])
def test_write_png_rejects_non_rgb_arrays(tmp_path, shape):
    with pytest.raises(ValueError):
        plot_png.write_png(tmp_path / "x.png", np.zeros(shape, dtype=np.uint8))


def test_fill_rect_fills_exactly_and_clips():
    c = Canvas(20, 10)
    c.fill_rect(15, 8, 3, 2, (255, 0, 0))  # corners in any order
    red = is_colour(c.pixels, (255, 0, 0))
    assert red.sum() == 12 * 6 and red[2:8, 3:15].all()
    c.fill_rect(-5, -5, 100, 100, (0, 0, 255))  # clipped, no error
    assert is_colour(c.pixels, (0, 0, 255)).all()


def test_lines_in_every_direction_thickness_and_dashes():
    c = Canvas(50, 50)
    c.line(0, 10, 49, 10, BAR)
    assert is_colour(c.pixels, BAR)[10].all() and is_colour(c.pixels, BAR).sum() == 50
    c = Canvas(50, 50)
    c.line(30, 45, 30, 5, BAR)  # upwards
    assert is_colour(c.pixels, BAR)[5:46, 30].all() and is_colour(c.pixels, BAR).sum() == 41
    c = Canvas(50, 50)
    c.line(40, 0, 0, 40, BAR)  # diagonal, right to left
    diagonal = is_colour(c.pixels, BAR)
    assert diagonal.sum() == 41 and all(diagonal[i, 40 - i] for i in range(41))
    c = Canvas(50, 50)
    c.line(0, 10, 49, 10, BAR, thickness=2)
    assert is_colour(c.pixels, BAR)[10:12].all()
    c = Canvas(50, 50)
    c.line(0, 10, 49, 10, BAR, dash=5)
    assert len(runs(is_colour(c.pixels, BAR)[10])) == 5
    Canvas(10, 10).line(-20, -20, 30, 30, BAR, thickness=2)  # off the canvas: clipped, no error


def test_text_puts_dark_pixels_inside_its_box():
    c = Canvas(80, 40)
    x0, y0, x1, y1 = c.text(10, 5, "Hi 42")
    assert (x0, y0, x1 - x0, y1 - y0) == (10, 5, 5 * 6 - 1, 9)
    dark = c.pixels.sum(axis=-1) < 200
    ys, xs = np.nonzero(dark)
    assert len(xs) > 30
    assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
    # every character cell but the space has ink
    assert [dark[y0:y1, x0 + 6 * i:x0 + 6 * i + 5].any() for i in range(5)] == [True, True, False, True, True]


def test_text_scale_anchor_and_vertical():
    small, big = Canvas(100, 60), Canvas(100, 60)
    small.text(0, 0, "A7%")
    box = big.text(50, 30, "A7%", scale=2, anchor=(0.5, 0.5))
    assert box == (50 - 17, 30 - 9, 50 + 17, 30 + 9)
    assert (big.pixels.sum(-1) < 200).sum() == 4 * (small.pixels.sum(-1) < 200).sum()
    up = Canvas(40, 60)
    x0, y0, x1, y1 = up.text(5, 5, "speed", vertical=True)
    assert (x1 - x0, y1 - y0) == (9, 29)
    ys, xs = np.nonzero(up.pixels.sum(-1) < 200)
    assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1


def test_font_covers_the_promised_characters_with_distinct_glyphs():
    promised = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.,:;-+_/()%=<>x@'?"
    box = plot_png.glyph("\u20ac")  # not in the font
    assert box[0].all() and box[6].all() and box[:7, 0].all() and not box[3, 2]
    shapes = {ch: plot_png.glyph(ch).tobytes() for ch in promised}
    assert len(set(shapes.values())) == len(shapes)  # no two characters look alike
    assert box.tobytes() not in shapes.values()
    assert not plot_png.glyph(" ").any()


def test_nice_ticks_cover_the_range_with_round_steps():
    for lo, hi in [(0, 1.42), (0.93, 1.08), (-412, 375), (1000, 3000), (0, 317), (0.001, 0.005)]:
        ticks = nice_ticks(lo, hi)
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert ticks[0] <= lo and ticks[-1] >= hi and 3 <= len(ticks) <= 8
        assert any(math.isclose(mantissa, m) for m in (1, 2, 5))
        assert np.allclose(np.diff(ticks), step)
    assert nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(5, 5)[0] < 5 < nice_ticks(5, 5)[-1]


# -- charts ----------------------------------------------------------------------------------------------

def test_bar_chart_draws_one_bar_per_value_with_height_in_proportion(tmp_path):
    path = bar_chart(tmp_path / "bars.png", ["low", "high", "mid"], [1.0, 3.0, 2.0], title="Speedup", ylabel="x")
    image = decode_png(path)
    assert image.shape == (400, 640, 3)
    found = bar_runs(image)
    assert len(found) == 3
    heights = [is_colour(image, BAR)[:, (a + b) // 2].sum() for a, b in found]
    assert heights[1] > heights[2] > heights[0]
    assert heights[1] == pytest.approx(3 * heights[0], abs=3)
    assert heights[2] == pytest.approx(2 * heights[0], abs=3)
    widths = {b - a for a, b in found}
    assert max(widths) - min(widths) <= 1


def test_bar_chart_prints_values_above_the_bars(tmp_path):
    image = decode_png(bar_chart(tmp_path / "b.png", ["a", "b"], [1.5, 2.0], title="t", ylabel="y"))
    bar = is_colour(image, BAR)
    for a, b in bar_runs(image):
        top = np.flatnonzero(bar[:, (a + b) // 2]).min()
        above = image[top - 14:top, a:b].sum(axis=-1) < 200
        assert above.sum() > 20  # the value label


def test_bar_chart_reference_line_and_nan_values(tmp_path):
    image = decode_png(bar_chart(tmp_path / "r.png", ["a", "b", "c"], [0.8, float("nan"), 1.3],
                                 title="t", ylabel="speedup", reference=1.0))
    assert len(bar_runs(image)) == 2
    ref_rows = np.flatnonzero(is_colour(image, REFERENCE).sum(axis=1) > 150)
    assert len(ref_rows) >= 1  # a long dashed horizontal line
    no_ref = decode_png(bar_chart(tmp_path / "n.png", ["a"], [0.8], title="t", ylabel="y"))
    assert not is_colour(no_ref, REFERENCE).any()


def test_bar_chart_negative_and_tiny_values_still_get_bars(tmp_path):
    image = decode_png(bar_chart(tmp_path / "neg.png", ["a", "b", "c"], [-2.0, 1e-6, 3.0], title="t", ylabel="y"))
    bar = is_colour(image, BAR)
    found = runs(bar.any(axis=0))
    assert len(found) == 3
    zero, bottom = np.flatnonzero(is_colour(image, AXIS).sum(axis=1) > 500)  # zero line, then the x axis
    rows = [np.flatnonzero(bar[:, a:b].any(axis=1)) for a, b in found]
    assert rows[0].min() >= zero and rows[0].max() < bottom  # hangs below zero
    assert 1 <= len(rows[1]) <= 2 and rows[1].max() < zero  # tiny but visible
    assert rows[2].max() < zero and len(rows[2]) == pytest.approx(1.5 * len(rows[0]), abs=3)


@pytest.mark.parametrize("draw", [
    lambda p: bar_chart(p, [], [], title="Speedup", ylabel="speedup", reference=1.0),
    lambda p: histogram(p, {}, title="Exit layers", xlabel="layer", ylabel="steps"),
    lambda p: line_chart(p, {}, title="Sweep", xlabel="threshold", ylabel="ratio"),
    lambda p: line_chart(p, {"a": [(float("nan"), 1.0)]}, title="Sweep", xlabel="x", ylabel="y"),
])
def test_empty_data_writes_a_valid_png_saying_no_data(tmp_path, draw):
    image = decode_png(draw(tmp_path / "empty.png"))
    assert image.shape == (400, 640, 3)
    middle = image[170:230, 240:400].sum(axis=-1) < 600
    assert middle.sum() > 50  # "no data"
    assert not is_colour(image, BAR).any() and not is_colour(image, PALETTE[0]).any()


def test_all_zero_values_draw_axes_and_no_bars(tmp_path):
    bars = decode_png(bar_chart(tmp_path / "z.png", ["a", "b"], [0.0, 0.0], title="t", ylabel="y"))
    hist = decode_png(histogram(tmp_path / "h.png", [0, 0, 0], title="t", xlabel="x", ylabel="y"))
    for image in (bars, hist):
        assert not is_colour(image, BAR).any()
        assert is_colour(image, AXIS)[x_axis_row(image)].sum() > 500


def test_histogram_draws_a_bar_per_non_zero_bin(tmp_path):
    counts = {layer: (0 if layer % 4 == 0 else layer * 37 % 500) for layer in range(1, 31)}
    counts[7] = 1  # tiny next to the largest count, still visible
    path = histogram(tmp_path / "h.png", counts, title="Exit layer", xlabel="exit layer", ylabel="steps")
    image = decode_png(path)
    found = bar_runs(image)
    non_zero = sorted(k for k, v in counts.items() if v)
    assert len(found) == len(non_zero)
    # bars sit at their bins: the gap between two bars is proportional to the bin distance
    centres = [(a + b) / 2 for a, b in found]
    slot = (centres[-1] - centres[0]) / (non_zero[-1] - non_zero[0])
    assert all(abs((c - centres[0]) - (k - non_zero[0]) * slot) < 1.5 for c, k in zip(centres, non_zero))
    heights = [is_colour(image, BAR)[:, round(c)].sum() for c in centres]
    assert heights[non_zero.index(7)] >= 1
    assert heights.index(max(heights)) == non_zero.index(max(counts, key=counts.get))


def test_histogram_accepts_a_list_of_counts(tmp_path):
    image = decode_png(histogram(tmp_path / "l.png", [3, 0, 5, 2], title="t", xlabel="bin", ylabel="n"))
    assert len(bar_runs(image)) == 3


def legend_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the legend's frame, drawn in the axis colour inside the plot area."""
    axis = is_colour(image, AXIS)
    frame_rows = [r for r in range(image.shape[0]) if 40 < axis[r].sum() < 300]
    top, bottom = frame_rows[0], frame_rows[-1]
    columns = np.flatnonzero(axis[top])
    return top, bottom, int(columns[columns > columns.min() + 5].min()), int(columns.max())


def test_line_chart_draws_each_series_in_its_own_colour(tmp_path):
    series = {"rising": [(0.1, 0.2), (0.5, 0.6), (0.9, 1.0)],
              "falling": [(0.1, 1.0), (0.3, float("nan")), (0.9, 0.1)],
              "single": [(0.5, 0.5)]}
    image = decode_png(line_chart(tmp_path / "l.png", series, title="Sweep", xlabel="threshold", ylabel="ratio",
                                  size=(500, 300))).copy()
    assert image.shape == (300, 500, 3)
    top, bottom, left, right = legend_box(image)
    image[top:bottom + 1, left:right + 1] = 255  # leave only the data
    for colour in PALETTE[:3]:
        assert is_colour(image, colour).sum() > 20  # the single point has a marker too
    ys, xs = np.nonzero(is_colour(image, PALETTE[0]))
    assert ys[xs.argmin()] > ys[xs.argmax()] + 100  # rising: left end far lower on screen than the right end
    ys, xs = np.nonzero(is_colour(image, PALETTE[1]))
    assert ys[xs.argmin()] + 100 < ys[xs.argmax()]
    # the NaN point is skipped: the falling series is one straight segment from (0.1, 1.0) to (0.9, 0.1)
    slope = (ys[xs.argmax()] - ys[xs.argmin()]) / (xs.max() - xs.min())
    middle = xs.min() + (xs.max() - xs.min()) // 2
    assert abs(ys[xs == middle].mean() - (ys[xs.argmin()] + slope * (middle - xs.min()))) < 3


def test_line_chart_legend_lists_every_series(tmp_path):
    image = decode_png(line_chart(tmp_path / "l.png", {"alpha": [(0, 0), (1, 1)], "beta": [(0, 1), (1, 0)]},
                                  title="t", xlabel="x", ylabel="y"))
    top, bottom, left, right = legend_box(image)
    assert bottom - top == 12 * 2 + 7
    inside = image[top + 1:bottom, left + 1:right]
    assert is_colour(inside, PALETTE[0]).any() and is_colour(inside, PALETTE[1]).any()
    text = inside.sum(axis=-1) < 200
    assert text[:12].sum() > 20 and text[12:].sum() > 20  # a name on each row
