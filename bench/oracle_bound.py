"""The best early exit could do with a given draft head: an oracle predictor
that fires exactly at the first layer where exiting gives the full model's
token, priced with measured per-stage costs. Bounds what better predictors
can buy before a better draft (or another model) is needed.

    python bench/oracle_bound.py --traces RUN/traces.npz --profile PROFILE.json

traces.npz comes from `specee train predictors` (per token and layer: is the
layer's argmax the final token and a candidate; is the best candidate the
final token); PROFILE.json from bench/exit_profile.py with --verify full
(it measures one lm_head pass and the per-layer cost).
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def first_exit(ok: np.ndarray) -> np.ndarray:
    """Per token: layers computed at the first possible exit (n_layer: none)."""
    ok = ok.copy()
    ok[:, -1] = True
    return ok.argmax(-1) + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", required=True)
    ap.add_argument("--profile", required=True, help="exit_profile.py --json output, verify full")
    ap.add_argument("--check-ms", type=float, default=0.03, help="cost of one checked layer (graph launch, "
                    "candidate logits, predictor); bench/exit_overhead.py measures about 0.03 ms")
    args = ap.parse_args()

    t = np.load(args.traces)
    p = json.loads(open(args.profile).read())
    layer, lm_head = p["estimated_ms_per_layer"], p["verify_ms_per_fire"]
    draft = p["specee_step_ms_by_stage"]["draft"]
    vanilla = p["vanilla_ms_per_token"]
    n_layer = t["label"].shape[1]
    print(f"measured: full-depth step {vanilla:.3f} ms, layer {layer:.3f} ms, lm_head {lm_head:.3f} ms, "
          f"draft {draft:.3f} ms, check {args.check_ms:.3f} ms; {len(t['label'])} traced tokens")
    for name, ok, lm_on_exit in (("verify full", t["label"] & t["in_cands"], True),
                                 ("verify candidates", t["best_cand_ok"], False)):
        e = first_exit(ok)
        exits = e < n_layer
        # the oracle checks only the layer it exits at: one check per exit
        step = (draft + e * layer + np.where(exits & ~np.bool_(lm_on_exit), 0.0, lm_head)
                + np.where(exits, args.check_ms, 0.0))
        print(f"  oracle, {name}: mean exit layer {e.mean():.2f}, exit ratio {exits.mean():.3f}, "
              f"{step.mean():.3f} ms/token -> {vanilla / step.mean():.3f}x full depth")


if __name__ == "__main__":
    main()
