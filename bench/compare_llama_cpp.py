"""specee vs llama.cpp on the same prompts, threads and model file: greedy
agreement and decode speed, alternated prompt by prompt in one run.

    python bench/compare_llama_cpp.py --threads 2 --rounds 3

Needs llama-cpp-python (pip install ".[bench]"). One worker process per
engine (bench/decode_runner.py); every prompt goes to each engine in turn,
the order flipping every request, so both see the same machine load.
Decode speed = generated tokens / decode wall time (prompt excluded); the
ratio reported is the median over the paired (prompt, round) ratios.

Every round starts its workers afresh, each round in an order rotated by
one. On the KVM machines this project is measured on, the first gigabyte
or so that a process allocates after others have freed memory decodes
up to 14% slower than later allocations (three copies of Qwen2.5-Coder-1.5B's
weights in one process: 14.4, 16.5, 16.5 tok/s; bench/memory_placement.py).
Workers created in a fixed order always gave that slow memory to the same
engine. Use as many rounds as there are engines to give each one the first
place once.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from prompts import PROMPTS

from specee.tokenizer.chat_template import chat_prompt_ids, read_chat_template
from specee.fetch import fetch_model
from specee.tokenizer import Tokenizer

HERE = Path(__file__).parent


def prompt_set(name: str, limit: int | None) -> list[tuple[str, str, bool]]:
    """(name, text, chat) triples: the ten varied bench prompts, or MT-Bench
    first turns as chat prompts."""
    if name == "bench":
        return PROMPTS[:limit]
    from specee.evaluation.datasets import load_mtbench

    return [(f"mtbench-{q.question_id}", q.turns[0], True) for q in load_mtbench(limit=limit)]


def tokenize_prompts(model_path: Path, prompts=PROMPTS) -> list[tuple[str, list[int]]]:
    tok = Tokenizer.from_gguf(model_path)
    template = None
    out = []
    for name, text, chat in prompts:
        if chat:
            template = template or read_chat_template(model_path)
            out.append((name, chat_prompt_ids(tok, template, [{"role": "user", "content": text}])))
        else:
            out.append((name, tok.encode(text, parse_special=False)))
    return out


class Worker:
    """A decode_runner.py process holding one loaded engine."""

    def __init__(self, engine: str, model: str, threads: int, n_ctx: int, library: str | None = None,
                 heads: str | None = None, exit_params: dict | None = None, no_repack: bool = False):
        self.engine = engine if heads is None else f"{engine} with heads {heads}"
        env = dict(os.environ)
        if library:
            env["SPECEE_LIBRARY"] = library  # another build of libspecee
        self.proc = subprocess.Popen([sys.executable, str(HERE / "decode_runner.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self._send({"engine": engine, "model": model, "threads": threads, "n_ctx": n_ctx, "heads": heads,
                    "exit_params": exit_params or {}, "no_repack": no_repack})

    def _send(self, obj: dict) -> dict:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker ({self.engine}) exited with {self.proc.wait()}")
        return json.loads(line)

    def decode(self, prompt: list[int], n_predict: int, teacher_forced: bool = False) -> dict:
        return self._send({"prompt": prompt, "n_predict": n_predict, "teacher_forced": teacher_forced})

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def close_workers(workers: dict[str, Worker]) -> None:
    for w in workers.values():
        w.close()


def run_engine(engine: str, job: dict, library: str | None = None) -> list[dict]:
    """All prompts through one engine (used by make_golden.py)."""
    w = Worker(engine, job["model"], job["threads"], job["n_ctx"], library)
    try:
        return [w.decode(p, job["n_predict"]) for p in job["prompts"]]
    finally:
        w.close()


def parse_exit_config(text: str) -> tuple[str, dict]:
    """"NAME:threshold=0.8,verify_full=0,fill_kv=1,heads=H.gguf" -> ("specee-NAME", params)."""
    name, _, rest = text.partition(":")
    params: dict = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key == "heads":
            params[key] = value
        elif key == "threshold":
            params[key] = float(value)
        elif key in ("verify_full", "fill_kv", "use_online", "use_offline"):
            params[key] = value.lower() in ("1", "true", "yes")
        else:
            raise SystemExit(f"--exit-config {text!r}: unknown setting {key!r}")
    if not name:
        raise SystemExit(f"--exit-config {text!r}: give a name before ':'")
    return f"specee-{name}", params


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
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=LIBSPECEE",
                    help="also run another libspecee build (e.g. source=build-src/libspecee.so)")
    ap.add_argument("--heads", help="also run specee with early exit using this head file (engine specee-exit)")
    ap.add_argument("--threshold", type=float, help="predictor threshold for specee-exit (default: the head file's)")
    ap.add_argument("--fill-kv", action="store_true",
                    help="specee-exit fills skipped layers' K/V from the exit hidden state (default: masks them)")
    ap.add_argument("--exit-config", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="instead of one specee-exit, an early-exit engine per config; keys: heads (default: --heads), "
                         "threshold, verify_full, fill_kv, use_online, use_offline. E.g. cand:verify_full=0")
    ap.add_argument("--prompt-set", choices=["bench", "mtbench"], default="bench",
                    help="bench/prompts.py (default) or MT-Bench first turns")
    ap.add_argument("--limit", type=int, help="use the first N prompts of the set")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--llama-no-repack", action="store_true",
                    help="llama.cpp without its repacked (AMX) weight layouts: on CPUs where ggml's AMX kernels "
                         "cannot run prompts, as llama-cli's --no-repack")
    args = ap.parse_args()

    model_path = str(fetch_model(args.model))
    named = tokenize_prompts(Path(model_path), prompt_set(args.prompt_set, args.limit))
    engines = {"specee": ("specee", None, None), "llama_cpp": ("llama_cpp", None, None)}
    for v in args.variant:
        name, _, lib = v.partition("=")
        engines[f"specee-{name}"] = ("specee", lib, None)
    exit_params: dict[str, dict] = {}
    configs = [parse_exit_config(c) for c in args.exit_config]
    if args.heads or configs:
        for name, params in configs or [("specee-exit", {"fill_kv": args.fill_kv})]:
            if args.threshold is not None:
                params.setdefault("threshold", args.threshold)
            heads = params.pop("heads", args.heads)
            if heads is None:
                raise SystemExit(f"{name}: give --heads or heads= in its --exit-config")
            engines[name] = ("specee", None, heads)
            exit_params[name] = params
    def start_workers(first: int) -> dict[str, Worker]:
        names = list(engines)
        names = names[first % len(names):] + names[:first % len(names)]
        print(f"workers started in the order {', '.join(names)}", flush=True)
        started = {}
        try:
            for name in names:
                eng, lib, heads = engines[name]
                started[name] = Worker(eng, model_path, args.threads, 1024, lib, heads, exit_params.get(name),
                                       no_repack=args.llama_no_repack and eng == "llama_cpp")
        except BaseException:
            close_workers(started)
            raise
        return started

    exit_totals: dict[str, dict[str, int]] = {name: {} for name in exit_params}

    decode_s = {name: 0.0 for name in engines}
    n_tokens = {name: 0 for name in engines}
    paired: dict[str, list[float]] = {name: [] for name in engines if name != "llama_cpp"}
    tokens: dict[str, list[list[int]]] = {name: [] for name in engines}
    k = 0
    workers: dict[str, Worker] = {}
    try:
        for r in range(args.rounds):
            close_workers(workers)
            workers = start_workers(r)
            for i, (_, ids) in enumerate(named):
                order = list(engines) if k % 2 == 0 else list(reversed(engines))
                k += 1
                speed = {}
                for name in order:
                    time.sleep(0.05)  # let the other engine's threads go idle
                    res = workers[name].decode(ids, args.n_predict)
                    decode_s[name] += res["decode_s"]
                    n_tokens[name] += res["n_decode"]
                    speed[name] = res["n_decode"] / res["decode_s"]
                    if r == 0:
                        tokens[name].append(res["tokens"])
                    for key, value in res.get("exit_stats", {}).items():
                        exit_totals[name][key] = exit_totals[name].get(key, 0) + value
                for name in paired:
                    paired[name].append(speed[name] / speed["llama_cpp"])
            line = ", ".join(f"{name} {n_tokens[name] / decode_s[name]:.1f} tok/s" for name in engines)
            print(f"after round {r + 1}: {line}", flush=True)
        for name in exit_params:
            # fidelity of early exit, teacher-forced (its own pass: it runs every layer)
            tf = [workers[name].decode(ids, args.n_predict, teacher_forced=True) for _, ids in named]
            exit_totals[name]["tf_agree"] = sum(t["agree"] for t in tf)
            exit_totals[name]["tf_steps"] = sum(t["steps"] for t in tf)
    finally:
        close_workers(workers)

    n = min(args.check_tokens, args.n_predict)
    summary = {"model": model_path, "threads": args.threads, "n_predict": args.n_predict, "rounds": args.rounds,
               "check_tokens": n, "engines": {}}
    print(f"\ngreedy agreement with llama.cpp over the first {n} tokens (first divergence):")
    for name in engines:
        if name == "llama_cpp":
            continue
        div = [first_divergence(a[:n], b[:n]) for a, b in zip(tokens[name], tokens["llama_cpp"])]
        same = sum(d >= n for d in div)
        ratios = paired[name]
        summary["engines"][name] = {
            "tok_s": n_tokens[name] / decode_s[name], "identical_prompts": same,
            "first_divergence": dict(zip([p for p, _ in named], div)),
            "median_ratio": statistics.median(ratios), "aggregate_ratio": (n_tokens[name] / decode_s[name]) /
            (n_tokens["llama_cpp"] / decode_s["llama_cpp"]), "paired_ratios": ratios}
        print(f"  {name:14s} " + " ".join(str(d) if d < n else "=" for d in div) + f"  -> {same}/{len(named)} identical")
    summary["llama_cpp_tok_s"] = n_tokens["llama_cpp"] / decode_s["llama_cpp"]
    print(f"\ndecode speed at {args.threads} threads, {args.rounds} rounds x {len(named)} prompts x "
          f"{args.n_predict} tokens; llama.cpp {summary['llama_cpp_tok_s']:.1f} tok/s")
    for name, s in summary["engines"].items():
        q = statistics.quantiles(s["paired_ratios"], n=4) if len(s["paired_ratios"]) >= 2 else [0, 0, 0]
        print(f"  {name:14s} {s['tok_s']:.1f} tok/s; ratio to llama.cpp: median {s['median_ratio']:.3f} "
              f"(IQR {q[0]:.3f}-{q[2]:.3f}), aggregate {s['aggregate_ratio']:.3f}")
    summary["early_exit"] = {}
    for name, totals in exit_totals.items():
        steps = max(totals["n_steps"], 1)
        x = summary["early_exit"][name] = {
            "exit_params": exit_params[name], "heads": engines[name][2],
            "mean_exit_layer": totals["sum_exit_layers"] / steps, "exit_ratio": totals["n_exits"] / steps,
            "false_exit_checks": totals["n_false_fires"], "draft_top1": totals["n_draft_top1"] / steps,
            "draft_topk": totals["n_draft_topk"] / steps,
            "teacher_forced_agreement": totals["tf_agree"] / max(totals["tf_steps"], 1)}
        vanilla = [first_divergence(a[:n], b[:n]) for a, b in zip(tokens[name], tokens["specee"])]
        x["identical_to_vanilla"] = sum(d >= n for d in vanilla)
        x["vs_vanilla_median_ratio"] = statistics.median([a / b for a, b in zip(paired[name], paired["specee"])])
        print(f"  {name} {exit_params[name]}: mean exit layer {x['mean_exit_layer']:.2f}, exit ratio "
              f"{x['exit_ratio']:.3f}, false exit checks {x['false_exit_checks']}, draft top-1 "
              f"{x['draft_top1']:.3f} / top-k {x['draft_topk']:.3f}; teacher-forced agreement with full depth "
              f"{x['teacher_forced_agreement']:.4f}; {x['identical_to_vanilla']}/{len(named)} outputs identical "
              f"to specee vanilla for {n} tokens (first divergence: "
              f"{' '.join(str(d) if d < n else '=' for d in vanilla)}); median ratio to specee vanilla "
              f"{x['vs_vanilla_median_ratio']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
