"""Scores the outputs an earlier `specee eval --out OUT` logged
(OUT.items.jsonl) again with today's scorers, without decoding again, and
compares every mode with the first one item by item.

    python bench/rescore_eval.py bench/results/eval/RUN.items.jsonl [--json OUT.json]

Use it when a scorer changes (HumanEval's completions are cut where the
function body ends since 2026-12-06; before, extra code after the body ran
too and a continuation broken off by the token limit failed).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from specee.evaluation.datasets import load_dataset
from specee.evaluation.run import make_tasks


def read_items(path: Path) -> tuple[dict, dict[str, list[dict]]]:
    """The run's settings and its item records by data set, in item order."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or "settings" not in lines[0]:
        raise SystemExit(f"{path}: not a `specee eval` item log (no settings line)")
    by_set = defaultdict(list)
    for rec in lines[1:]:
        by_set[rec["dataset"]].append(rec)
    return lines[0]["settings"], {k: sorted(v, key=lambda r: r["item"]) for k, v in by_set.items()}


def rescore(name: str, items: list[dict]) -> dict | None:
    """Per mode: score sum, items; against the first mode: items whose output
    differs, scored lower (lost) and higher (gained). None for a data set
    without a task score (MT-Bench, ShareGPT)."""
    tasks = make_tasks(name, load_dataset(name, limit=max(r["item"] for r in items) + 1, progress=False))
    if tasks[0].score is None:
        return None
    modes = list(items[0]["modes"])
    scores = {m: [tasks[r["item"]].score(r["modes"][m]["text"]) for r in items] for m in modes}
    base = modes[0]
    out = {"n_items": len(items), "modes": {}}
    for m in modes:
        entry = {"score": round(sum(scores[m]) / len(items), 4), "score_sum": sum(scores[m]),
                 "logged_score_sum": sum(r["modes"][m]["score"] for r in items)}
        if m != base:
            entry["changed_outputs"] = sum(r["modes"][m]["tokens"] != r["modes"][base]["tokens"] for r in items)
            entry["lost"] = [r["item"] for r, a, b in zip(items, scores[base], scores[m]) if b < a]
            entry["gained"] = [r["item"] for r, a, b in zip(items, scores[base], scores[m]) if b > a]
        out["modes"][m] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("items", type=Path, help="OUT.items.jsonl of a `specee eval --out OUT` run")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    settings, by_set = read_items(args.items)
    results = {name: r for name, items in by_set.items() if (r := rescore(name, items)) is not None}
    for name, r in results.items():
        print(f"{name}: {r['n_items']} items")
        for m, e in r["modes"].items():
            extra = (f"; {e['changed_outputs']} outputs differ, lost {len(e['lost'])} {e['lost']}, "
                     f"gained {len(e['gained'])} {e['gained']}") if "lost" in e else ""
            print(f"  {m:14s} score {e['score']:.4f} ({e['score_sum']:g}; logged {e['logged_score_sum']:g}){extra}")
    if args.json:
        args.json.write_text(json.dumps({"items": str(args.items), "settings": settings, "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()
