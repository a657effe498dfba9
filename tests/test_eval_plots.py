"""The PNG plots of `specee eval` results (matplotlib, the optional `eval`
extra): files written, decodable PNGs of the promised size, and a clear error
naming the extra when matplotlib is missing."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from specee.evaluation import plots as evaluate_plots
from specee.evaluation.plots import INSTALL_HINT, PlotsUnavailable, write_plots

WIDTH, HEIGHT = (round(inches * evaluate_plots.DPI) for inches in evaluate_plots.FIGSIZE)


def results(modes: list[str], n_layer: int = 6) -> dict:
    """A results dict shaped like evaluate.evaluate's, for two data sets."""
    def summary(mode: str, i: int) -> dict:
        if mode == "vanilla":
            return {"n_items": 3, "decode_tok_s": 100.0}
        hist = [0] * n_layer
        hist[n_layer - 2], hist[n_layer - 1] = 4 + i, 20
        return {"n_items": 3, "decode_tok_s": 110.0, "speedup": 1.1 - 0.1 * i, "exit_ratio": 0.3 - 0.05 * i,
                "teacher_forced_agreement": 0.9 + 0.02 * i, "exit_layer_histogram": hist}
    return {"datasets": {name: {m: summary(m, i) for i, m in enumerate(modes)} for name in ("mtbench", "csqa")}}


def read_png(path) -> np.ndarray:
    """Decodes the file as PNG (with matplotlib's reader) into an RGB(A) array."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path, format="png")


def test_sweep_writes_three_pngs_of_the_promised_size(tmp_path):
    pytest.importorskip("matplotlib")
    paths = write_plots(results(["vanilla", "specee@0.4", "specee@0.6", "specee@0.8"]), tmp_path / "r")
    assert [p.name for p in paths] == ["r.speedup.png", "r.exit_layers.png", "r.threshold.png"]
    for p in paths:
        image = read_png(p)
        assert image.shape[:2] == (HEIGHT, WIDTH)
        assert image[..., :3].std() > 0.05, f"{p.name} is blank"


def test_no_sweep_has_no_threshold_plot(tmp_path):
    pytest.importorskip("matplotlib")
    paths = write_plots(results(["vanilla", "specee"]), tmp_path / "r")
    assert [p.name for p in paths] == ["r.speedup.png", "r.exit_layers.png"]


def test_exit_layer_plot_marks_the_no_exit_bar(tmp_path):
    """The last bar (steps that ran every layer) is drawn in its own grey."""
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgb

    path = evaluate_plots.exit_layer_chart(tmp_path / "h.png", [0, 0, 3, 5, 2, 20], "specee")
    rgb = read_png(path)[..., :3]
    for colour in (evaluate_plots.NO_EXIT_COLOR, evaluate_plots.COLORS[0]):
        assert np.all(np.abs(rgb - np.array(to_rgb(colour))) < 0.01, axis=-1).sum() > 500, colour


def test_vanilla_only_writes_nothing(tmp_path):
    assert write_plots(results(["vanilla"]), tmp_path / "r") == []
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_names_the_extra(tmp_path, hide_matplotlib):
    assert not evaluate_plots.plots_available()
    with pytest.raises(PlotsUnavailable, match=INSTALL_HINT.replace("[", r"\[").replace(".", r"\.")):
        write_plots(results(["vanilla", "specee"]), tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


def test_inference_modules_do_not_import_matplotlib():
    """Importing the engine, generation and evaluation loads no plotting library."""
    import subprocess

    code = ("import sys, specee.cli, specee.evaluation.run, specee.evaluation.plots, specee.decoding.early_exit; "
            "print(any(m.startswith('matplotlib') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
