"""What continuous batching buys: one decode step for each of n contexts in
one specee_decode_batch pass against n single-token decodes, alternated
round by round on the same model and threads (the contexts share one
thread pool, as the server's slots do).

    python bench/batch_decode_cost.py --model smollm2-135m --threads 2 --sizes 1,2,4,8 --rounds 20

Reports per n the median time of one batched pass and of n single steps,
and their ratio (tokens per second gained by batching).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from specee.engine import Model, decode_batch
from specee.fetch import fetch_model

PROMPT = [1, 2, 3, 4, 5, 6, 7, 8] * 8  # 64 tokens of context per sequence


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", default="1,2,4,8")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    out = {"model": args.model, "threads": args.threads, "rounds": args.rounds, "results": []}
    with Model(fetch_model(args.model, progress=False)) as m:
        for n in sizes:
            ctxs = [m.context(n_ctx=512, n_threads=args.threads) for _ in range(n)]
            for c in ctxs[1:]:
                c.share_threads(ctxs[0])  # as the server does: one pool, none spinning idle
            for c in ctxs:
                c.prefill(PROMPT)
            tokens = [c.argmax() for c in ctxs]
            batched, single = [], []
            for r in range(args.rounds + 2):  # two warm-up rounds
                for which in (("batch", "single") if r % 2 else ("single", "batch")):
                    t0 = time.perf_counter()
                    if which == "batch":
                        tokens = decode_batch(ctxs, tokens)
                    else:
                        tokens = [c.decode(t) for c, t in zip(ctxs, tokens)]
                    dt = time.perf_counter() - t0
                    if r >= 2:
                        (batched if which == "batch" else single).append(dt)
                if ctxs[0].n_past > 400:
                    for c in ctxs:
                        c.truncate(len(PROMPT))
            b, s = statistics.median(batched), statistics.median(single)
            out["results"].append({"n": n, "batched_ms": round(b * 1e3, 3), "single_steps_ms": round(s * 1e3, 3),
                                   "speedup": round(s / b, 3)})
            for c in ctxs:
                c.close()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
