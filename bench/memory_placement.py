"""Does where a process's weights land in memory change decode speed?

    python bench/memory_placement.py --model qwen2.5-coder-1.5b --copies 3

Loads the same model several times in ONE process and times greedy plain
decoding on each copy in turn, so that everything but the memory the copy
was given is the same. On the KVM machines this project is measured on,
the first copy of Qwen2.5-Coder-1.5B (the first gigabyte or so a process
allocates after other processes freed memory) was 14% slower than the
later ones (14.4 against 16.5 tok/s); a benchmark
that gives one engine that memory every time is biased
(bench/compare_llama_cpp.py starts its workers in a rotated order).
"""
from __future__ import annotations

import argparse
import statistics

from exit_overhead import per_token_ms
from specee.engine import Model
from specee.fetch import fetch_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n-predict", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    path = fetch_model(args.model)
    models = [Model(path) for _ in range(args.copies)]
    contexts = [m.context(n_ctx=1024, n_threads=args.threads) for m in models]
    speeds: list[list[float]] = [[] for _ in contexts]
    for r in range(args.rounds):
        for i, ctx in enumerate(contexts):
            speeds[i].append(1e3 / per_token_ms(ctx, args.n_predict, specee=False))  # tok/s, plain decoding
        print(f"round {r + 1}: " + "  ".join(f"copy {i}: {s[-1]:.2f} tok/s" for i, s in enumerate(speeds)), flush=True)
    first = statistics.median(speeds[0])
    for i, s in enumerate(speeds[1:], start=1):
        print(f"copy {i} / copy 0 (loaded first): {statistics.median(s) / first:.3f}")


if __name__ == "__main__":
    main()
