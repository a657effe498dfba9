"""Live early exit against full depth on prompts of the traces' own kind.

    python bench/exit_on_trace_prompts.py --model qwen2.5-coder-0.5b --skip 880 --limit 10

`specee train schedule` prices schedules by replaying held-out traces:
greedy continuations of ShareGPT train-split conversations. This decodes
other conversations of that split (from --skip on: past the ones the heads
were trained and traced on) with full depth and with early exit, alternated
prompt by prompt in one process on one copy of the weights (so where the
weights landed in memory does not matter, see bench/memory_placement.py),
and reports the speed ratio and exit ratio to set beside the replay's,
with the teacher-forced agreement with full depth (the fidelity).
"""
from __future__ import annotations

import argparse
import statistics

from specee.decoding.early_exit import attach_heads, generate_specee
from specee.evaluation.run import teacher_forced
from specee.engine import Heads, Model
from specee.fetch import fetch_model
from specee.decoding.plain import generate
from specee.heads.shipped import default_heads
from specee.evaluation.datasets import load_sharegpt
from specee.train.corpus import conversation_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--heads", help="head file (default: the one shipped for the model)")
    ap.add_argument("--threshold", type=float)
    ap.add_argument("--skip", type=int, default=880, help="first ShareGPT train conversation to use")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    path = fetch_model(args.model)
    records = load_sharegpt("train", limit=args.skip + args.limit)[args.skip:]
    prompts = [p for p in conversation_prompts(path, [r.conversations for r in records]) if len(p) < 1024]
    with Model(path) as model:
        heads = Heads(model, args.heads or default_heads(model.fingerprint))
        ratios, exits, steps, agree, forced = [], 0, 0, 0, 0
        for i, prompt in enumerate(prompts):
            speed = {}
            for mode in (("full", "exit") if i % 2 == 0 else ("exit", "full")):
                with model.context(n_ctx=2048, n_threads=args.threads) as ctx:
                    if mode == "full":
                        speed[mode] = generate(ctx, prompt, args.n_predict).decode_tok_s
                    else:
                        attach_heads(ctx, heads, args.threshold)
                        g = generate_specee(ctx, prompt, args.n_predict, heads.n_candidates)
                        speed[mode] = g.decode_tok_s
                        exits += sum(e < model.n_layer for e in g.extra["exit_layers"])
                        steps += len(g.extra["exit_layers"])
                        a, n = teacher_forced(ctx, prompt, args.n_predict, heads.n_candidates)  # fidelity, untimed
                        agree, forced = agree + a, forced + n
            ratios.append(speed["exit"] / speed["full"])
            print(f"prompt {i}: {len(prompt)} tokens, full depth {speed['full']:.1f} tok/s, early exit "
                  f"{speed['exit']:.1f} tok/s, ratio {ratios[-1]:.3f}", flush=True)
        heads.close()
    print(f"{len(prompts)} ShareGPT prompts from conversation {args.skip}: early exit / full depth median "
          f"{statistics.median(ratios):.3f}, exit ratio {exits / max(steps, 1):.3f}, teacher-forced agreement with "
          f"full depth {agree / max(forced, 1):.4f}")


if __name__ == "__main__":
    main()
