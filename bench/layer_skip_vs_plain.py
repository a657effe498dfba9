"""Lossy layer skipping inside verification (SpaDec; --mode speculative --lossy)
against plain decoding and exact EAGLE speculation, on MT-Bench first turns
(greedy, chat template), alternated prompt by prompt.

    python bench/layer_skip_vs_plain.py --model smollm2-135m --limit 10 --agreements 0.95,0.9 \
        --out bench/results/layer_skip/smollm2.json

Each prompt runs every variant in turn (the order rotating per prompt) in a
fresh context. Decode speed = generated tokens after the first / decode
wall time. Reported per variant: the median of the paired ratios against
plain decoding; fidelity against plain decoding's output: answers
identical, the median position of the first differing token, and the share
of positions equal to plain's; the rows' mean depth and the acceptance.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from machine import cpu_model, report

from specee.decoding.decoders import decode
from specee.decoding.modes import open_decoder
from specee.decoding.sampling import Sampler
from specee.decoding.speculative import open_drafter
from specee.engine import Model
from specee.evaluation.datasets import load_mtbench
from specee.fetch import fetch_model
from specee.tokenizer import Tokenizer
from specee.tokenizer.chat_template import chat_prompt_ids, read_chat_template


def run_variant(model, ids, args, stop_ids, name: str) -> dict:
    with model.context(n_ctx=args.ctx_size, n_threads=args.threads) as ctx:
        if name == "plain":
            decoder = open_decoder(ctx, "vanilla", Sampler())
            drafter = None
        else:
            drafter = open_drafter(args.draft, model, ctx.n_ctx, ctx.n_threads, ctx=ctx, heads_path=args.heads)
            lossy = name.startswith("skip@")
            decoder = open_decoder(ctx, "speculative", Sampler(), drafter=drafter, lossy=lossy, router=args.router,
                                   skip_agreement=float(name.split("@")[1]) if lossy else None)
        try:
            r = decode(decoder, ctx, ids, args.n, stop_ids=stop_ids)
        finally:
            if drafter is not None:
                drafter.close()
    x = r.extra
    return {"tokens": r.tokens, "tok_s": r.decode_tok_s, "drafted": x.get("drafted", 0),
            "accepted": x.get("accepted", 0), "verify_steps": x.get("verify_steps", 0),
            "rows": x.get("layer_skip_rows", 0), "depth": x.get("layer_skip_depth")}


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model name or GGUF path")
    p.add_argument("--heads", help="head file with the draft head (default: the shipped ones)")
    p.add_argument("--router", help="depth router (default: the one beside the head file)")
    p.add_argument("--draft", default="eagle", help="eagle or eagle:chain")
    p.add_argument("--agreements", default="0.95,0.9", help="comma-separated --skip-agreement values")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=10, help="MT-Bench questions (first turns)")
    p.add_argument("-n", type=int, default=128, help="tokens per answer")
    p.add_argument("--ctx-size", type=int, default=1024)
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args()
    names = ["plain", "eagle"] + [f"skip@{a}" for a in args.agreements.split(",") if a]

    path = fetch_model(args.model, progress=False)
    tok = Tokenizer.from_gguf(path)
    template = read_chat_template(path)
    questions = load_mtbench(limit=args.limit, progress=False)
    rows = []
    with Model(path) as model:
        n_layer = model.n_layer
        for i, q in enumerate(questions):
            ids = chat_prompt_ids(tok, template, [{"role": "user", "content": q.turns[0]}])
            order = names[i % len(names):] + names[:i % len(names)]
            runs = {name: run_variant(model, ids, args, tok.eot_ids, name) for name in order}
            rows.append({"question_id": q.question_id, "order": order, **runs})
            line = " ".join(f"{n} {runs[n]['tok_s']:.1f}" for n in names)
            print(f"[{i + 1}/{len(questions)}] q{q.question_id}: {line} tok/s", file=sys.stderr, flush=True)

    summary = {}
    for name in names[1:]:
        runs = [r[name] for r in rows]
        plain = [r["plain"]["tokens"] for r in rows]
        drafted = sum(x["drafted"] for x in runs)
        rows_run = sum(x["rows"] for x in runs)
        summary[name] = {
            "median_ratio_vs_plain": round(statistics.median(x["tok_s"] / r["plain"]["tok_s"]
                                                             for x, r in zip(runs, rows)), 4),
            "same_tokens_as_plain": sum(x["tokens"] == t for x, t in zip(runs, plain)),
            "median_first_difference": statistics.median(first_difference(x["tokens"], t)
                                                         for x, t in zip(runs, plain)),
            "positions_equal_to_plain": round(
                sum(sum(a == b for a, b in zip(x["tokens"], t)) for x, t in zip(runs, plain))
                / max(1, sum(len(t) for t in plain)), 4),
            "acceptance": round(sum(x["accepted"] for x in runs) / drafted, 4) if drafted else None,
            "tokens_per_verify": round((sum(x["accepted"] for x in runs) + sum(x["verify_steps"] for x in runs))
                                       / max(1, sum(x["verify_steps"] for x in runs)), 3),
            "mean_row_depth": round(sum(x["depth"] * x["rows"] for x in runs if x["rows"]) / rows_run, 3)
            if rows_run else None,
        }
    out = {"model": str(path), "n_layer": n_layer, "draft": args.draft, "threads": args.threads, "n": args.n,
           "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "n_prompts": len(rows),
           "plain_median_tok_s": round(statistics.median(r["plain"]["tok_s"] for r in rows), 2),
           "summary": summary, "rows": rows}
    report(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
