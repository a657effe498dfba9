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
speed at --min-agreement (train/schedule.py, what `specee train schedule`
writes into the heads), and for the trained schedule with a perfect "the
final token is a candidate" gate on top of the predictors (what a better
draft-confidence feature could buy at most). The engine's online schedule
(layers around recent exits) is not modelled.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from specee.train.schedule import ExitReplay, StepCosts, heldout_replay


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
    costs = StepCosts.from_profile(prof, args.check_ms)
    if args.draft_ms is not None:
        costs = StepCosts(costs.layer_ms, costs.lm_head_ms, costs.check_ms, args.draft_ms)
    sim, offline, _, _ = heldout_replay(args.run, costs)
    gated = ExitReplay(np.where(sim.ok[:, -1:], sim.probs, 0.0), sim.ok, costs)
    print(f"{len(sim.ok)} held-out traced tokens; full depth {sim.full_ms:.3f} ms, draft {costs.draft_ms:.3f} ms, "
          f"check {costs.check_ms:.3f} ms; speedup over full depth / agreement / exit ratio")

    def show(r: dict) -> str:
        return f"{r['speedup']:.3f} / {r['agreement']:.4f} / {r['exit_ratio']:.3f}"

    for th in (float(x) for x in args.thresholds.split(",")):
        g = sim.greedy_schedule(th, args.min_agreement)
        print(f"  threshold {th:.2f}: trained schedule {offline} {show(sim.run(offline, th))}; "
              f"greedy {g['layers']} {show(g)}; perfect in-candidates gate {show(gated.run(offline, th))}")


if __name__ == "__main__":
    main()
