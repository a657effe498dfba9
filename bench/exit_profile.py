"""Where an early-exit decode step's time goes with trained heads, next to a
full-depth step, on MT-Bench first turns (greedy, decode only, alternated
prompt by prompt in one run).

    python bench/exit_profile.py --limit 10 [--heads FILE] [--threshold T] [--verify candidates]

Splits the early-exit step with libspecee's per-stage counters (struct
specee_perf): the draft head, the exit predictors, the full-vocabulary
verification at predictor fires, and the rest (the layers run, the final
lm_head when no exit happened, graph launches). It also prints the saving
the exits bought at the measured per-layer and lm_head costs, so the
figures add up to the measured ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from specee.decoding.early_exit import attach_heads
from specee.engine import Heads, Model
from specee.fetch import fetch_model
from specee.heads.shipped import default_heads

from compare_llama_cpp import prompt_set, tokenize_prompts


def greedy(ctx, prompt: list[int], n: int, specee: bool) -> tuple[float, int]:
    """Decode-only ms and steps of one greedy continuation."""
    ctx.truncate(0)
    ctx.prefill(prompt)
    tok = ctx.argmax()
    cands = ctx.draft_sync(tok) if specee else None
    t = time.perf_counter()
    for _ in range(n - 1):
        if specee:
            s = ctx.decode_with_candidates(tok, cands)
            tok, cands = s.token, s.next
        else:
            tok = ctx.decode(tok)
    return (time.perf_counter() - t) * 1e3, n - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--heads", help="head file with a draft head (default: the heads that ship for the model)")
    ap.add_argument("--threshold", type=float)
    ap.add_argument("--verify", choices=["full", "candidates"], help="default: what the head file says")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    model_path = fetch_model(args.model)
    prompts = [ids for _, ids in tokenize_prompts(model_path, prompt_set("mtbench", args.limit))]
    with Model(model_path) as m:
        heads_path = args.heads or default_heads(m.fingerprint)
        if heads_path is None:
            raise SystemExit("no heads ship for this model: give --heads")
        heads = Heads(m, heads_path)
        if not heads.has_draft:
            raise SystemExit("the head file has no draft head")
        vctx = m.context(n_ctx=1024, n_threads=args.threads)
        sctx = m.context(n_ctx=1024, n_threads=args.threads)
        attach_heads(sctx, heads, args.threshold, None if args.verify is None else args.verify == "full")
        verify = "full" if sctx.exit_params()["verify_full"] else "candidates"
        v_ms = s_ms = 0.0
        v_steps = s_steps = 0
        ratios = []
        sctx.reset_exit_stats()
        sctx.reset_perf()
        for i, p in enumerate(prompts):
            order = (False, True) if i % 2 == 0 else (True, False)
            got = {}
            for specee in order:
                ms, steps = greedy(sctx if specee else vctx, p, args.n_predict, specee)
                got[specee] = ms / steps
                if specee:
                    s_ms, s_steps = s_ms + ms, s_steps + steps
                else:
                    v_ms, v_steps = v_ms + ms, v_steps + steps
            ratios.append(got[False] / got[True])
        perf, stats = sctx.perf(), sctx.exit_stats()
        n_layer = m.n_layer
        vctx.close()
        sctx.close()
        heads.close()

    n = stats["n_steps"]
    step_v, step_s = v_ms / v_steps, s_ms / s_steps
    parts = {k: perf[f"t_{k}_ms"] / n for k in ("draft", "predictor", "verify")}
    parts["layers and the rest"] = perf["t_exit_step_ms"] / n - sum(parts.values())
    mean_exit = stats["sum_exit_layers"] / n
    # one verification pass is the cost of the lm_head; a full-depth step is
    # the layers plus one of those (only measured when fires were verified)
    verify_per_fire = perf["t_verify_ms"] / stats["n_fires"] if perf["t_verify_ms"] > 0 else None
    per_layer = (step_v - verify_per_fire) / n_layer if verify_per_fire else None
    out = {
        "heads": str(heads_path), "verify": verify, "threshold": args.threshold, "prompts": len(prompts),
        "n_predict": args.n_predict, "threads": args.threads,
        "vanilla_ms_per_token": step_v, "specee_ms_per_token": step_s,
        "specee_vs_vanilla_median_ratio": statistics.median(ratios),
        "specee_step_ms_by_stage": parts,
        "mean_exit_layer": mean_exit, "exit_ratio": stats["n_exits"] / n,
        "fires_per_step": stats["n_fires"] / n, "false_fires_per_step": stats["n_false_fires"] / n,
        "checks_per_step": stats["n_checks"] / n,
        "draft_top1": stats["n_draft_top1"] / n, "draft_topk": stats["n_draft_topk"] / n,
        "verify_ms_per_fire": verify_per_fire, "estimated_ms_per_layer": per_layer,
        "layers_saved_ms_per_step": (n_layer - mean_exit) * per_layer if per_layer else None,
    }
    print(f"{len(prompts)} MT-Bench prompts x {args.n_predict} tokens, {args.threads} threads, verify {verify}")
    print(f"vanilla {step_v:.3f} ms/token; early exit {step_s:.3f} ms/token; median ratio (vanilla time / "
          f"early-exit time) {out['specee_vs_vanilla_median_ratio']:.3f}")
    print("early-exit step by stage (ms/token): " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    print(f"mean exit layer {mean_exit:.2f} of {n_layer}, exit ratio {out['exit_ratio']:.3f}, checks/step "
          f"{out['checks_per_step']:.2f}, fires/step {out['fires_per_step']:.3f} "
          f"(false {out['false_fires_per_step']:.3f}), draft top-1 {out['draft_top1']:.3f} / "
          f"top-k {out['draft_topk']:.3f}")
    if per_layer:
        print(f"one verification pass {verify_per_fire:.3f} ms; about {per_layer:.3f} ms per layer, so the exits "
              f"saved {out['layers_saved_ms_per_step']:.3f} ms of layers per step")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
