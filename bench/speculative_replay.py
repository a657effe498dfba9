"""Replays the speculative decode loop's decisions (drafter and policy) on
plain greedy outputs, without running the model: a greedy verification
accepts exactly the longest draft prefix that plain decoding produced next,
so the outputs, the model's cached batch cost curve and the drafter give
each run's drafts, acceptance, verifications and modelled cost. The plain
outputs are made once with the model (cached with --outputs); the replay
itself decodes nothing.

    python bench/speculative_replay.py --model qwen2.5-coder-1.5b --draft lookup --outputs plain.json

Modelled speed ratio = tokens / (plain steps + the cost of every
verification pass, in plain steps): no Python overhead, no noise. It is for
choosing drafter and policy settings quickly and repeatably; speed figures
come from speculative_vs_plain.py. `--outputs` caches the plain outputs of
the benchmark prompts (made with the model on first use).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from copy_prompts import COPY_SETS, add_prompt_arguments, max_tokens, prompt_ids, token_budget
from speculative_vs_plain import OPEN_PROMPTS

from specee.tokenizer.chat_template import read_chat_template
from specee.engine import Model
from specee.fetch import fetch_model
from specee.decoding.plain import generate
from specee.decoding.speculative import cost, open_drafter
from specee.decoding.speculative.loop import plan_draft
from specee.decoding.speculative.policy import DraftPolicy
from specee.decoding.speculative.tree import children_of
from specee.tokenizer import Tokenizer


def plain_outputs(model: Model, path: Path, prompts, args) -> dict:
    tok = Tokenizer.from_gguf(path)
    template = read_chat_template(path)
    out = {}
    for name, text, chat in prompts:
        ids = prompt_ids(tok, template, text, chat)
        with model.context(n_ctx=args.ctx_size, n_threads=args.threads) as ctx:
            n, stop_ids = token_budget(args, tok, chat)
            r = generate(ctx, ids, n, stop_ids=stop_ids)
        out[name] = {"prompt": ids, "output": r.tokens}
    return out


def accepted_path(draft, truth: list[int]) -> list[int]:
    """The draft nodes a greedy verification accepts when plain decoding
    continues with `truth`."""
    children, path, node = children_of(draft.parent_of), [], -1
    for want in truth:
        nxt = next((c for c in children.get(node, []) if draft.tokens[c] == want), None)
        if nxt is None:
            break
        path.append(nxt)
        node = nxt
    return path


def replay(prompt: list[int], output: list[int], drafter, policy: DraftPolicy, draft_max: int,
           max_tokens: int) -> dict:
    """One generation of at most `max_tokens` whose plain output was `output`."""
    history = list(prompt) + output[:1]
    pos, spent, plain, verifies, drafted, accepted = 1, 0.0, 0, 0, 0, 0
    free = any(kind.cost_per_token == 0 for kind in drafter.kinds.values())
    while pos < len(output):
        # SpeculativeDecoder.step's decision (room for the drafts and one more token)
        draft, k, _ = plan_draft(drafter, policy, history, min(draft_max, max_tokens - pos - 1), None, free)
        if k == 0:
            policy.plain_step(draft, output[pos])
            new, spent, plain = [output[pos]], spent + 1.0, plain + 1
        else:
            chosen = draft.cut(k)
            path = accepted_path(chosen, output[pos:])
            new = output[pos:pos + len(path) + 1]
            policy.verified(chosen, path, new)
            spent += policy.curve(k + 1) + policy.kinds[chosen.kind].cost_per_token * k
            verifies, drafted, accepted = verifies + 1, drafted + k, accepted + len(path)
        history += new
        pos += len(new)
    n = len(output) - 1
    return {"tokens": n, "ratio": round(n / spent, 4) if spent else 1.0, "plain_steps": plain,
            "verify_steps": verifies, "drafted": drafted, "accepted": accepted,
            "tokens_per_verify": round((accepted + verifies) / verifies, 3) if verifies else 0.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--draft", default="lookup", help="a free drafter: lookup[:N]")
    p.add_argument("--draft-max", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="the thread count whose cost curve is used")
    add_prompt_arguments(p)
    p.add_argument("--ctx-size", type=int, default=1024)
    p.add_argument("--outputs", help="plain outputs (.json): read if it exists, else made and written")
    args = p.parse_args()
    path = fetch_model(args.model, progress=False)
    groups = {"copy": COPY_SETS[args.copy_set], "open": OPEN_PROMPTS}
    with Model(path) as model:
        curve = cost.load(model.fingerprint, args.threads, args.draft_max + 1, kernels=model.kernels)
        if curve is None:
            sys.exit(f"no cached cost curve for {args.model} at {args.threads} threads: run speculative_vs_plain.py "
                     "once first")
        cached = Path(args.outputs) if args.outputs else None
        if cached is not None and cached.exists():
            outputs = json.loads(cached.read_text())
        else:
            outputs = plain_outputs(model, path, [x for g in groups.values() for x in g], args)
            if cached is not None:
                cached.write_text(json.dumps(outputs))
        report = {}
        for group, prompts in groups.items():
            items = {}
            for name, _, chat in prompts:
                drafter = open_drafter(args.draft, model, args.ctx_size, args.threads)
                if any(kind.cost_per_token > 0 for kind in drafter.kinds.values()):
                    sys.exit(f"{args.draft}: the replay prices free drafters only (lookup[:N])")
                policy = DraftPolicy(curve, drafter.kinds)
                items[name] = replay(outputs[name]["prompt"], outputs[name]["output"], drafter, policy,
                                     args.draft_max, max_tokens(args, chat))
                drafter.close()
            report[group] = {"median_ratio": statistics.median(r["ratio"] for r in items.values()), "items": items}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
