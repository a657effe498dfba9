"""PNG plots of `specee eval` results: speedup per data set, histogram of
exit layers, and the speed-fidelity curve of a threshold sweep."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .evaluate import parse_mode
from .plot_png import bar_chart, histogram, line_chart


def early_exit_modes(results: dict) -> list[str]:
    """The early-exit modes of a run, in the order they ran."""
    first = next(iter(results["datasets"].values()), {})
    return [m for m in first if parse_mode(m)[0] == "specee"]


def _pooled(results: dict, mode: str, key: str) -> Optional[float]:
    """`key` averaged over the data sets, weighted by their item counts."""
    num = den = 0.0
    for modes in results["datasets"].values():
        s = modes.get(mode, {})
        if s.get(key) is not None:
            num += s[key] * s["n_items"]
            den += s["n_items"]
    return num / den if den else None


def write_plots(results: dict, stem: str | Path) -> list[Path]:
    """Writes STEM.speedup.png, STEM.exit_layers.png and, for a sweep over
    two or more thresholds, STEM.threshold.png; returns the paths written."""
    stem = Path(stem)

    def named(suffix: str) -> Path:
        return stem.parent / (stem.name + suffix)

    modes = early_exit_modes(results)
    if not modes:
        return []
    main = "specee" if "specee" in modes else modes[0]
    names = list(results["datasets"])
    written = []

    speedups = [results["datasets"][n][main].get("speedup", float("nan")) for n in names]
    written.append(bar_chart(named(".speedup.png"), names, speedups,
                             title=f"Decode speedup over vanilla ({main})", ylabel="speedup", reference=1.0))

    n_layer = len(next(iter(results["datasets"].values()))[main].get("exit_layer_histogram", []))
    counts = [0] * n_layer
    for n in names:
        for i, c in enumerate(results["datasets"][n][main].get("exit_layer_histogram", [])):
            counts[i] += c
    written.append(histogram(named(".exit_layers.png"), {i + 1: c for i, c in enumerate(counts)},
                             title=f"Exit layer per decode step ({main}, {n_layer} = no exit)",
                             xlabel="exit layer", ylabel="steps"))

    swept = sorted((parse_mode(m)[1], m) for m in modes if parse_mode(m)[1] is not None)
    if len(swept) >= 2:
        series = {}
        for label, key in (("teacher-forced agreement", "teacher_forced_agreement"), ("speedup", "speedup"),
                           ("exit ratio", "exit_ratio")):
            points = [(t, _pooled(results, m, key)) for t, m in swept]
            series[label] = [(t, v) for t, v in points if v is not None]
        written.append(line_chart(named(".threshold.png"), series,
                                  title="Speed and fidelity against the predictor threshold",
                                  xlabel="threshold", ylabel="ratio"))
    return written
