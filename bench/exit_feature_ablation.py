"""Would richer exit features pay? Predictors retrained on the same traces
with extra features derived from the candidates' logits at every layer,
priced by the exit replay (train/schedule.py) on the held-out tokens.

    python bench/exit_feature_ablation.py --run RUN --profile PROFILE.json [--json OUT]

RUN holds traces.npz (`specee train predictors --verify candidates`);
PROFILE.json is bench/exit_profile.py --verify full output. For each feature
set: the fastest greedy schedule (over --thresholds) whose replayed agreement
with full depth is at least each --min-agreement, as in `specee train
schedule`. The engine computes only the shipped set (docs/heads.md); the
others exist here to decide whether one is worth adding to it.

The extra features:
- stable: how many layers in a row the best candidate has stayed the same
  (divided by the layer count), a proxy for "the hidden state has settled";
- dp4: the candidates' probability change over the last 4 layers (the
  shipped set has the change over 1);
- margin, entropy: the gap between the two likeliest candidates and the
  entropy over the candidates;
and, where the traces hold them (collected since the trace signals exist):
- moved: how much this layer and the one before moved the residual stream
  (|x_l - x_(l-1)| / |x_l|), and the mean over the last 4 layers;
- draft: the draft head's own probabilities of the candidates;
and where the traces keep hidden states (`specee train predictors
--trace-hidden`):
- hidden: the final-normed hidden state itself (n_embd values), what a
  predictor that reads the state rather than the candidates would see;
- hidden_pc16, hidden_pc64: the state on its 16 or 64 principal directions
  (per layer, fitted on the training tokens): the same at a cost the engine
  could pay at every check.

`--label settled` trains on "the best candidate is the full model's token
at this layer and at every later one" instead of "at this layer" (the
replay still scores an exit as right when the token is right there).

The last row, "perfect", fires exactly where the best candidate is the full
model's token: what any feature set could reach with these candidates and
these costs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from specee.train.predictors import PredictorConfig, Traces, heldout_split, layer_features, train_one
from specee.train.schedule import ExitReplay, StepCosts


def candidate_probs(cand_logits: np.ndarray) -> np.ndarray:
    e = np.exp(cand_logits - cand_logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def layers_best_held(cand_logits: np.ndarray) -> np.ndarray:
    """[n, L] layers in a row (before this one) with the same best candidate."""
    best = cand_logits.argmax(-1)
    held = np.zeros(best.shape, np.float32)
    for layer in range(1, best.shape[1]):
        held[:, layer] = np.where(best[:, layer] == best[:, layer - 1], held[:, layer - 1] + 1, 0)
    return held


def change_over(p: np.ndarray, layers: int) -> np.ndarray:
    """p at each layer minus p `layers` layers earlier (minus nothing in the first `layers` layers)."""
    earlier = np.zeros_like(p)
    earlier[:, layers:] = p[:, :-layers]
    return p - earlier


def moved_features(layer_change: np.ndarray) -> np.ndarray:
    """[n, L] per-layer moves -> [n, L, 3]: this layer's, the one before's,
    the mean over the last 4."""
    before = np.zeros_like(layer_change)
    before[:, 1:] = layer_change[:, :-1]
    csum = np.cumsum(layer_change, 1)
    last4 = csum - np.concatenate([np.zeros_like(csum[:, :4]), csum[:, :-4]], 1)
    counts = np.minimum(np.arange(1, layer_change.shape[1] + 1), 4)
    return np.stack([layer_change, before, last4 / counts], -1)


def principal_components(hidden: np.ndarray, train: np.ndarray, rank: int) -> np.ndarray:
    """[n, L, rank]: each layer's hidden states on their `rank` main
    directions, fitted on the training tokens only and scaled to unit
    variance there; what a cheap projection in the engine would compute."""
    out = np.empty(hidden.shape[:2] + (rank,), np.float32)
    for layer in range(hidden.shape[1]):
        h = hidden[:, layer].astype(np.float32)
        mean = h[train].mean(0)
        _, sv, vt = np.linalg.svd(h[train] - mean, full_matrices=False)
        out[:, layer] = (h - mean) @ vt[:rank].T / (sv[:rank] / np.sqrt(len(train)) + 1e-6)
    return out


def feature_sets(traces: Traces, train: np.ndarray) -> dict[str, np.ndarray]:
    """Name -> [n, L, f] predictor inputs; "shipped" is the engine's set.
    `train`: the tokens the predictors train on (projections are fitted there)."""
    cand_logits = traces.cand_logits.astype(np.float32)
    shipped = layer_features(cand_logits)
    n_layer = cand_logits.shape[1]
    p = candidate_probs(cand_logits)
    stable = layers_best_held(cand_logits)[..., None] / n_layer
    top = np.sort(p, -1)[..., ::-1]
    margin = (top[..., 0] - top[..., 1])[..., None]
    entropy = -(p * np.log(p + 1e-9)).sum(-1, keepdims=True)
    dp4 = change_over(p, 4)
    sets = {
        "shipped": shipped,
        "shipped+stable": np.concatenate([shipped, stable], -1),
        "shipped+stable+dp4": np.concatenate([shipped, stable, dp4], -1),
        "shipped+stable+dp4+margin+entropy": np.concatenate([shipped, stable, dp4, margin, entropy], -1),
    }
    extra = {}
    if traces.layer_change is not None:
        extra["moved"] = moved_features(traces.layer_change)
    if traces.draft_probs is not None:
        extra["draft"] = np.broadcast_to(traces.draft_probs[:, None, :], cand_logits.shape)
    for name, x in extra.items():
        sets[f"shipped+{name}"] = np.concatenate([shipped, x], -1)
    if len(extra) == 2:
        sets["shipped+moved+draft"] = np.concatenate([shipped, extra["moved"], extra["draft"]], -1)
        sets["shipped+moved+draft+stable"] = np.concatenate([sets["shipped+moved+draft"], stable], -1)
    if traces.hidden is not None:
        sets["shipped+hidden"] = np.concatenate([shipped, traces.hidden.astype(np.float32)], -1)
        components = principal_components(traces.hidden, train, 64)  # the first 16 of them are the rank-16 set
        for rank in (16, 64):
            sets[f"shipped+hidden_pc{rank}"] = np.concatenate([shipped, components[..., :rank]], -1)
    return sets


def settled(ok: np.ndarray) -> np.ndarray:
    """[n, L]: ok at this layer and at every later one."""
    return np.flip(np.logical_and.accumulate(np.flip(ok, 1), 1), 1)


def split(t: Traces, cfg: PredictorConfig, by: str, tokens_per_prompt: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, training) token indices. "token": single tokens at random
    (a held-out token's neighbours from the same continuation are then
    trained on); "prompt": whole continuations, as `specee train` holds out
    (heldout_split), by the traces' prompt indices or, in traces from before
    those, by counting tokens_per_prompt consecutive tokens a prompt."""
    n = len(t.label)
    if by == "token":
        return tuple(i.numpy() for i in heldout_split(n, cfg))
    prompt = t.prompt
    if prompt is None:
        if n % tokens_per_prompt:
            raise SystemExit(f"{n} traced tokens are not whole prompts of {tokens_per_prompt}")
        prompt = np.arange(n) // tokens_per_prompt
    return tuple(np.sort(i.numpy()) for i in heldout_split(n, cfg, prompt))


