"""Where a one-token decode step's time goes: ggml's graph compute (the
model's arithmetic and the threads' barriers), libspecee around it (graph
building, inputs, outputs) and the Python loop (the rest of the wall time),
per kernel choice, alternated round by round.

    python bench/step_profile.py --model smollm2-135m --kernels ggml,specee --rounds 5 -n 128
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from machine import cpu_model
from specee.engine import Model
from specee.fetch import fetch_model


def profile(model: Model, threads: int, n: int) -> dict:
    with model.context(n_ctx=n + 16, n_threads=threads) as ctx:
        ctx.prefill([model.bos if model.bos >= 0 else 0])
        token = ctx.argmax()
        ctx.reset_perf()
        t0 = time.perf_counter()
        for _ in range(n):
            token = ctx.decode(token)
        wall = (time.perf_counter() - t0) * 1e3 / n
        perf = ctx.perf()
    compute, host = perf["t_compute_ms"] / n, perf["t_host_ms"] / n
    return {"step_ms": wall, "compute_ms": compute, "libspecee_ms": host, "python_ms": wall - compute - host,
            "graph_builds_per_step": perf["n_graph_builds"] / n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kernels", default="ggml,specee")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--json")
    args = ap.parse_args()
    path = fetch_model(args.model, progress=False)
    kernels = args.kernels.split(",")
    models = {k: Model(path, kernels=k) for k in kernels}
    runs = {k: [] for k in kernels}
    try:
        for k in kernels:
            profile(models[k], args.threads, 16)  # warm-up
        for r in range(args.rounds):
            for k in (kernels if r % 2 == 0 else kernels[::-1]):
                runs[k].append(profile(models[k], args.threads, args.n))
    finally:
        for m in models.values():
            m.close()
    out = {"model": args.model, "cpu": cpu_model(), "threads": args.threads, "n": args.n, "rounds": args.rounds,
           "kernels": {k: {f: round(statistics.median(r[f] for r in runs[k]), 3) for f in runs[k][0]} for k in kernels}}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
