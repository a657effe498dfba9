"""specee's plain decoding against llama.cpp's own `llama-bench` tg test:
same GGUF, same threads, alternated round by round in one run.

    python bench/vanilla_vs_llama_bench.py --llama-bench PATH/llama-bench \\
        --model smollm2-135m --model qwen2.5-coder-0.5b --threads 2 --rounds 5 --json out.json

llama-bench comes from the pinned llama-cpp-python sdist
(`../shared/tools/build-llama-cpp.sh` builds it). Its tg test decodes n
tokens one at a time after an empty context (flash attention off here, to
compute what specee computes) and reports tokens/s without prompt
processing; specee does the same: one BOS prefilled, then n single-token
decode steps, timed. Each round runs llama-bench once (-r 1) and specee
once, the order flipping every round; the ratio reported is the median of
the per-round ratios, as machines of this kind drift between minutes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from specee.engine import Model
from specee.fetch import fetch_model


def llama_bench_tok_s(binary: str, model: Path, threads: int, n: int, repack: int) -> float:
    out = subprocess.run([binary, "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(n), "-r", "1",
                          "-fa", "0", "--repack", str(repack), "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    (record,) = [r for r in json.loads(out) if r.get("n_gen") == n]
    return float(record["avg_ts"])


def specee_tok_s(model: Model, threads: int, n: int) -> float:
    with model.context(n_ctx=max(256, n + 8), n_threads=threads) as ctx:
        ctx.prefill([model.bos if model.bos >= 0 else 0])
        token = ctx.argmax()
        t0 = time.perf_counter()
        for _ in range(n):
            token = ctx.decode(token)
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", required=True, help="path of llama.cpp's llama-bench")
    ap.add_argument("--model", action="append", required=True, help="model name or GGUF path (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=128, help="tokens decoded per measurement (llama-bench tg N)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--amx-decode", action="store_true", help="specee with Model(amx_decode=True)")
    ap.add_argument("--llama-repack", type=int, choices=(0, 1), default=1,
                    help="llama-bench --repack (1, its default: weights in the CPU's repacked/AMX layout)")
    args = ap.parse_args()

    results = {}
    for name in args.model:
        path = fetch_model(name)
        ratios, ours, theirs = [], [], []
        with Model(path, amx_decode=args.amx_decode) as model:
            specee_tok_s(model, args.threads, 16)  # warm-up: page in the weights
            for r in range(args.rounds):
                order = ("llama", "specee") if r % 2 == 0 else ("specee", "llama")
                got = {}
                for engine in order:
                    got[engine] = (llama_bench_tok_s(args.llama_bench, path, args.threads, args.n, args.llama_repack) if engine == "llama"
                                   else specee_tok_s(model, args.threads, args.n))
                ours.append(got["specee"])
                theirs.append(got["llama"])
                ratios.append(got["specee"] / got["llama"])
                print(f"{name} round {r + 1}: specee {got['specee']:.1f} tok/s, llama-bench {got['llama']:.1f} tok/s, "
                      f"ratio {ratios[-1]:.3f}", flush=True)
        results[name] = {"amx_decode": args.amx_decode, "llama_repack": args.llama_repack, "specee_tok_s": ours, "llama_bench_tok_s": theirs, "ratios": ratios,
                         "median_ratio": statistics.median(ratios)}
        print(f"{name}: median ratio {results[name]['median_ratio']:.3f} over {len(ratios)} rounds")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "n": args.n, "rounds": args.rounds,
                                         "models": results}, indent=1))


if __name__ == "__main__":
    main()
