"""A worker process that greedy-decodes prompts with ONE engine, on request.

compare_llama_cpp.py starts one worker per engine (two copies of ggml in one
process would bind to each other's symbols) and alternates requests between
them prompt by prompt, so that both see the same machine load.

Start: {"engine": "specee"|"llama_cpp", "model": PATH, "threads": T, "n_ctx": N,
"heads": PATH (optional: specee with early exit)} as the first stdin line; then one request per line, {"prompt": [ids],
"n_predict": N}, answered by one line {"tokens": [...], "prefill_s": S,
"decode_s": S, "n_decode": N}. Decoding never stops at an end token: every
prompt produces exactly n_predict tokens, so both engines do the same work.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable

Decoder = Callable[[list, int], dict]


def timed_greedy(prefill: Callable[[list], int], step: Callable[[int], int], prompt: list, n_predict: int) -> dict:
    t0 = time.perf_counter()
    token = prefill(prompt)
    t1 = time.perf_counter()
    tokens = [token]
    for _ in range(n_predict - 1):
        token = step(token)
        tokens.append(token)
    t2 = time.perf_counter()
    return {"tokens": tokens, "prefill_s": t1 - t0, "decode_s": t2 - t1, "n_decode": len(tokens) - 1}


def specee_decoder(job: dict) -> Decoder:
    from specee.engine import Heads, Model

    model = Model(job["model"])
    ctx = model.context(n_ctx=job["n_ctx"], n_threads=job["threads"])
    if job.get("heads"):
        decode = specee_exit_decoder(model, ctx, Heads(model, job["heads"]))
        ctx.set_exit_params(**job.get("exit_params", {}))
        return decode

    def prefill(prompt: list) -> int:
        ctx.truncate(0)
        ctx.prefill(prompt)
        return ctx.argmax()

    def decode(prompt: list, n: int) -> dict:
        assert model is not None  # keep the model alive with its context
        return timed_greedy(prefill, ctx.decode, prompt, n)

    return decode


def specee_exit_decoder(model, ctx, heads) -> Decoder:
    """Greedy early exit; candidates from the heads' draft head, or prompt lookup."""
    from specee.evaluation import run as evaluate
    from specee.decoding.early_exit import PromptLookup

    ctx.set_heads(heads)
    lookup = PromptLookup()

    def decode(prompt: list, n: int) -> dict:
        assert model is not None
        ctx.truncate(0)
        ctx.reset_exit_stats()
        history = list(prompt)
        state = {}

        def prefill(p: list) -> int:
            ctx.prefill(p)
            tok = ctx.argmax()
            history.append(tok)
            state["cands"] = ctx.draft_sync(tok) if heads.has_draft else lookup.candidates(history, heads.n_candidates)
            return tok

        def step(tok: int) -> int:
            s = ctx.decode_with_candidates(tok, state["cands"])
            history.append(s.token)
            state["cands"] = s.next if heads.has_draft else lookup.candidates(history, heads.n_candidates)
            return s.token

        out = timed_greedy(prefill, step, prompt, n)
        out["exit_stats"] = ctx.exit_stats()
        return out

    def teacher_forced(prompt: list, n: int) -> dict:
        """Fidelity (docs/design.md#fidelity): at every step of full-depth greedy
        decoding, does early exit pick the same token for the same prefix?"""
        agree, steps = evaluate.teacher_forced(ctx, prompt, n, heads.n_candidates)
        return {"agree": agree, "steps": steps}

    decode.teacher_forced = teacher_forced
    return decode


def llama_cpp_decoder(job: dict) -> Decoder:
    import llama_cpp
    import numpy as np

    if job.get("no_repack"):  # Llama() has no switch for it: its default model params get one
        defaults = llama_cpp.llama_cpp.llama_model_default_params

        def without_repack():
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = without_repack
    llm = llama_cpp.Llama(job["model"], n_ctx=job["n_ctx"], n_batch=512, n_threads=job["threads"],
                          n_threads_batch=job["threads"], verbose=False)
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()
    memory = llama_cpp.llama_get_memory(ctx)

    def eval_tokens(ids: list) -> int:
        arr = (llama_cpp.llama_token * len(ids))(*ids)
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(ids))) != 0:
            raise RuntimeError("llama_decode failed")
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        return int(np.argmax(logits))

    def prefill(prompt: list) -> int:
        llama_cpp.llama_memory_clear(memory, True)
        return eval_tokens(prompt)

    def decode(prompt: list, n: int) -> dict:
        assert llm is not None  # the closure keeps the Llama (and its context) alive
        return timed_greedy(prefill, lambda t: eval_tokens([t]), prompt, n)

    return decode


def main() -> None:
    job = json.loads(sys.stdin.readline())
    decode = {"specee": specee_decoder, "llama_cpp": llama_cpp_decoder}[job["engine"]](job)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        run = decode.teacher_forced if request.get("teacher_forced") else decode
        print(json.dumps(run(request["prompt"], request["n_predict"])), flush=True)


if __name__ == "__main__":
    main()
