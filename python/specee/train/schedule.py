"""Choosing the checked layers and the threshold by expected gain, with the
model's measured costs (docs/heads.md#schedule).

The early-exit policy is replayed on the held-out part of the training
traces (tokens the predictors never trained on): at each checked layer, in
order, the predictor fires or not; a fire exits with the best candidate
(candidate verification) and costs the layers run so far plus one check per
checked layer; a token nobody fires on runs the whole model. With the
per-layer, output-layer, check and draft costs measured on the engine, that
prices any schedule: the choice adds, one at a time, the layer that speeds
decoding up most while the agreement with full depth stays at or above a
floor. The engine's online schedule (layers around recent exits) is not
modelled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..ranges import AGREEMENT, MILLISECONDS, THRESHOLD
from .pipeline import load_predictors, set_schedule
from .predictors import PredictorConfig, Traces, heldout_by, heldout_split, layer_features


@dataclass(frozen=True)
class StepCosts:
    """Milliseconds, measured on the engine (bench/exit_profile.py)."""
    layer_ms: float    # one decoder layer
    lm_head_ms: float  # the full-vocabulary output layer
    check_ms: float    # one checked layer: features and predictor
    draft_ms: float    # the draft head's step

    @classmethod
    def from_profile(cls, profile: dict, check_ms: float = 0.03) -> "StepCosts":
        """From bench/exit_profile.py --json output (a --verify full run)."""
        try:
            return cls(float(profile["estimated_ms_per_layer"]), float(profile["verify_ms_per_fire"]), check_ms,
                       float(profile["specee_step_ms_by_stage"]["draft"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not an exit profile (bench/exit_profile.py --json): {e}") from None


class ExitReplay:
    """"Exit at the first checked layer whose predictor fires", replayed on
    [n, n_layer - 1] predictor outputs `probs` and [n, n_layer] `ok` (the
    best candidate at that layer is the full model's token)."""

    def __init__(self, probs: np.ndarray, ok: np.ndarray, costs: StepCosts):
        if probs.ndim != 2 or ok.ndim != 2 or probs.shape[0] != ok.shape[0] or probs.shape[1] != ok.shape[1] - 1:
            raise ValueError(f"probs {probs.shape} and ok {ok.shape} do not match ([n, L - 1] and [n, L])")
        self.probs, self.ok, self.costs = probs, ok, costs
        self.n_layer = ok.shape[1]
        self.full_ms = self.n_layer * costs.layer_ms + costs.lm_head_ms

    def run(self, layers: Sequence[int], threshold: float) -> dict:
        """Speed over full depth, agreement with it and exit ratio of a schedule."""
        c = self.costs
        layers = sorted(layers)
        n = len(self.ok)
        ms = np.full(n, c.draft_ms + self.full_ms + len(layers) * c.check_ms)
        right, done = np.ones(n, bool), np.zeros(n, bool)
        for i, layer in enumerate(layers):
            fire = ~done & (self.probs[:, layer] > threshold)
            ms[fire] = c.draft_ms + (layer + 1) * c.layer_ms + (i + 1) * c.check_ms
            right[fire] = self.ok[fire, layer]
            done |= fire
        return {"speedup": float(self.full_ms / ms.mean()), "agreement": float(right.mean()),
                "exit_ratio": float(done.mean()), "layers": layers, "threshold": threshold}

    def greedy_schedule(self, threshold: float, min_agreement: float) -> dict:
        """Adds the layer that speeds up most while agreement holds, until none does."""
        best = self.run([], threshold)
        while True:
            trials = [self.run(best["layers"] + [layer], threshold) for layer in range(self.n_layer - 1)
                      if layer not in best["layers"]]
            trials = [r for r in trials if r["agreement"] >= min_agreement]
            if not trials or max(r["speedup"] for r in trials) <= best["speedup"] + 1e-4:
                return best
            best = max(trials, key=lambda r: r["speedup"])


def heldout_replay(run: Path, costs: StepCosts) -> tuple[ExitReplay, list[int], float, str]:
    """The replay of RUN's held-out traced tokens (RUN/traces.npz,
    RUN/predictors.npz trained with --verify candidates: the split they
    were trained with), the trained schedule and threshold, and what was
    held out (heldout_by)."""
    t = Traces.load(run / "traces.npz")
    preds, offline, threshold, verify_full = load_predictors(run / "predictors.npz")
    if verify_full:
        raise ValueError(f"{run}: predictors trained for full verification; the replay prices candidate exits")
    held = heldout_split(len(t.label), PredictorConfig(), t.prompt)[0].numpy()
    x = layer_features(t.cand_logits[held])
    probs = np.zeros((len(held), x.shape[1] - 1), np.float32)
    for layer, p in preds.items():
        probs[:, layer] = p(x[:, layer])
    replay = ExitReplay(probs, t.exit_ok(False)[held], costs)
    return replay, offline, round(threshold, 6), heldout_by(t.prompt)  # threshold: stored as float32


def choose_schedule(replay: ExitReplay, thresholds: Sequence[float], min_agreement: float) -> tuple[dict, list]:
    """The fastest greedy schedule over `thresholds` whose agreement is at
    least `min_agreement` (None when no schedule checks a layer), and every
    threshold's result."""
    sweep = [replay.greedy_schedule(th, min_agreement) for th in thresholds]
    useful = [r for r in sweep if r["layers"]]
    return (max(useful, key=lambda r: r["speedup"]) if useful else None), sweep


def reschedule(run: Path, profile: Path, thresholds: Sequence[float], min_agreement: float,
               check_ms: float = 0.03) -> dict:
    """Replaces RUN/predictors.npz's schedule and threshold by the chosen
    ones and records the choice in RUN/schedule.json; `specee pack` then
    writes them into the head file."""
    AGREEMENT.check("min_agreement", min_agreement)
    MILLISECONDS.check("check_ms", check_ms)
    if not thresholds:
        raise ValueError("give at least one threshold")
    for t in thresholds:
        THRESHOLD.check("threshold", t)
    costs = StepCosts.from_profile(json.loads(Path(profile).read_text()), check_ms)
    replay, trained_layers, trained_threshold, held_by = heldout_replay(run, costs)
    chosen, sweep = choose_schedule(replay, thresholds, min_agreement)
    if chosen is None:
        raise ValueError(f"no schedule keeps agreement >= {min_agreement} and is faster than full depth: "
                         "keep the trained one")
    record = {"costs_ms": costs.__dict__, "min_agreement": min_agreement, "n_heldout_tokens": len(replay.ok),
              "heldout_by": held_by,
              "trained": replay.run(trained_layers, trained_threshold), "chosen": chosen, "sweep": sweep}
    set_schedule(run / "predictors.npz", chosen["layers"], chosen["threshold"])
    (run / "schedule.json").write_text(json.dumps(record, indent=1))
    return record
