"""What the early-exit machinery costs per decode step when it never exits:
segment graphs, candidate logits, predictor, measured against plain full-depth
decoding in one run (alternated), on the default model.

    python bench/exit_overhead.py --checks 8 --tokens 128 --rounds 3
    python bench/exit_overhead.py --model qwen2.5-coder-1.5b --heads python/specee/heads/qwen2.5-coder-1.5b.gguf

With --heads, a trained head file at threshold 1.0 (no predictor output
exceeds it, so every step runs its checks, its draft and all layers)
instead of random never-firing predictors.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from specee.engine import Heads, Model
from specee.fetch import fetch_model
from specee.heads.head_file import DRAFT_DTYPES, DraftHead, Predictor, write_heads

import numpy as np

PROMPT = [6403, 1980, 253, 655, 28, 281, 253, 6560]  # "Once upon a time, in a village"


def never_firing(hidden: int = 512) -> Predictor:
    """Full-size (12 -> 512 -> 1) random predictor biased to never fire, so the
    arithmetic is what a trained one costs."""
    rng = np.random.default_rng(0)
    return Predictor(rng.standard_normal((hidden, 12)).astype(np.float32) * 0.01, np.zeros(hidden, np.float32),
                     rng.standard_normal(hidden).astype(np.float32) * 0.01, -40.0)


def random_draft(m: Model, n_ff: int, reduced: int) -> DraftHead:
    """Random weights of the draft head's shapes: its cost does not depend on
    what it learned. `reduced` > 0: that many output rows (a reduced vocabulary)."""
    rng = np.random.default_rng(1)
    d, q, kv = m.n_embd, m.n_embd, m.n_embd * m.n_head_kv // m.n_head

    def mat(o, i):
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    layer = {"attn_norm": np.ones(d, np.float32), "attn_q": mat(q, d), "attn_k": mat(kv, d), "attn_v": mat(kv, d),
             "attn_output": mat(d, q), "ffn_norm": np.ones(d, np.float32), "ffn_gate": mat(n_ff, d),
             "ffn_up": mat(n_ff, d), "ffn_down": mat(d, n_ff)}
    output = vocab = None
    if reduced:
        vocab = np.arange(reduced, dtype=np.int32)
        output = mat(reduced, d)
    return DraftHead(fc=mat(d, 2 * d), layer=layer, output=output, vocab=vocab)


def per_token_ms(ctx, n: int, specee: bool) -> float:
    ctx.truncate(0)
    ctx.prefill(PROMPT)
    tok = ctx.argmax()
    draft = specee and ctx.heads.has_draft
    cands = ctx.draft_sync(tok) if draft else [tok, 1, 2, 3]
    t = time.perf_counter()
    for _ in range(n):
        if specee:
            step = ctx.decode_with_candidates(tok, cands)
            tok, cands = step.token, (step.next if draft else [step.token, 1, 2, 3])
        else:
            tok = ctx.decode(tok)
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=8, help="checked layers per step (spread over the depth)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draft", action="store_true", help="also run a (random) draft head each step")
    ap.add_argument("--draft-ff", type=int, default=1536, help="the draft layer's FFN width")
    ap.add_argument("--draft-vocab", type=int, default=0, help="reduced draft vocabulary size (0: the full output)")
    ap.add_argument("--draft-dtype", default="q8_0", choices=DRAFT_DTYPES)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--heads", type=Path, help="a trained head file, run at threshold 1.0 (the other options unused)")
    args = ap.parse_args()

    with Model(fetch_model(args.model)) as m, tempfile.TemporaryDirectory() as tmp:
        if args.heads:
            heads = Heads(m, args.heads)
        else:
            layers = sorted({int(x) for x in np.linspace(m.n_layer // 3, m.n_layer - 2, args.checks)})
            draft = random_draft(m, args.draft_ff, args.draft_vocab) if args.draft else None
            write_heads(Path(tmp) / "h.gguf", m, {l: never_firing() for l in layers}, exit_layers=layers,
                        draft=draft, draft_dtype=args.draft_dtype)
            heads = Heads(m, Path(tmp) / "h.gguf")
        # one context (one thread pool) for both, order flipped every round
        ctx = m.context(n_ctx=512, n_threads=args.threads)
        ctx.set_heads(heads)
        if args.heads:
            ctx.set_exit_params(threshold=1.0)
            layers = ctx.checked_layers()
        v, s = [], []
        for r in range(args.rounds):
            for mode in ((False, True) if r % 2 == 0 else (True, False)):
                (s if mode else v).append(per_token_ms(ctx, args.tokens, mode))
        perf = ctx.perf()
        vm, sm = statistics.median(v), statistics.median(s)
        print(f"checked layers {layers}" + (f"; heads {args.heads}" if args.heads else "")
              + (f"; draft head ({args.draft_dtype}, n_ff {args.draft_ff}, "
                                              f"{'output rows ' + str(args.draft_vocab) if args.draft_vocab else 'target output matrix'})"
                                              if args.draft and not args.heads else ""))
        print(f"vanilla {vm:.3f} ms/token, early exit never firing {sm:.3f} ms/token: overhead {sm - vm:+.3f} ms "
              f"({(sm / vm - 1) * 100:+.1f}% of a full-depth step); graphs per step "
              f"{(perf['n_graph_runs'] - args.rounds * (args.tokens + 1)) / (args.rounds * args.tokens):.1f}, "
              f"graph builds {perf['n_graph_builds']}")
        ctx.close()
        heads.close()


if __name__ == "__main__":
    main()
