"""What the trained exit predictors buy, priced without running the engine:
the early-exit policy replayed on the held-out part of the training traces
(the tokens the predictors never trained on) with measured per-stage costs.
Candidate verification only (a fire exits with the best candidate).

    python bench/exit_sim.py --run RUN --profile PROFILE.json [--draft-ms D]

RUN holds traces.npz and predictors.npz (`specee train predictors --verify
candidates`); PROFILE.json is bench/exit_profile.py --verify full output (the
per-layer and lm_head costs; the draft's cost too unless --draft-ms). Prints,
per threshold, the simulated speed over full depth, the agreement with full
depth (teacher-forced: the exit token against the full model's) and the exit
ratio, for the trained offline schedule, for a schedule chosen greedily for
speed at --min-agreement, and for the trained schedule with a perfect "the
final token is a candidate" gate on top of the predictors (what a better
draft-confidence feature could buy at most). The engine's online schedule
(layers around recent exits) is not modelled.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from specee.train.pipeline import load_predictors
from specee.train.predictors import PredictorConfig, Traces, heldout_split, layer_features


def predictor_probs(run: Path) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Held-out tokens: [n, n_layer - 1] predictor outputs, [n, n_layer]
    "the best candidate here is the final token", the trained schedule."""
    t = Traces.load(run / "traces.npz")
    preds, offline, _, verify_full = load_predictors(run / "predictors.npz")
    if verify_full:
        raise SystemExit(f"{run}: predictors trained for full verification; this prices candidate exits")
    held = heldout_split(len(t.label), PredictorConfig())[0].numpy()
    x = layer_features(t.cand_logits[held])
    probs = np.zeros((len(held), x.shape[1] - 1), np.float32)
    for layer, p in preds.items():
        probs[:, layer] = p(x[:, layer])
    return probs, t.exit_ok(False)[held], offline


class Policy:
    """Replays "exit at the first checked layer whose predictor fires"."""

    def __init__(self, probs: np.ndarray, ok: np.ndarray, layer_ms: float, lm_head_ms: float, check_ms: float,
                 draft_ms: float):
        self.probs, self.ok = probs, ok
        self.n_layer = ok.shape[1]
        self.layer_ms, self.lm_head_ms, self.check_ms, self.draft_ms = layer_ms, lm_head_ms, check_ms, draft_ms
        self.full_ms = self.n_layer * layer_ms + lm_head_ms

    def run(self, layers: list[int], threshold: float) -> dict:
        n = len(self.ok)
        ms = np.full(n, self.draft_ms + self.full_ms + len(layers) * self.check_ms)
        right, done = np.ones(n, bool), np.zeros(n, bool)
        for i, layer in enumerate(sorted(layers)):
            fire = ~done & (self.probs[:, layer] > threshold)
            ms[fire] = self.draft_ms + (layer + 1) * self.layer_ms + (i + 1) * self.check_ms
            right[fire] = self.ok[fire, layer]
            done |= fire
        return {"speedup": self.full_ms / ms.mean(), "agreement": right.mean(), "exit_ratio": done.mean(),
                "layers": sorted(layers)}

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--profile", type=Path, required=True, help="exit_profile.py --json output, verify full")
    ap.add_argument("--draft-ms", type=float, help="the draft's cost per step (default: the profile's)")
    ap.add_argument("--check-ms", type=float, default=0.03, help="one checked layer (bench/exit_overhead.py)")
    ap.add_argument("--thresholds", default="0.7,0.8,0.85,0.9,0.95")
    ap.add_argument("--min-agreement", type=float, default=0.97)
    args = ap.parse_args()

    prof = json.loads(args.profile.read_text())
    draft_ms = args.draft_ms if args.draft_ms is not None else prof["specee_step_ms_by_stage"]["draft"]
    probs, ok, offline = predictor_probs(args.run)
    sim = Policy(probs, ok, prof["estimated_ms_per_layer"], prof["verify_ms_per_fire"], args.check_ms, draft_ms)
    gated = Policy(np.where(ok[:, -1:], probs, 0.0), ok, sim.layer_ms, sim.lm_head_ms, args.check_ms, draft_ms)
    print(f"{len(ok)} held-out traced tokens; full depth {sim.full_ms:.3f} ms, draft {draft_ms:.3f} ms, "
          f"check {args.check_ms:.3f} ms; speedup over full depth / agreement / exit ratio")

    def show(r: dict) -> str:
        return f"{r['speedup']:.3f} / {r['agreement']:.4f} / {r['exit_ratio']:.3f}"

    for th in (float(x) for x in args.thresholds.split(",")):
        g = sim.greedy_schedule(th, args.min_agreement)
        print(f"  threshold {th:.2f}: trained schedule {offline} {show(sim.run(offline, th))}; "
              f"greedy {g['layers']} {show(g)}; perfect in-candidates gate {show(gated.run(offline, th))}")


if __name__ == "__main__":
    main()
