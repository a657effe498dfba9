"""PNG plots of `specee eval` results, drawn with matplotlib (the optional
`eval` extra): speedup per data set, histogram of exit layers, and the
speed-fidelity curve of a threshold sweep.

matplotlib is imported inside the plotting functions only, so inference and
evaluation without plots never load it; the Agg canvas draws straight to PNG
files without a display or pyplot's global state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .run import parse_mode

INSTALL_HINT = 'pip install ".[eval]"'

# one colour per series, readable for common colour-vision deficiencies (Okabe-Ito)
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"]
NO_EXIT_COLOR = "#999999"
FIGSIZE = (8, 5)  # inches; at DPI this is an 800 x 500 pixel image
DPI = 100


class PlotsUnavailable(ImportError):
    """matplotlib is not installed; the message says how to install it."""


def plots_available() -> bool:
    """True when matplotlib can be imported (checked before a long evaluation)."""
    try:
        _canvas_classes()
    except PlotsUnavailable:
        return False
    return True


def _canvas_classes():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable(f"the PNG plots need matplotlib: {INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg


def early_exit_modes(results: dict) -> list[str]:
    """The early-exit modes of a run, in the order they ran."""
    first = next(iter(results["datasets"].values()), {})
    return [m for m in first if parse_mode(m)[0].startswith("specee")]


def _pooled(results: dict, mode: str, key: str) -> Optional[float]:
    """`key` averaged over the data sets, weighted by their item counts."""
    num = den = 0.0
    for modes in results["datasets"].values():
        s = modes.get(mode, {})
        if s.get(key) is not None:
            num += s[key] * s["n_items"]
            den += s["n_items"]
    return num / den if den else None


def _new_figure():
    """A figure on the Agg canvas, and its single axes."""
    Figure, FigureCanvasAgg = _canvas_classes()
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(axis="y", color="#dddddd")
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def speedup_chart(path: Path, datasets: list[str], speedups: dict[str, list[float]]) -> Path:
    """Bars of speedup over vanilla per data set, one bar per early-exit mode,
    each labelled with its value; a dashed line marks vanilla's 1.0."""
    fig, ax = _new_figure()
    width = 0.8 / len(speedups)
    for j, (mode, values) in enumerate(speedups.items()):
        xs = [i + (j - (len(speedups) - 1) / 2) * width for i in range(len(datasets))]
        bars = ax.bar(xs, values, width * 0.9, label=mode, color=COLORS[j % len(COLORS)])
        # a white box keeps each value readable where it crosses the 1.0 line
        ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=9,
                     bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"})
    ax.axhline(1.0, color="#cc0000", linestyle="--", linewidth=1.2, label="vanilla (1.00)")
    ax.set_xticks(range(len(datasets)), datasets)
    top = max([v for vs in speedups.values() for v in vs if v == v] + [1.0])
    ax.set_ylim(0, top * 1.3)  # room above the bars for the legend
    ax.set_ylabel("decode speedup over vanilla (x)")
    ax.set_title("Decode speedup over vanilla, same run")
    ax.legend(loc="upper center", ncols=min(len(speedups) + 1, 5), fontsize=9, frameon=False)
    fig.savefig(path)
    return path


def exit_layer_chart(path: Path, counts: list[int], mode: str) -> Path:
    """Decode steps per exit layer 1..n_layer; the last bar (steps that ran
    every layer) is grey and labelled "no exit"."""
    fig, ax = _new_figure()
    n_layer = len(counts)
    layers = list(range(1, n_layer + 1))
    colors = [COLORS[0]] * (n_layer - 1) + [NO_EXIT_COLOR]
    ax.bar(layers, counts, 0.8, color=colors)
    total = sum(counts) or 1
    exited = sum(counts[:-1]) / total
    step = -(-n_layer // 16)  # at most 16 tick labels
    ax.set_xticks(sorted(set(range(step, n_layer + 1, step)) | {n_layer}))
    ax.set_xlim(0.3, n_layer + 0.7)
    ax.annotate(f"no exit\n{counts[-1] / total:.0%}", (n_layer, counts[-1]), xytext=(0, 4),
                textcoords="offset points", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(counts + [1]) * 1.18)
    ax.set_xlabel(f"exit layer (of {n_layer})")
    ax.set_ylabel("decode steps")
    ax.set_title(f"Exit layer per decode step ({mode}): {exited:.1%} of {sum(counts):,} steps exit early")
    fig.savefig(path)
    return path


def threshold_chart(path: Path, series: dict[str, list[tuple[float, float]]]) -> Path:
    """Lines of each measure against the predictor threshold, with markers at
    the measured thresholds."""
    fig, ax = _new_figure()
    ax.grid(axis="x", color="#eeeeee")
    for j, (label, points) in enumerate(series.items()):
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=label, color=COLORS[j % len(COLORS)], linewidth=2)
    ax.axhline(1.0, color="#888888", linestyle=":", linewidth=1)
    top = max([y for pts in series.values() for _, y in pts] + [1.0])
    ax.set_ylim(0, top * 1.1)
    ax.set_xlabel("predictor threshold")
    ax.set_ylabel("ratio (speedup: x over vanilla)")
    ax.set_title("Speed and fidelity against the predictor threshold")
    ax.legend(loc="lower left", fontsize=9)
    fig.savefig(path)
    return path


def write_plots(results: dict, stem: str | Path) -> list[Path]:
    """Writes STEM.speedup.png, STEM.exit_layers.png and, for a sweep over
    two or more thresholds, STEM.threshold.png; returns the paths written.
    Raises PlotsUnavailable when matplotlib is not installed."""
    stem = Path(stem)

    def named(suffix: str) -> Path:
        return stem.parent / (stem.name + suffix)

    modes = early_exit_modes(results)
    if not modes:
        return []
    main = "specee" if "specee" in modes else modes[0]
    names = list(results["datasets"])
    written = []

    speedups = {m: [results["datasets"][n][m].get("speedup", float("nan")) for n in names] for m in modes}
    written.append(speedup_chart(named(".speedup.png"), names, speedups))

    n_layer = len(next(iter(results["datasets"].values()))[main].get("exit_layer_histogram", []))
    if n_layer:
        counts = [0] * n_layer
        for n in names:
            for i, c in enumerate(results["datasets"][n][main].get("exit_layer_histogram", [])):
                counts[i] += c
        written.append(exit_layer_chart(named(".exit_layers.png"), counts, main))

    swept = sorted((parse_mode(m)[1], m) for m in modes if parse_mode(m)[1] is not None)
    if len(swept) >= 2:
        series = {}
        for label, key in (("teacher-forced agreement", "teacher_forced_agreement"), ("speedup", "speedup"),
                           ("exit ratio", "exit_ratio")):
            points = [(t, _pooled(results, m, key)) for t, m in swept]
            series[label] = [(t, v) for t, v in points if v is not None]
        written.append(threshold_chart(named(".threshold.png"), series))
    return written
