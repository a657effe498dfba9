"""`specee generate` against the same decode in one Python process.

The command line loads the model, runs the prompt and decodes; the figure it
prints (decode tok/s) should be what the engine does in-process. This runs
both on the same prompts, model, token count and threads, alternated prompt
by prompt (the order flipping every round), greedy, and reports the median
of the per-prompt ratios of decode tok/s (CLI over in-process). The
in-process side holds its model for the whole run, as a server would; each
CLI run loads it afresh, as a user's command does.

    python bench/generate_vs_in_process.py --model qwen2.5-coder-1.5b --rounds 2 -n 128 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from machine import cpu_model
from prompts import PROMPTS

from specee.decoding.decoders import decode
from specee.decoding.modes import open_decoder
from specee.decoding.sampling import Sampler
from specee.engine import Model
from specee.fetch import fetch_model
from specee.tokenizer import Tokenizer


def cli_tok_s(model: str, prompt: str, n: int, threads: int) -> tuple[float, list[int]]:
    out = subprocess.run([sys.executable, "-m", "specee", "-q", "generate", "--model", model, "--prompt", prompt,
                          "-n", str(n), "--temp", "0", "--threads", str(threads), "--json"],
                         check=True, capture_output=True, text=True).stdout
    record = json.loads(out)
    return record["decode_tok_s"], record["tokens"]


def in_process_tok_s(model: Model, tok: Tokenizer, prompt: str, n: int, threads: int) -> tuple[float, list[int]]:
    ids = tok.encode(prompt, parse_special=False)
    with model.context(n_ctx=2048, n_threads=threads) as ctx:
        result = decode(open_decoder(ctx, "vanilla", Sampler()), ctx, ids, n, stop_ids=tok.eot_ids)
    return result.decode_tok_s, result.tokens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    path = fetch_model(args.model)
    tok = Tokenizer.from_gguf(path)
    rows = []
    with Model(path) as model:
        in_process_tok_s(model, tok, PROMPTS[0][1], 8, args.threads)  # warm-up: caches, the layout choice
        for r in range(args.rounds):
            for i, (name, prompt, _) in enumerate(PROMPTS):
                cli_first = (r + i) % 2 == 0
                if cli_first:
                    cli, cli_tokens = cli_tok_s(args.model, prompt, args.n, args.threads)
                    inp, inp_tokens = in_process_tok_s(model, tok, prompt, args.n, args.threads)
                else:
                    inp, inp_tokens = in_process_tok_s(model, tok, prompt, args.n, args.threads)
                    cli, cli_tokens = cli_tok_s(args.model, prompt, args.n, args.threads)
                rows.append({"round": r, "prompt": name, "cli_tok_s": cli, "in_process_tok_s": round(inp, 2),
                             "ratio": round(cli / inp, 4), "same_tokens": cli_tokens == inp_tokens})
                print(f"{name:14s} cli {cli:7.1f} in-process {inp:7.1f} ratio {cli / inp:.3f}", file=sys.stderr)
    ratios = [row["ratio"] for row in rows]
    summary = {"cpu": cpu_model(), "model": args.model, "threads": args.threads, "n": args.n,
               "rounds": args.rounds, "median_ratio": round(statistics.median(ratios), 4),
               "min_ratio": min(ratios), "max_ratio": max(ratios),
               "same_tokens": sum(row["same_tokens"] for row in rows), "runs": len(rows)}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
