"""specee's speculative decoding against llama.cpp's own tools: prompt
lookup against `llama-lookup`, a draft model against
`llama-speculative-simple` with the same draft GGUF. Decode speed on the
same prompts, model, token count, draft length and threads, alternated
prompt by prompt (llama.cpp with weight repacking off: its AMX layout
crashes on prompts on AMX machines, see docs/results.md).

    python bench/speculative_vs_llama_cpp.py --llama-bin PATH/llama-lookup --draft lookup:3 --threads 2
    python bench/speculative_vs_llama_cpp.py --llama-bin PATH/llama-speculative-simple \
        --model qwen2.5-coder-1.5b --draft model:qwen2.5-coder-0.5b --draft-max 4

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

from copy_prompts import COPY_SETS, add_prompt_arguments, prompt_ids, prompt_text, token_budget
from speculative_vs_plain import OPEN_PROMPTS

from specee.tokenizer.chat_template import read_chat_template
from specee.engine import Model
from specee.fetch import fetch_model
from specee.decoding.speculative import generate_speculative, open_drafter
from specee.tokenizer import Tokenizer

DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s")


ACCEPT = re.compile(r"n_accept\s*=\s*(\d+)")
DRAFTED = re.compile(r"n_drafted\s*=\s*(\d+)")


def llama_tool(binary: str, model: Path, text: str, n: int, threads: int, draft_max: int,
               draft_model: Path | None) -> dict:
    """One run of llama-lookup or llama-speculative-simple (`draft_model`
    given): its decode speed and, where it prints them, drafted and accepted
    tokens."""
    cmd = [binary, "-m", str(model), "-p", text, "-n", str(n), "-t", str(threads), "--temp", "0",
           "-nr", "--spec-draft-n-max", str(draft_max), "-c", "1024"]
    if draft_model is not None:
        cmd += ["-md", str(draft_model), "-td", str(threads), "--spec-type", "draft-simple"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    log = out.stdout + out.stderr
    m = DECODED.search(log)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"{Path(binary).name} failed ({out.returncode}): {log[-400:]}")
    found = {"tok_s": float(m.group(3))}
    for key, pattern in (("accepted", ACCEPT), ("drafted", DRAFTED)):
        hit = pattern.search(log)
        if hit:
            found[key] = int(hit.group(1))
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-bin", required=True, help="llama-lookup (lookup drafts) or llama-speculative-simple "
                                                     "(model:NAME drafts)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--draft", default="lookup", help="specee's --draft spec (lookup, lookup:N, model:NAME_OR_PATH)")
    p.add_argument("--draft-max", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    add_prompt_arguments(p)
    p.add_argument("--out")
    args = p.parse_args()
    path = fetch_model(args.model, progress=False)
    draft_model = fetch_model(args.draft[len("model:"):], progress=False) if args.draft.startswith("model:") else None
    tok = Tokenizer.from_gguf(path)
    template = read_chat_template(path)
    report = {"model": args.model, "draft": args.draft, "llama_bin": Path(args.llama_bin).name,
              "draft_max": args.draft_max, "threads": args.threads, "n": args.n, "copy_set": args.copy_set,
              "edit_max": args.edit_max, "groups": {}}
    with Model(path) as m:
        for group, prompts in (("copy", COPY_SETS[args.copy_set]), ("open", OPEN_PROMPTS)):
            items = []
            for i, (name, text, chat) in enumerate(prompts):
                speeds, llama = {}, {}
                n, stop_ids = token_budget(args, tok, chat)
                for which in (("llama", "specee") if i % 2 else ("specee", "llama")):
                    if which == "llama":
                        llama = llama_tool(args.llama_bin, path, prompt_text(tok, template, text, chat), n,
                                           args.threads, args.draft_max, draft_model)
                        speeds[which] = llama["tok_s"]
                        continue
                    with m.context(n_ctx=1024, n_threads=args.threads) as ctx:
                        drafter = open_drafter(args.draft, m, 1024, args.threads, ctx=ctx)
                        try:
                            r = generate_speculative(ctx, prompt_ids(tok, template, text, chat), n, drafter,
                                                     draft_max=args.draft_max, stop_ids=stop_ids)
                        finally:
                            drafter.close()
                    speeds[which] = r.decode_tok_s
                    ours = r.extra
                items.append({"prompt": name, "specee_tok_s": round(speeds["specee"], 2),
                              "llama_tok_s": round(speeds["llama"], 2),
                              "ratio": round(speeds["specee"] / speeds["llama"], 4),
                              "specee_drafted": ours.get("drafted"), "specee_accepted": ours.get("accepted"),
                              "llama_drafted": llama.get("drafted"), "llama_accepted": llama.get("accepted")})
                print(group, items[-1], file=sys.stderr)
            report["groups"][group] = {"median_ratio": statistics.median(x["ratio"] for x in items), "items": items}
    print(json.dumps({g: r["median_ratio"] for g, r in report["groups"].items()}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
