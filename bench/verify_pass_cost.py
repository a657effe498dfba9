"""What exact verification costs: a pass over n drafted tokens run as
verifications run it (specee_decode_tree: every row computed as a one-token
step would, so a verified chain's logits are plain decoding's to the bit)
against the same n tokens through the batched kernels (a prefill keeping
every row's logits), both relative to one plain decode step; alternated
round by round on one context.

    python bench/verify_pass_cost.py --model smollm2-135m --threads 2 --sizes 2,4,8 --rounds 15

With --kernels ggml,specee both kernel choices are measured in the same
run, one model each, alternated within every round (docs/kernels.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from specee.engine import Model
from specee.fetch import fetch_model

PROMPT = [1, 2, 3, 4, 5, 6, 7, 8] * 8  # 64 tokens of context


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", default="2,4,8")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--kernels", default="ggml", help="comma-separated: ggml, specee (Model(kernels=...))")
    args = p.parse_args()
    kernels = args.kernels.split(",")
    sizes = [int(x) for x in args.sizes.split(",")]
    feed = list(range(100, 100 + max(sizes)))
    runs = {"step": lambda c, n: c.decode(feed[0]),
            "tree": lambda c, n: (c.decode_tree(feed[:n]), c.tree_accept([])),
            "batched": lambda c, n: c.prefill(feed[:n], logits_all=True)}
    times = {(k, kind, n): [] for k in kernels for n in sizes for kind in runs}
    path = fetch_model(args.model, progress=False)
    models = {k: Model(path, kernels=k) for k in kernels}
    ctxs = {k: models[k].context(n_ctx=512, n_threads=args.threads) for k in kernels}
    try:
        for ctx in ctxs.values():
            ctx.prefill(PROMPT)
        base = len(PROMPT)
        for r in range(args.rounds + 2):  # two warm-up rounds build the graphs
            for n in sizes:
                order = [(k, kind) for k in kernels for kind in runs]
                for k, kind in (order if r % 2 else order[::-1]):
                    ctx = ctxs[k]
                    t0 = time.perf_counter()
                    runs[kind](ctx, n)
                    dt = time.perf_counter() - t0
                    ctx.truncate(base)
                    if r >= 2:
                        times[(k, kind, n)].append(dt)
    finally:
        for k in kernels:
            ctxs[k].close()
            models[k].close()
    med = {key: statistics.median(v) for key, v in times.items()}
    out = {"model": args.model, "threads": args.threads, "rounds": args.rounds, "results": []}
    for k in kernels:
        for n in sizes:
            step = med[(k, "step", n)]
            out["results"].append({"kernels": k, "n": n,
                                   "exact_tree_over_step": round(med[(k, "tree", n)] / step, 3),
                                   "batched_over_step": round(med[(k, "batched", n)] / step, 3),
                                   "step_ms": round(step * 1e3, 3)})
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
