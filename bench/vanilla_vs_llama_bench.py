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

With `--heads H` the specee side decodes with early exit instead, on MT-Bench
first turns (one per round, in turn; early exit depends on the text, while
llama.cpp's decode cost does not), and reports the teacher-forced agreement
with full depth over the same steps: the fidelity that goes with the speed.

    python bench/vanilla_vs_llama_bench.py --llama-bench PATH/llama-bench --model qwen2.5-coder-1.5b \
        --heads python/specee/heads/qwen2.5-coder-1.5b.gguf --threshold 0.95 --amx-decode --rounds 6
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from machine import cpu_model
from specee.engine import Heads, Model
from specee.fetch import fetch_model


def llama_bench_tok_s(binary: str, model: Path, threads: int, n: int, repack: int, depth: int = 0) -> float:
    out = subprocess.run([binary, "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(n), "-r", "1",
                          "-fa", "0", "--repack", str(repack), "-d", str(depth), "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    (record,) = [r for r in json.loads(out) if r.get("n_gen") == n]
    return float(record["avg_ts"])


def ik_llama_bench_tok_s(binary: str, model: Path, threads: int, n: int) -> float:
    """ik_llama.cpp's llama-bench, run-time repacking on (-rtr 1), flash attention off."""
    out = subprocess.run([binary, "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(n), "-r", "1",
                          "-fa", "0", "-rtr", "1", "-o", "json"], capture_output=True, text=True, check=True).stdout
    (record,) = [r for r in json.loads(out[out.index("["):]) if r.get("n_gen") == n]
    return float(record["avg_ts"])


def specee_tok_s(model: Model, threads: int, n: int, depth: int = 0) -> float:
    """Decode speed after one BOS and `depth` more tokens of context (llama-bench's -d)."""
    with model.context(n_ctx=max(256, depth + n + 8), n_threads=threads) as ctx:
        ctx.prefill([model.bos if model.bos >= 0 else 0] + [(1000 + i) % model.n_vocab for i in range(depth)])
        token = ctx.argmax()
        t0 = time.perf_counter()
        for _ in range(n):
            token = ctx.decode(token)
        return n / (time.perf_counter() - t0)


def early_exit_tok_s(model: Model, heads, prompt: list[int], threads: int, n: int,
                     threshold: float | None) -> tuple[float, int, int]:
    """Decode tok/s of early exit after `prompt`, and the teacher-forced
    agreement (agreeing steps, steps) with full depth from the same prompt."""
    from specee.decoding.early_exit import attach_heads, generate_specee
    from specee.evaluation.run import teacher_forced

    with model.context(n_ctx=len(prompt) + n + 8, n_threads=threads) as ctx:
        attach_heads(ctx, heads, threshold)
        r = generate_specee(ctx, prompt, n, heads.n_candidates)
        agree, steps = teacher_forced(ctx, prompt, n, heads.n_candidates)
    return r.decode_tok_s, agree, steps


def mtbench_prompts(path: Path, count: int) -> list[list[int]]:
    from specee.tokenizer.chat_template import chat_prompt_ids, read_chat_template
    from specee.evaluation.datasets import load_mtbench
    from specee.tokenizer import Tokenizer

    tok, template = Tokenizer.from_gguf(path), read_chat_template(path)
    return [chat_prompt_ids(tok, template, [{"role": "user", "content": q.turns[0]}])
            for q in load_mtbench(limit=count)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", required=True, help="path of llama.cpp's llama-bench")
    ap.add_argument("--model", action="append", required=True, help="model name or GGUF path (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=128, help="tokens decoded per measurement (llama-bench tg N)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--amx-decode", action="store_true", help="specee with Model(amx_decode=True)")
    ap.add_argument("--depth", type=int, default=0,
                    help="tokens of context before the decoded ones (llama-bench -d; not with --heads or --ik-llama-bench)")
    ap.add_argument("--ik-llama-bench", help="ik_llama.cpp's llama-bench (-rtr 1), measured in the same rounds")
    ap.add_argument("--kernels", default="ggml",
                    help="comma-separated kernel choices for specee (ggml, specee), each its own model, all "
                         "alternated with llama-bench in every round")
    ap.add_argument("--llama-repack", type=int, choices=(0, 1), default=1,
                    help="llama-bench --repack (1, its default: weights in the CPU's repacked/AMX layout)")
    ap.add_argument("--heads", help="specee decodes with early exit, with these heads, on MT-Bench prompts")
    ap.add_argument("--threshold", type=float, help="with --heads: the predictor threshold (default: the file's)")
    args = ap.parse_args()

    kernels = args.kernels.split(",")
    results = {}
    for name in args.model:
        path = fetch_model(name)
        ours = {k: [] for k in kernels}
        ratios = {k: [] for k in kernels}
        theirs, ik = [], []
        agree = {k: 0 for k in kernels}
        steps = {k: 0 for k in kernels}
        prompts = mtbench_prompts(path, args.rounds) if args.heads else []
        models = {k: Model(path, amx_decode=args.amx_decode, kernels=k) for k in kernels}
        heads = {k: Heads(models[k], args.heads) for k in kernels} if args.heads else None
        try:
            for k in kernels:
                specee_tok_s(models[k], args.threads, 16)  # warm-up: page in the weights
            engines = ["llama"] + kernels + (["ik"] if args.ik_llama_bench else [])
            for r in range(args.rounds):
                order = engines if r % 2 == 0 else engines[::-1]
                got = {}
                for engine in order:
                    if engine == "llama":
                        got[engine] = llama_bench_tok_s(args.llama_bench, path, args.threads, args.n, args.llama_repack,
                                                        args.depth)
                    elif engine == "ik":
                        got[engine] = ik_llama_bench_tok_s(args.ik_llama_bench, path, args.threads, args.n)
                    elif heads is not None:
                        got[engine], a, s = early_exit_tok_s(models[engine], heads[engine], prompts[r % len(prompts)],
                                                             args.threads, args.n, args.threshold)
                        agree[engine], steps[engine] = agree[engine] + a, steps[engine] + s
                    else:
                        got[engine] = specee_tok_s(models[engine], args.threads, args.n, args.depth)
                theirs.append(got["llama"])
                if "ik" in got:
                    ik.append(got["ik"])
                for k in kernels:
                    ours[k].append(got[k])
                    ratios[k].append(got[k] / got["llama"])
                print(f"{name} round {r + 1}: llama-bench {got['llama']:.1f} tok/s, "
                      + ", ".join(f"specee[{k}] {got[k]:.1f} tok/s (x{ratios[k][-1]:.3f})" for k in kernels)
                      + (f", ik_llama.cpp {got['ik']:.1f} tok/s (x{got['ik'] / got['llama']:.3f})" if "ik" in got else ""),
                      flush=True)
        finally:
            for k in kernels:
                if heads is not None:
                    heads[k].close()
                models[k].close()
        results[name] = {"amx_decode": args.amx_decode, "llama_repack": args.llama_repack, "depth": args.depth,
                         "llama_bench_tok_s": theirs, "cpu": cpu_model(), "kernels": {}}
        if ik:
            results[name]["ik_llama_bench_tok_s"] = ik
            results[name]["ik_median_ratio"] = statistics.median(a / b for a, b in zip(ik, theirs))
        for k in kernels:
            res = {"specee_tok_s": ours[k], "ratios": ratios[k], "median_ratio": statistics.median(ratios[k])}
            if args.heads:
                res.update(heads=args.heads, threshold=args.threshold,
                           teacher_forced_agreement=round(agree[k] / steps[k], 4) if steps[k] else None)
            results[name]["kernels"][k] = res
            print(f"{name} specee[{k}]: median ratio {res['median_ratio']:.3f} over {len(ratios[k])} rounds"
                  + (f", teacher-forced agreement {agree[k] / steps[k]:.4f}" if steps[k] else ""))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "n": args.n, "rounds": args.rounds,
                                         "models": results}, indent=1))


if __name__ == "__main__":
    main()
