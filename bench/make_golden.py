"""Records llama.cpp's greedy tokens on the default model as the golden
output for tests/test_real_model.py.

    python bench/make_golden.py   # needs pip install ".[bench]"
"""
from __future__ import annotations

import json
from pathlib import Path

from compare_llama_cpp import run_engine, tokenize_prompts

from specee.fetch import fetch_model

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden_smollm2_llama_cpp.json"
NAMES = ("story-dragon", "code-fib", "math-word", "chat-capital")
N_PREDICT = 64


def main() -> None:
    import llama_cpp

    model_path = fetch_model("smollm2-135m")
    named = [(n, ids) for n, ids in tokenize_prompts(model_path) if n in NAMES]
    job = {"model": str(model_path), "threads": 2, "n_ctx": 512, "n_predict": N_PREDICT,
           "prompts": [ids for _, ids in named]}
    results = run_engine("llama_cpp", job)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({
        "source": f"llama-cpp-python {llama_cpp.__version__}, greedy, bench/make_golden.py",
        "model": "smollm2-135m",
        "cases": [{"name": n, "prompt": ids, "tokens": r["tokens"]} for (n, ids), r in zip(named, results)],
    }, indent=1))
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
