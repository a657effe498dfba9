"""What the early-exit machinery costs per decode step when it never exits:
segment graphs, candidate logits, predictor, measured against plain full-depth
decoding in one run (alternated), on the default model.

    python bench/exit_overhead.py --checks 8 --tokens 128 --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from specee.engine import Heads, Model
from specee.fetch import fetch_model
from specee.heads_file import Predictor, write_heads

import numpy as np

PROMPT = [6403, 1980, 253, 655, 28, 281, 253, 6560]  # "Once upon a time, in a village"


def never_firing(hidden: int = 512) -> Predictor:
    """Full-size (12 -> 512 -> 1) random predictor biased to never fire, so the
    arithmetic is what a trained one costs."""
    rng = np.random.default_rng(0)
    return Predictor(rng.standard_normal((hidden, 12)).astype(np.float32) * 0.01, np.zeros(hidden, np.float32),
                     rng.standard_normal(hidden).astype(np.float32) * 0.01, -40.0)


def per_token_ms(ctx, n: int, specee: bool) -> float:
    ctx.truncate(0)
    ctx.prefill(PROMPT)
    tok = ctx.argmax()
    t = time.perf_counter()
    for _ in range(n):
        tok = ctx.decode_with_candidates(tok, [tok, 1, 2, 3]).token if specee else ctx.decode(tok)
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=8, help="checked layers per step (spread over the depth)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    with Model(fetch_model("smollm2-135m")) as m, tempfile.TemporaryDirectory() as tmp:
        layers = sorted({int(x) for x in np.linspace(m.n_layer // 3, m.n_layer - 2, args.checks)})
        write_heads(Path(tmp) / "h.gguf", m, {l: never_firing() for l in layers}, exit_layers=layers)
        heads = Heads(m, Path(tmp) / "h.gguf")
        # one context (one thread pool) for both, order flipped every round
        ctx = m.context(n_ctx=512, n_threads=args.threads)
        ctx.set_heads(heads)
        v, s = [], []
        for r in range(args.rounds):
            for mode in ((False, True) if r % 2 == 0 else (True, False)):
                (s if mode else v).append(per_token_ms(ctx, args.tokens, mode))
        perf = ctx.perf()
        vm, sm = statistics.median(v), statistics.median(s)
        print(f"checked layers {layers}")
        print(f"vanilla {vm:.3f} ms/token, early exit never firing {sm:.3f} ms/token: overhead {sm - vm:+.3f} ms "
              f"({(sm / vm - 1) * 100:+.1f}% of a full-depth step); graphs per step "
              f"{(perf['n_graph_runs'] - args.rounds * (args.tokens + 1)) / (args.rounds * args.tokens):.1f}, "
              f"graph builds {perf['n_graph_builds']}")
        ctx.close()
        heads.close()


if __name__ == "__main__":
    main()
