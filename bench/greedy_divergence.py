"""Where speculative greedy output parts from plain greedy output, and how
close the call was there: for each benchmark prompt, the first differing
token and plain decoding's logit margin between its top two tokens at that
step (a batched pass sums in another order than a single-token step, so
near-ties can flip).

    python bench/greedy_divergence.py --draft lookup:3 --model smollm2-135m
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from copy_prompts import EDIT_PROMPTS, RAW_COPY_PROMPTS, prompt_ids
from speculative_vs_plain import OPEN_PROMPTS

from specee.tokenizer.chat_template import read_chat_template
from specee.engine import Model
from specee.fetch import fetch_model
from specee.decoding.plain import generate
from specee.decoding.speculative import generate_speculative, open_drafter
from specee.tokenizer import Tokenizer


def plain_logits_at(model: Model, ids: list[int], prefix: list[int], threads: int) -> np.ndarray:
    """Plain decoding's logits after the prompt and `prefix`, token by token."""
    with model.context(n_ctx=1024, n_threads=threads) as ctx:
        ctx.prefill(ids)
        for t in prefix:
            ctx.decode(t)
        return ctx.logits()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--draft", default="lookup:3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=96)
    ap.add_argument("--no-repack", action="store_true", help="matrices in ggml's plain layout (Model(use_repack=False))")
    args = ap.parse_args()
    path = fetch_model(args.model, progress=False)
    tok = Tokenizer.from_gguf(path)
    template = read_chat_template(path)
    with Model(path, use_repack=not args.no_repack) as m:
        print("repacked matrices:", m.n_repacked)
        for name, text, chat in EDIT_PROMPTS + RAW_COPY_PROMPTS + OPEN_PROMPTS:
            ids = prompt_ids(tok, template, text, chat)
            with m.context(n_ctx=1024, n_threads=args.threads) as ctx:
                plain = generate(ctx, ids, args.n).tokens
            with m.context(n_ctx=1024, n_threads=args.threads) as ctx:
                drafter = open_drafter(args.draft, m, 1024, args.threads, ctx=ctx)
                try:
                    spec = generate_speculative(ctx, ids, args.n, drafter).tokens
                finally:
                    drafter.close()
            if plain == spec:
                print(name, "identical")
                continue
            i = next(i for i, (a, b) in enumerate(zip(plain, spec)) if a != b)
            logits = plain_logits_at(m, ids, plain[:i], args.threads)
            top = np.sort(logits)[::-1]
            print(name, "differs at", i, "plain", plain[i], "spec", spec[i], "margin %.3f" % (top[0] - top[1]),
                  "spec token's gap %.3f" % (logits.max() - logits[spec[i]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
