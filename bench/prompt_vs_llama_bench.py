"""Prompt processing against llama.cpp's `llama-bench -p N` (pp512 by
default): one prefill of N tokens, logits of the last one, same GGUF and
threads, alternated round by round; one specee model per kernel choice.

    python bench/prompt_vs_llama_bench.py --llama-bench PATH/llama-bench --model qwen2.5-coder-1.5b \\
        --kernels ggml,specee,specee/plain --rounds 3 --llama-repack 0

A kernel choice with "/plain" or "/repacked" loads the model with
use_repack=False or True (ggml's layout for the passes ggml computes,
prompts among them); without either, the default (measured per CPU,
specee.prompt_layout).
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


def llama_pp_tok_s(binary: str, model: Path, threads: int, n: int, repack: int) -> float:
    out = subprocess.run([binary, "-m", str(model), "-t", str(threads), "-p", str(n), "-n", "0", "-r", "1",
                          "-fa", "0", "--repack", str(repack), "-o", "json"], capture_output=True, text=True,
                         check=True).stdout
    (record,) = [r for r in json.loads(out) if r.get("n_prompt") == n]
    return float(record["avg_ts"])


def specee_pp_tok_s(model: Model, threads: int, n: int) -> float:
    prompt = [(1000 + i) % model.n_vocab for i in range(n)]
    with model.context(n_ctx=n + 8, n_threads=threads) as ctx:
        t0 = time.perf_counter()
        ctx.prefill(prompt)
        return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--kernels", default="ggml,specee")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--llama-repack", type=int, choices=(0, 1), default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    kernels = args.kernels.split(",")
    out = {"cpu": cpu_model(), "threads": args.threads, "n": args.n, "llama_repack": args.llama_repack, "models": {}}
    for name in args.model:
        path = fetch_model(name, progress=False)
        layout = {"plain": False, "repacked": True}
        models = {k: Model(path, kernels=k.split("/")[0], use_repack=layout.get(k.partition("/")[2])) for k in kernels}
        got = {e: [] for e in ["llama"] + kernels}
        try:
            for k in kernels:
                specee_pp_tok_s(models[k], args.threads, 32)  # warm-up
            for r in range(args.rounds):
                engines = ["llama"] + kernels
                for e in (engines if r % 2 == 0 else engines[::-1]):
                    got[e].append(llama_pp_tok_s(args.llama_bench, path, args.threads, args.n, args.llama_repack)
                                  if e == "llama" else specee_pp_tok_s(models[e], args.threads, args.n))
        finally:
            for m in models.values():
                m.close()
        res = {"llama_bench_tok_s": got["llama"]}
        for k in kernels:
            res[k] = {"tok_s": got[k], "median_ratio": statistics.median(a / b for a, b in zip(got[k], got["llama"]))}
        out["models"][name] = res
        print(name, json.dumps(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
