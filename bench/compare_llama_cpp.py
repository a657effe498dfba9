"""specee vs llama.cpp on the same prompts, threads and model file: greedy
agreement and decode speed, alternated in one run.

    python bench/compare_llama_cpp.py --threads 2 --rounds 3

Needs llama-cpp-python (pip install ".[bench]"). Each round runs every prompt
through both engines, one process each, in alternating order (A B, then B A);
decode speed is generated tokens over decode wall time (prompt excluded).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from prompts import PROMPTS

from specee.chat import read_chat_template, render_chat
from specee.fetch import fetch_model
from specee.tokenizer import Tokenizer

HERE = Path(__file__).parent


def tokenize_prompts(model_path: Path) -> list[tuple[str, list[int]]]:
    tok = Tokenizer.from_gguf(model_path)
    template = None
    out = []
    for name, text, chat in PROMPTS:
        if chat:
            template = template or read_chat_template(model_path)
            text = render_chat(template, [{"role": "user", "content": text}], add_generation_prompt=True)
            out.append((name, tok.encode(text, add_bos=False, parse_special=True)))
        else:
            out.append((name, tok.encode(text, parse_special=False)))
    return out


def run_engine(engine: str, job: dict) -> list[dict]:
    proc = subprocess.run([sys.executable, str(HERE / "decode_runner.py")], input=json.dumps({**job, "engine": engine}),
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{engine} runner failed:\n{proc.stderr}")
    return json.loads(proc.stdout)["results"]


def tok_s(results: list[dict]) -> float:
    return sum(r["n_decode"] for r in results) / sum(r["decode_s"] for r in results)


def first_divergence(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--check-tokens", type=int, default=64, help="greedy agreement over this many tokens")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    model_path = fetch_model(args.model)
    named = tokenize_prompts(model_path)
    job = {"model": str(model_path), "threads": args.threads, "n_ctx": 1024, "n_predict": args.n_predict,
           "prompts": [ids for _, ids in named]}

    speeds: dict[str, list[float]] = {"specee": [], "llama_cpp": []}
    tokens: dict[str, list[list[int]]] = {}
    for r in range(args.rounds):
        order = ["specee", "llama_cpp"] if r % 2 == 0 else ["llama_cpp", "specee"]
        for engine in order:
            results = run_engine(engine, job)
            speeds[engine].append(tok_s(results))
            tokens.setdefault(engine, [res["tokens"] for res in results])
        ratio = speeds["specee"][-1] / speeds["llama_cpp"][-1]
        print(f"round {r + 1}: specee {speeds['specee'][-1]:.1f} tok/s, llama.cpp {speeds['llama_cpp'][-1]:.1f} tok/s,"
              f" ratio {ratio:.3f}", flush=True)

    ratios = [a / b for a, b in zip(speeds["specee"], speeds["llama_cpp"])]
    n = args.check_tokens
    print(f"\ngreedy agreement with llama.cpp over the first {n} tokens:")
    agree = 0
    rows = []
    for (name, ids), ours, theirs in zip(named, tokens["specee"], tokens["llama_cpp"]):
        d = first_divergence(ours[:n], theirs[:n])
        agree += d >= n
        rows.append({"prompt": name, "n_prompt": len(ids), "first_divergence": d})
        print(f"  {name:14s} {'identical' if d >= n else f'diverges at token {d}'}")
    summary = {
        "model": str(model_path), "threads": args.threads, "n_predict": args.n_predict, "rounds": args.rounds,
        "specee_tok_s": speeds["specee"], "llama_cpp_tok_s": speeds["llama_cpp"], "ratios": ratios,
        "median_ratio": statistics.median(ratios), "identical_prompts": agree, "n_prompts": len(named),
        "check_tokens": n, "prompts": rows,
    }
    print(f"\n{agree}/{len(named)} prompts identical for {n} tokens; "
          f"decode speed ratio specee/llama.cpp: median {summary['median_ratio']:.3f} "
          f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)}) at {args.threads} threads")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
