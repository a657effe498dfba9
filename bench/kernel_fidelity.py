"""How much specee's kernels change a model's numbers against ggml's:
greedy text of MT-Bench first turns written with ggml's kernels, then
teacher-forced through both, one token a step as decoding runs: per step the
KL divergence KL(p_ggml || p_specee) of the next-token distributions, whether
the top-1 tokens agree, and the largest logit difference. Both sides quantize
activations to 8 bits the same way and differ only in the order of float
sums, so the figures say how far that order moves the output.

    python bench/kernel_fidelity.py --model qwen2.5-coder-1.5b --prompts 6 -n 128 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from machine import cpu_model
from specee.engine import Model
from specee.evaluation.datasets import load_mtbench
from specee.fetch import fetch_model
from specee.tokenizer import Tokenizer
from specee.tokenizer.chat_template import chat_prompt_ids, read_chat_template


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def step_logits(ctx, prompt: list[int], tokens: list[int]) -> list[np.ndarray]:
    """Logits before each of `tokens` (the first after the prompt), one decode step each."""
    ctx.truncate(0)
    ctx.prefill(prompt)
    out = [ctx.logits().copy()]
    for t in tokens[:-1]:
        ctx.decode(t)
        out.append(ctx.logits().copy())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    path = fetch_model(args.model, progress=False)
    tok, template = Tokenizer.from_gguf(path), read_chat_template(path)
    prompts = [chat_prompt_ids(tok, template, [{"role": "user", "content": q.turns[0]}])
               for q in load_mtbench(limit=args.prompts)]
    kl, agree, max_diff = [], [], 0.0
    with Model(path, kernels="ggml") as mg, Model(path, kernels="specee") as ms, \
            mg.context(n_ctx=2048, n_threads=args.threads) as cg, ms.context(n_ctx=2048, n_threads=args.threads) as cs:
        if ms.n_packed == 0:
            raise SystemExit("specee's kernels take no matrix of this model on this CPU: nothing to compare")
        for i, prompt in enumerate(prompts):
            cg.prefill(prompt)
            text = [cg.argmax()]
            for _ in range(args.n - 1):
                text.append(cg.decode(text[-1]))
            lg, ls = step_logits(cg, prompt, text), step_logits(cs, prompt, text)
            for a, b in zip(lg, ls):
                pa, pb = log_softmax(a), log_softmax(b)
                kl.append(float((np.exp(pa) * (pa - pb)).sum()))
                agree.append(int(a.argmax() == b.argmax()))
                max_diff = max(max_diff, float(np.abs(a - b).max()))
            print(f"prompt {i + 1}: {len(text)} steps", file=sys.stderr, flush=True)
    cpu = cpu_model()
    out = {"model": args.model, "cpu": cpu, "steps": len(kl), "mean_kl": float(np.mean(kl)),
           "p99_kl": float(np.percentile(kl, 99)), "max_kl": float(np.max(kl)),
           "top1_agreement": float(np.mean(agree)), "max_abs_logit_diff": max_diff}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
