"""Speculative decoding vs plain decoding with the same model, context and
threads: decode speed ratios on copy-heavy prompts (where lookup drafts are
right) and open prompts (where they are not), alternated prompt by prompt.

    python bench/speculative_vs_plain.py --draft lookup --threads 2 --rounds 3 --out results/x.json

Every (prompt, round) runs plain and speculative in turn, the order flipping
each round, so both see the same machine load. Decode speed = generated
tokens after the first / decode wall time (prompt and the one-off cost-curve
calibration excluded). Reported per group: the median of the paired ratios
(speculative / plain), the acceptance rate and tokens per verification, and
whether every output was plain greedy's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from copy_prompts import COPY_SETS, add_prompt_arguments, prompt_ids, token_budget
from prompts import PROMPTS

from specee.tokenizer.chat_template import read_chat_template
from specee.engine import Model
from specee.fetch import fetch_model
from specee.decoding.plain import generate
from specee.decoding.speculative import DRAFT_MAX, generate_speculative, open_drafter, resolve_draft_model
from specee.tokenizer import Tokenizer

OPEN_PROMPTS = [x for x in PROMPTS if not x[2]]  # the benchmark prompts that are not chat-formatted


def run_pair(model, ids, n, stop_ids, args, draft_path, first_speculative: bool) -> dict:
    out = {}
    for which in (["speculative", "plain"] if first_speculative else ["plain", "speculative"]):
        with model.context(n_ctx=args.ctx_size, n_threads=args.threads,
                           exact_verify=not args.batched_verify) as ctx:
            if which == "plain":
                r = generate(ctx, ids, n, stop_ids=stop_ids)
            else:
                # a fresh drafter per run (the eagle drafter lives in the run's context);
                # opening it is outside the decode time
                drafter = open_drafter(args.draft, model, args.ctx_size, args.threads, draft_path, ctx=ctx)
                try:
                    r = generate_speculative(ctx, ids, n, drafter, draft_max=args.draft_max, stop_ids=stop_ids)
                finally:
                    drafter.close()
        out[which] = r
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model name or GGUF path")
    p.add_argument("--draft", default="lookup",
                   help="a --draft spec: lookup[:N], model:NAME_OR_PATH, eagle[:N], eagle:chain[:N], exit, A+B, auto")
    p.add_argument("--draft-max", type=DRAFT_MAX.arg, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx-size", type=int, default=1024)
    add_prompt_arguments(p)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batched-verify", action="store_true",
                   help="verify with ggml's batched kernels (Context(exact_verify=False)), as --batched-verify")
    p.add_argument("--out", help="write the results here (.json)")
    args = p.parse_args()

    model_path = fetch_model(args.model, progress=False)
    draft_path = resolve_draft_model(args.draft, model_path)
    tok = Tokenizer.from_gguf(model_path)
    template = read_chat_template(model_path)
    groups = {"copy": COPY_SETS[args.copy_set], "open": OPEN_PROMPTS}
    report = {"model": str(model_path), "draft": args.draft, "draft_max": args.draft_max, "threads": args.threads,
              "n": args.n, "copy_set": args.copy_set, "edit_max": args.edit_max, "rounds": args.rounds,
              "groups": {}}
    with Model(model_path) as model:
        for group, prompts in groups.items():
            ratios, drafted, accepted, verifies, identical, items = [], 0, 0, 0, True, []
            exits = {"exit_steps": 0, "exit_drafts_verified": 0, "exit_drafts_accepted": 0, "exit_plain_steps": 0}
            for rnd in range(args.rounds):
                for i, (name, text, chat) in enumerate(prompts):
                    ids = prompt_ids(tok, template, text, chat)
                    n, stop_ids = token_budget(args, tok, chat)
                    pair = run_pair(model, ids, n, stop_ids, args, draft_path, first_speculative=(rnd + i) % 2 == 1)
                    plain, spec = pair["plain"], pair["speculative"]
                    ratio = spec.decode_tok_s / plain.decode_tok_s if plain.decode_tok_s > 0 else 0.0
                    ratios.append(ratio)
                    drafted += spec.extra["drafted"]
                    accepted += spec.extra["accepted"]
                    verifies += spec.extra["verify_steps"]
                    for key in exits:  # exit steps (--draft exit, A+exit, auto with heads)
                        exits[key] += spec.extra.get(key, 0)
                    identical &= spec.tokens == plain.tokens
                    items.append({"prompt": name, "round": rnd, "ratio": round(ratio, 4),
                                  "plain_tok_s": round(plain.decode_tok_s, 2),
                                  "speculative_tok_s": round(spec.decode_tok_s, 2), **spec.extra})
                    print(f"{group:5s} {name:18s} round {rnd}: x{ratio:.3f} "
                          f"({spec.extra['verify_steps']} verifications, "
                          f"{spec.extra.get('exit_drafts_verified', 0)} exit drafts)", file=sys.stderr)
            report["groups"][group] = {
                "median_ratio": round(statistics.median(ratios), 4),
                "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
                "tokens_per_verify": round((accepted + verifies) / verifies, 3) if verifies else 0.0,
                "all_outputs_identical": identical,
                **({**exits, "exit_acceptance": round(exits["exit_drafts_accepted"] /
                                                       max(exits["exit_drafts_verified"], 1), 4)}
                   if exits["exit_steps"] else {}),
                "items": items}
    summary = {g: {k: v for k, v in r.items() if k != "items"} for g, r in report["groups"].items()}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
