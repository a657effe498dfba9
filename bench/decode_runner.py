"""Runs greedy decoding for a list of prompts in ONE engine and prints JSON.

Used by compare_llama_cpp.py, which starts one process per engine and round
(two copies of ggml in one process would share symbols, and ggml threads of
two engines would fight over the cores).

Input (stdin, JSON): {"engine": "specee"|"llama_cpp", "model": PATH,
"threads": T, "n_ctx": N, "n_predict": N, "prompts": [[ids...], ...]}
Output (stdout, JSON): {"results": [{"tokens": [...], "decode_s": S,
"n_decode": N, "prefill_s": S}, ...]}

Decoding never stops at an end token: every prompt produces exactly
n_predict tokens, so both engines do the same work.
"""
from __future__ import annotations

import json
import sys
import time


def run_specee(job: dict) -> list[dict]:
    from specee.engine import Model

    out = []
    with Model(job["model"]) as model, model.context(n_ctx=job["n_ctx"], n_threads=job["threads"]) as ctx:
        for prompt in job["prompts"]:
            ctx.truncate(0)
            t0 = time.perf_counter()
            ctx.prefill(prompt)
            token = ctx.argmax()
            t1 = time.perf_counter()
            tokens = [token]
            for _ in range(job["n_predict"] - 1):
                token = ctx.decode(token)
                tokens.append(token)
            t2 = time.perf_counter()
            out.append({"tokens": tokens, "prefill_s": t1 - t0, "decode_s": t2 - t1, "n_decode": len(tokens) - 1})
    return out


def run_llama_cpp(job: dict) -> list[dict]:

    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(job["model"], n_ctx=job["n_ctx"], n_batch=512, n_threads=job["threads"],
                          n_threads_batch=job["threads"], verbose=False)
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()
    mem = llama_cpp.llama_get_memory(ctx)

    def eval_tokens(ids: list[int]) -> int:
        arr = (llama_cpp.llama_token * len(ids))(*ids)
        batch = llama_cpp.llama_batch_get_one(arr, len(ids))
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        return int(np.argmax(logits))

    out = []
    for prompt in job["prompts"]:
        llama_cpp.llama_memory_clear(mem, True)
        t0 = time.perf_counter()
        token = eval_tokens(prompt)
        t1 = time.perf_counter()
        tokens = [token]
        for _ in range(job["n_predict"] - 1):
            token = eval_tokens([token])
            tokens.append(token)
        t2 = time.perf_counter()
        out.append({"tokens": tokens, "prefill_s": t1 - t0, "decode_s": t2 - t1, "n_decode": len(tokens) - 1})
    return out


def main() -> None:
    job = json.load(sys.stdin)
    runner = {"specee": run_specee, "llama_cpp": run_llama_cpp}[job["engine"]]
    json.dump({"results": runner(job)}, sys.stdout)


if __name__ == "__main__":
    main()
