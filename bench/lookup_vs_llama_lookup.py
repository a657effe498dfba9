"""specee's prompt-lookup speculation against llama.cpp's `llama-lookup`:
decode speed on the same prompts, model, token count and threads,
alternated prompt by prompt (llama.cpp with weight repacking off: its AMX
layout crashes on prompts on AMX machines, see the README).

    python bench/lookup_vs_llama_lookup.py --llama-lookup PATH/llama-lookup --draft lookup:3 --threads 2

Reports per prompt both decode speeds, specee's over llama.cpp's, and the
median per group (copy-heavy prompts, open prompts).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from speculative_vs_plain import COPY_PROMPTS, OPEN_PROMPTS

from specee.engine import Model
from specee.fetch import fetch_model
from specee.speculative import generate_speculative, open_drafter
from specee.tokenizer import Tokenizer

DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s")


def llama_lookup(binary: str, model: Path, text: str, n: int, threads: int, draft_max: int) -> float:
    out = subprocess.run([binary, "-m", str(model), "-p", text, "-n", str(n), "-t", str(threads), "--temp", "0",
                          "-nr", "--spec-draft-n-max", str(draft_max), "-c", "1024"],
                         capture_output=True, text=True, timeout=600)
    m = DECODED.search(out.stdout + out.stderr)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"llama-lookup failed ({out.returncode}): {(out.stdout + out.stderr)[-400:]}")
    return float(m.group(3))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-lookup", required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--draft", default="lookup", help="specee's --draft spec (lookup, lookup:N)")
    p.add_argument("--draft-max", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-n", type=int, default=96)
    p.add_argument("--out")
    args = p.parse_args()
    path = fetch_model(args.model, progress=False)
    tok = Tokenizer.from_gguf(path)
    report = {"model": args.model, "draft": args.draft, "threads": args.threads, "n": args.n, "groups": {}}
    with Model(path) as m:
        for group, prompts in (("copy", COPY_PROMPTS), ("open", OPEN_PROMPTS)):
            items = []
            for i, (name, text, _) in enumerate(prompts):
                speeds = {}
                for which in (("llama", "specee") if i % 2 else ("specee", "llama")):
                    if which == "llama":
                        speeds[which] = llama_lookup(args.llama_lookup, path, text, args.n, args.threads,
                                                     args.draft_max)
                        continue
                    with m.context(n_ctx=1024, n_threads=args.threads) as ctx:
                        drafter = open_drafter(args.draft, m, 1024, args.threads, ctx=ctx)
                        try:
                            r = generate_speculative(ctx, tok.encode(text, parse_special=False), args.n, drafter,
                                                     draft_max=args.draft_max)
                        finally:
                            drafter.close()
                    speeds[which] = r.decode_tok_s
                items.append({"prompt": name, "specee_tok_s": round(speeds["specee"], 2),
                              "llama_lookup_tok_s": round(speeds["llama"], 2),
                              "ratio": round(speeds["specee"] / speeds["llama"], 4)})
                print(group, items[-1], file=sys.stderr)
            report["groups"][group] = {"median_ratio": statistics.median(x["ratio"] for x in items), "items": items}
    print(json.dumps({g: r["median_ratio"] for g, r in report["groups"].items()}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
