"""Exact SpecEE against plain decoding with the same model, kernels and
threads, on MT-Bench first turns (greedy, chat template), alternated prompt by
prompt; the lossy exit beside them for comparison.

    python bench/exact_specee_vs_plain.py --model qwen2.5-coder-1.5b --kernels specee --limit 10 \
        --out bench/results/exact_specee/qwen15b.json

Decode speed leaves the prompt out, end to end takes it in (the draft head
reads the prompt in the prefill). With --llama-bench, llama.cpp's own decode
speed (`llama-bench -n N`, at the prompt's depth `-d PROMPT_TOKENS` with
--llama-repack 0; its AMX layout, the default, crashes with -d on this
Xeon, so it runs at depth 0) joins each prompt's rotation, so the ratios
against it come from the same run.

Each prompt runs every variant in turn (the order rotating per prompt) in a
fresh context, so all see the same machine load. Decode speed = generated
tokens after the first / decode wall time. Reported per variant: the median
of the paired ratios against plain decoding, whether every output was plain
decoding's, the exit ratio and mean exit layer, drafts verified and accepted,
and the terms of docs/exact-specee.md's bound: a verification pass in plain
one-token steps (1 + c F for the exited token's share F), and what an exit
step costs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from machine import cpu_model, report
from vanilla_vs_llama_bench import llama_bench_tok_s

from specee.decoding.early_exit import DEFAULT_CHAIN, generate_specee
from specee.decoding.plain import generate
from specee.engine import Heads, Model
from specee.evaluation.datasets import load_mtbench
from specee.fetch import fetch_model
from specee.heads.shipped import default_heads
from specee.tokenizer import Tokenizer
from specee.tokenizer.chat_template import chat_prompt_ids, read_chat_template

VARIANTS = {  # name: (exact, verify_full, adaptive, exits a verification takes)
    "exact-full": (True, True, False, DEFAULT_CHAIN),
    "exact-candidates": (True, False, False, DEFAULT_CHAIN),
    "exact-candidates-chain1": (True, False, False, 1),
    # what --mode specee runs: candidates, with the exit switch, which the
    # prompts share (one heads object): after the first, a session's state
    "exact-default": (True, False, True, DEFAULT_CHAIN),
    "lossy-full": (False, True, False, 1),
}


def run_variant(model, heads, ids, args, stop_ids, name: str) -> dict:
    if name == "llama.cpp":
        # llama-bench's tg N, after as many tokens of context as the prompt
        # has where it can (its AMX layout, --repack 1, crashes with -d here)
        depth = len(ids) if args.llama_repack == 0 else 0
        return {"tok_s": llama_bench_tok_s(args.llama_bench, Path(model.path), args.threads, args.n,
                                           args.llama_repack, depth=depth)}
    with model.context(n_ctx=args.ctx_size, n_threads=args.threads) as ctx:
        if name == "plain":
            r = generate(ctx, ids, args.n, stop_ids=stop_ids)
            return {"tokens": r.tokens, "tok_s": r.decode_tok_s, "n": r.n_decode_steps, "decode_s": r.decode_s,
                    "prefill_s": r.prefill_s}
        exact, verify_full, adaptive, chain = VARIANTS[name]
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=verify_full)
        r = generate_specee(ctx, ids, args.n, heads.n_candidates, stop_ids=stop_ids, exact=exact, adaptive=adaptive,
                            chain=chain)
        x = r.extra
        return {"tokens": r.tokens, "tok_s": r.decode_tok_s, "n": r.n_decode_steps, "decode_s": r.decode_s,
                "prefill_s": r.prefill_s, "exit_ratio": x["exit_ratio"], "mean_exit_layer": x["mean_exit_layer"],
                "steps": len(x["exit_layers"]), "verified": x.get("exit_drafts_verified", 0),
                "accepted": x.get("exit_drafts_accepted", 0), "verify_s": x.get("verify_s", 0.0),
                "plain_steps": x.get("plain_steps", 0), "exit_drafts": x.get("exit_drafts", 0),
                "passes": x.get("verification_passes", 0)}


def _per_step(runs: list[dict], key: str):
    steps = sum(x["steps"] for x in runs)
    return round(sum(x[key] * x["steps"] for x in runs) / steps, 4) if steps else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="model name or GGUF path")
    p.add_argument("--heads", help="head file (default: the shipped ones)")
    p.add_argument("--kernels", default="specee", choices=["ggml", "specee"])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=10, help="MT-Bench questions (first turns)")
    p.add_argument("-n", type=int, default=128, help="tokens per answer")
    p.add_argument("--ctx-size", type=int, default=1024)
    p.add_argument("--llama-bench", help="llama.cpp's llama-bench: its tg at the prompt's depth joins the rotation")
    p.add_argument("--llama-repack", type=int, default=1, choices=[0, 1], help="llama-bench --repack")
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    names = ["plain"] + variants + (["llama.cpp"] if args.llama_bench else [])

    path = fetch_model(args.model, progress=False)
    tok = Tokenizer.from_gguf(path)
    template = read_chat_template(path)
    questions = load_mtbench(limit=args.limit, progress=False)
    rows = []
    with Model(path, kernels=args.kernels) as model, Heads(model, args.heads or default_heads(model.fingerprint)) as heads:
        for i, q in enumerate(questions):
            ids = chat_prompt_ids(tok, template, [{"role": "user", "content": q.turns[0]}])
            order = names[i % len(names):] + names[:i % len(names)]
            runs = {name: run_variant(model, heads, ids, args, tok.eot_ids, name) for name in order}
            rows.append({"question_id": q.question_id, "order": order, **runs})
            line = " ".join(f"{n} {runs[n]['tok_s']:.1f}" for n in names)
            print(f"[{i + 1}/{len(questions)}] q{q.question_id}: {line} tok/s", file=sys.stderr, flush=True)

    plain_step_s = sum(r["plain"]["decode_s"] for r in rows) / max(1, sum(r["plain"]["n"] for r in rows))
    summary = {}
    if args.llama_bench:
        # each prompt's speed against llama-bench's in the same rotation
        for name in ["plain"] + variants:
            summary.setdefault(name, {})["median_ratio_vs_llama_cpp"] = round(statistics.median(
                r[name]["tok_s"] / r["llama.cpp"]["tok_s"] for r in rows), 4)
    for name in variants:
        runs = [r[name] for r in rows]
        verified = sum(x["verified"] for x in runs)
        passes = sum(x.get("passes", 0) for x in runs)
        summary.setdefault(name, {}).update({
            "median_ratio_vs_plain": round(statistics.median(x["tok_s"] / r["plain"]["tok_s"]
                                                             for x, r in zip(runs, rows)), 4),
            # prompt and answer together: the draft head reads the prompt in the prefill
            "median_end_to_end_ratio_vs_plain": round(statistics.median(
                (r["plain"]["prefill_s"] + r["plain"]["decode_s"]) / (x["prefill_s"] + x["decode_s"])
                for x, r in zip(runs, rows)), 4),
            "same_tokens_as_plain": sum(x["tokens"] == r["plain"]["tokens"] for x, r in zip(runs, rows)),
            # over the steps that tried to exit (plain steps and prompts without any left out)
            "exit_ratio": _per_step(runs, "exit_ratio"),
            "mean_exit_layer": _per_step(runs, "mean_exit_layer"),
            "drafts_verified": verified,
            "plain_steps": sum(x["plain_steps"] for x in runs),
            "drafts_accepted": sum(x["accepted"] for x in runs),
            "acceptance": round(sum(x["accepted"] for x in runs) / verified, 4) if verified else None,
            # drafts a verification pass took (a chain's share one pass), and the
            # pass in plain steps: 1 (the last draft's own step) + c F per exited token
            "verification_passes": passes,
            "drafts_per_pass": round(sum(x.get("exit_drafts", 0) for x in runs) / passes, 4) if passes else None,
            "verify_pass_in_plain_steps": round(sum(x["verify_s"] for x in runs) / passes / plain_step_s, 4)
            if passes else None,
        })
    out = {"model": str(path), "kernels": args.kernels, "threads": args.threads, "n": args.n,
           "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "n_prompts": len(rows),
           "plain_step_ms": round(1000 * plain_step_s, 3),
           "plain_median_tok_s": round(statistics.median(r["plain"]["tok_s"] for r in rows), 2),
           "summary": summary, "rows": [{k: v for k, v in r.items()} for r in rows]}
    report(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
