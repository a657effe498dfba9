"""What a pass over n tokens costs in specee (an exact verification pass:
specee_decode_tree, every row's logits, each row computed as a one-token
step) against llama.cpp's `llama-bench -p n` (a prompt of n tokens, logits
of the last one only), same GGUF, same threads, alternated round by round.

    python bench/pass_cost_vs_llama_bench.py --llama-bench PATH/llama-bench --model qwen2.5-coder-1.5b \\
        --kernels specee --sizes 1,2,4,8,16 --rounds 3 --llama-repack 0

Reported per n: the median time of each side's pass, their ratio, and each
side's pass in its own one-token steps (n = 1 measured the same way).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model
from specee.engine import Model
from specee.fetch import fetch_model

PROMPT = [1, 2, 3, 4, 5, 6, 7, 8] * 8  # 64 tokens of context before each pass


def llama_pass_ms(binary: str, model: Path, threads: int, n: int, repack: int) -> float:
    out = subprocess.run([binary, "-m", str(model), "-t", str(threads), "-p", str(n), "-n", "0", "-r", "3",
                          "-fa", "0", "--repack", str(repack), "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    (record,) = [r for r in json.loads(out) if r.get("n_prompt") == n]
    return 1e3 * n / float(record["avg_ts"])


def ik_pass_ms(binary: str, model: Path, threads: int, n: int) -> float:
    """ik_llama.cpp's llama-bench -p n, run-time repacking on (-rtr 1), flash attention off."""
    out = subprocess.run([binary, "-m", str(model), "-t", str(threads), "-p", str(n), "-n", "0", "-r", "3",
                          "-fa", "0", "-rtr", "1", "-o", "json"], capture_output=True, text=True, check=True).stdout
    (record,) = [r for r in json.loads(out[out.index("["):]) if r.get("n_prompt") == n]
    return 1e3 * n / float(record["avg_ts"])


def specee_pass_ms(ctx, n: int, reps: int = 5) -> float:
    feed = list(range(100, 100 + n))
    base = ctx.n_past
    times = []
    for _ in range(reps + 1):  # the first builds the graph
        t0 = time.perf_counter()
        if n == 1:
            ctx.decode(feed[0])
        else:
            ctx.decode_tree(feed)
            ctx.tree_accept([])
        times.append(time.perf_counter() - t0)
        ctx.truncate(base)
    return 1e3 * statistics.median(times[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--kernels", default="specee", choices=["ggml", "specee"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="1,2,4,8,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--llama-repack", type=int, choices=(0, 1), default=1,
                    help="llama-bench --repack (its AMX layout fails on prompts on some Xeons: use 0 there)")
    ap.add_argument("--ik-llama-bench", help="ik_llama.cpp's llama-bench (-rtr 1), measured in the same rounds")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    path = fetch_model(args.model, progress=False)
    ours = {n: [] for n in sizes}
    theirs = {n: [] for n in sizes}
    ik = {n: [] for n in sizes}
    with Model(path, kernels=args.kernels) as m, m.context(n_ctx=512, n_threads=args.threads) as ctx:
        ctx.prefill(PROMPT)
        for r in range(args.rounds):
            for n in sizes:
                sides = ["llama", "specee"] + (["ik"] if args.ik_llama_bench else [])
                for side in (sides if r % 2 == 0 else sides[::-1]):
                    if side == "ik":
                        ik[n].append(ik_pass_ms(args.ik_llama_bench, path, args.threads, n))
                    elif side == "llama":
                        theirs[n].append(llama_pass_ms(args.llama_bench, path, args.threads, n, args.llama_repack))
                    else:
                        ours[n].append(specee_pass_ms(ctx, n))
            print(f"round {r + 1} done", file=sys.stderr, flush=True)
    cpu = cpu_model()
    rows = []
    for n in sizes:
        a, b = statistics.median(ours[n]), statistics.median(theirs[n])
        rows.append({"n": n, "specee_ms": round(a, 2), "llama_bench_ms": round(b, 2), "specee_over_llama": round(a / b, 3),
                     "specee_in_steps": round(a / statistics.median(ours[sizes[0]]), 2),
                     "llama_in_steps": round(b / statistics.median(theirs[sizes[0]]), 2)})
        if args.ik_llama_bench:
            c = statistics.median(ik[n])
            rows[-1].update({"ik_ms": round(c, 2), "specee_over_ik": round(a / c, 3),
                             "ik_in_steps": round(c / statistics.median(ik[sizes[0]]), 2)})
    out = {"model": args.model, "kernels": args.kernels, "threads": args.threads, "rounds": args.rounds,
           "llama_repack": args.llama_repack, "cpu": cpu, "results": rows}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
