"""Two builds of libspecee side by side: the same model, modes, prompts and
threads, alternated prompt by prompt, for a change to the engine that should
keep its output and speed (a refactor) or improve its speed.

    python bench/ab_libraries.py --a /tmp/before/libspecee.so --b build/cp311-cp311-linux_x86_64/libspecee.so \
        --model smollm2-135m --modes vanilla,specee,speculative:eagle --limit 6 --out results.json

Each build runs in its own worker process (two copies of ggml in one process
would bind to each other's symbols; SPECEE_LIBRARY picks the build), which
loads the model once. Every prompt is a MT-Bench first turn with the chat
template, decoded greedily for exactly -n tokens (end tokens do not stop
it), in a fresh context.

The worker started second decodes faster here: the same build against
itself measured 1.054x (Qwen2.5-Coder-0.5B, 8 prompts, all above 1), and
0.953x with the start order swapped. So the comparison runs twice, the
workers started a-then-b and then b-then-a, and each prompt's ratio is the
geometric mean of its two ratios, which cancels that bias. Reported per
mode: decode tokens/s of each build (median over prompts and both runs),
the median of the prompts' ratios b/a, each run's median ratio, and
whether both builds wrote the same tokens for every prompt.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

from machine import cpu_model


def worker() -> None:
    """Answers {"prompt": [ids], "mode": M, "n": N} lines with {"tokens", "decode_tok_s"}."""
    from specee.decoding.decoders import decode
    from specee.decoding.modes import open_decoder
    from specee.decoding.sampling import Sampler
    from specee.decoding.speculative.choice import open_drafter
    from specee.engine import Heads, Model
    from specee.heads.shipped import default_heads

    job = json.loads(sys.stdin.readline())
    model = Model(job["model"])
    heads_path = default_heads(model.fingerprint)
    heads = Heads(model, heads_path) if heads_path else None
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        ctx = model.context(n_ctx=job["n_ctx"], n_threads=job["threads"])
        try:
            mode, _, draft = req["mode"].partition(":")
            kwargs = {}
            if mode == "specee":
                kwargs["heads"] = heads
            elif mode == "speculative":
                kwargs["drafter"] = open_drafter(draft or "eagle", model, job["n_ctx"], job["threads"], ctx=ctx,
                                                 heads=heads)
            decoder = open_decoder(ctx, mode, Sampler(temperature=0.0), **kwargs)
            result = decode(decoder, ctx, req["prompt"], req["n"])
        finally:
            ctx.close()
        print(json.dumps({"tokens": result.tokens, "decode_tok_s": result.n_decode_steps / result.decode_s}),
              flush=True)


def start(library: str, job: dict) -> subprocess.Popen:
    env = dict(os.environ, SPECEE_LIBRARY=str(Path(library).resolve()))
    proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    proc.stdin.write(json.dumps(job) + "\n")
    proc.stdin.flush()
    json.loads(proc.stdout.readline())
    return proc


def ask(proc: subprocess.Popen, req: dict) -> dict:
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("a worker stopped (see its error above)")
    return json.loads(line)


def compare(prompts: list, modes: list[str], job: dict, libraries: dict, first: str) -> dict:
    """Every prompt in every mode through both builds, alternating which
    goes first prompt by prompt; the workers started `first`'s first."""
    names = (first, "b" if first == "a" else "a")
    workers = {}
    try:
        for k in names:
            workers[k] = start(libraries[k], job)
        runs: dict = {m: {"a": [], "b": [], "same": []} for m in modes}
        for i, prompt in enumerate(prompts):
            for mode in modes:
                order = ("a", "b") if i % 2 == 0 else ("b", "a")
                out = {k: ask(workers[k], {"prompt": prompt, "mode": mode, "n": job["n"]}) for k in order}
                runs[mode]["a"].append(out["a"]["decode_tok_s"])
                runs[mode]["b"].append(out["b"]["decode_tok_s"])
                runs[mode]["same"].append(out["a"]["tokens"] == out["b"]["tokens"])
                print(f"({first} started first) prompt {i} {mode}: a {out['a']['decode_tok_s']:.1f} "
                      f"b {out['b']['decode_tok_s']:.1f} tok/s", file=sys.stderr)
        return runs
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--a", help="the baseline libspecee.so")
    p.add_argument("--b", help="the changed libspecee.so")
    p.add_argument("--model", default="smollm2-135m", help="model name or GGUF path")
    p.add_argument("--modes", default="vanilla,specee,speculative:eagle",
                   help="comma-separated: vanilla, specee, speculative:DRAFT")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=6, help="MT-Bench questions (first turns)")
    p.add_argument("-n", type=int, default=128, help="tokens per answer")
    p.add_argument("--ctx-size", type=int, default=1024)
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args()
    if args.worker:
        worker()
        return
    if not (args.a and args.b):
        p.error("--a and --b name the two builds")

    from specee.evaluation.datasets import load_mtbench
    from specee.fetch import fetch_model
    from specee.tokenizer import Tokenizer
    from specee.tokenizer.chat_template import chat_prompt_ids, read_chat_template

    path = str(fetch_model(args.model, progress=False))
    tok = Tokenizer.from_gguf(path)
    template = read_chat_template(path)
    prompts = [chat_prompt_ids(tok, template, [{"role": "user", "content": q.turns[0]}])
               for q in load_mtbench(limit=args.limit, progress=False)]
    job = {"model": path, "threads": args.threads, "n_ctx": args.ctx_size, "n": args.n}
    modes = args.modes.split(",")
    runs = [compare(prompts, modes, job, {"a": args.a, "b": args.b}, first) for first in ("a", "b")]
    summary = {"cpu": cpu_model(), "model": args.model, "threads": args.threads, "n": args.n, "a": args.a,
               "b": args.b, "modes": {}}
    for mode in modes:
        a = [x for r in runs for x in r[mode]["a"]]
        b = [x for r in runs for x in r[mode]["b"]]
        per_run = [[y / x for x, y in zip(r[mode]["a"], r[mode]["b"])] for r in runs]
        ratios = [math.sqrt(x * y) for x, y in zip(*per_run)]
        summary["modes"][mode] = {"a_tok_s": round(statistics.median(a), 2),
                                  "b_tok_s": round(statistics.median(b), 2),
                                  "b_over_a": round(statistics.median(ratios), 3),
                                  "ratios": [round(x, 3) for x in ratios],
                                  "b_over_a_a_started_first": round(statistics.median(per_run[0]), 3),
                                  "b_over_a_b_started_first": round(statistics.median(per_run[1]), 3),
                                  "same_tokens": all(same for r in runs for same in r[mode]["same"])}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