def replay_of(x: np.ndarray, ok: np.ndarray, label: np.ndarray, held: np.ndarray, train: np.ndarray,
              costs: StepCosts, cfg: PredictorConfig) -> ExitReplay:
    """Per-layer predictors trained on x against `label` (all but the
    held-out tokens), their outputs on the held-out tokens, as a replay."""
    n_layer = ok.shape[1]
    probs = np.zeros((len(held), n_layer - 1), np.float32)
    inner = dataclasses.replace(cfg, heldout=0.05)  # train_one's own held-out part only feeds its metrics
    for layer in range(n_layer - 1):
        xl = np.ascontiguousarray(x[:, layer], np.float32)
        predictor, _ = train_one(xl[train], label[train, layer], inner)
        probs[:, layer] = predictor(xl[held])
    return ExitReplay(probs, ok[held], costs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--profile", type=Path, required=True, help="exit_profile.py --json output, verify full")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--thresholds", default="0.5,0.6,0.7,0.8,0.9,0.95")
    ap.add_argument("--min-agreement", default="0.98,0.985,0.99")
    ap.add_argument("--only", help="comma-separated feature sets to run (default: all)")
    ap.add_argument("--label", choices=["exit", "settled"], default="exit", help="what the predictors learn")
    ap.add_argument("--split", choices=["token", "prompt"], default="token",
                    help="held-out tokens: single tokens at random or whole prompts (as `specee train`)")
    ap.add_argument("--tokens-per-prompt", type=int, default=128, help="the traces' --trace-tokens (--split prompt)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    traces = Traces.load(args.run / "traces.npz")
    costs = StepCosts.from_profile(json.loads(args.profile.read_text()))
    cfg = PredictorConfig(epochs=args.epochs, verify_full=False)
    ok = traces.exit_ok(False)
    held, train = split(traces, cfg, args.split, args.tokens_per_prompt)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    floors = [float(a) for a in args.min_agreement.split(",")]
    print(f"{args.run}: {len(held)} held-out of {len(ok)} traced tokens; speedup over full depth / agreement / "
          "exit ratio of the fastest greedy schedule")
    results = {}
    for name, x in feature_sets(traces, train).items():
        if args.only and name not in args.only.split(","):
            continue
        t0 = time.time()
        replay = replay_of(x, ok, settled(ok) if args.label == "settled" else ok, held, train, costs, cfg)
        results[name] = {"n_features": x.shape[-1], "by_min_agreement": {}}
        for floor in floors:
            best = max((replay.greedy_schedule(th, floor) for th in thresholds), key=lambda r: r["speedup"])
            results[name]["by_min_agreement"][str(floor)] = best
            print(f"  {name:36s} >= {floor}: {best['speedup']:.3f} / {best['agreement']:.4f} / "
                  f"{best['exit_ratio']:.3f} (threshold {best['threshold']}, {len(best['layers'])} layers)")
        print(f"  ({time.time() - t0:.0f} s)", flush=True)
    perfect = ExitReplay(ok[held, :-1].astype(np.float32), ok[held], costs)
    results["perfect"] = perfect.greedy_schedule(0.5, 1.0)
    print(f"  {'perfect':36s}: {results['perfect']['speedup']:.3f} / {results['perfect']['agreement']:.4f} / "
          f"{results['perfect']['exit_ratio']:.3f} ({len(results['perfect']['layers'])} layers)")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "label": args.label, "split": args.split,
                                         "epochs": args.epochs,
                                         "n_heldout": len(held),
                                         "costs_ms": costs.__dict__, "results": results}, indent=1))


if __name__ == "__main__":
    main()
