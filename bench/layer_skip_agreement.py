"""Teacher-forced agreement of layer skipping (the SpaDec mode) on held-out prompts.

    python bench/layer_skip_agreement.py --model qwen2.5-coder-0.5b --limit 10 --agreements 0.95,0.9,0.8 \
        --out bench/results/layer_skip/agreement_qwen05b.json

Traces of plain greedy decoding on MT-Bench first turns (never the router's
training data; train/predictors.collect_traces) record, per token, the
draft head's confidence in the next token and whether each layer's argmax
already is full depth's. For each target agreement the router gives every
token the depth a drafted row with that confidence would run; the
teacher-forced agreement is the share of tokens whose argmax at that depth
is full depth's: how often a verification row that skipped would still
judge the draft as the full model does. Also: the tokens' mean depth.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from machine import cpu_model, report

from vanilla_vs_llama_bench import mtbench_prompts

from specee.decoding.speculative.layer_skip import DepthRouter, router_path_for
from specee.engine import Model
from specee.fetch import fetch_model
from specee.heads.shipped import default_heads
from specee.train.predictors import collect_traces


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model name or GGUF path")
    p.add_argument("--heads", help="head file with the draft head (default: the shipped ones)")
    p.add_argument("--router", help="depth router (default: the one beside the head file)")
    p.add_argument("--agreements", default="0.95,0.9,0.8", help="comma-separated target agreements")
    p.add_argument("--limit", type=int, default=10, help="MT-Bench questions (first turns)")
    p.add_argument("-n", type=int, default=128, help="tokens per answer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args()

    path = fetch_model(args.model, progress=False)
    with Model(path) as m:
        heads = args.heads or default_heads(m.fingerprint)
        n_layer = m.n_layer
    router = DepthRouter.load(args.router or router_path_for(heads))
    router.check_model(n_layer)
    prompts = mtbench_prompts(path, args.limit)
    traces = collect_traces(path, heads, prompts, n_new=args.n, n_ctx=1024, n_threads=args.threads)
    conf = traces.draft_probs.max(axis=1)
    summary = {}
    for a in (float(x) for x in args.agreements.split(",") if x):
        depth = np.array([router.depth(float(c), a) for c in conf])
        right = traces.label[np.arange(len(depth)), depth - 1]
        summary[f"{a:g}"] = {"teacher_forced_agreement": round(float(right.mean()), 4),
                             "mean_depth": round(float(depth.mean()), 3),
                             "tokens_skipping": int((depth < n_layer).sum())}
    out = {"model": str(path), "n_layer": n_layer, "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"),
           "n_prompts": len(prompts), "n_tokens": int(len(conf)), "summary": summary}
    report(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
